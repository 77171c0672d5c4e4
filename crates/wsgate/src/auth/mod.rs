//! Authentication and authorization: verified identity (JWT), topic
//! permissions, HTTP API keys and the `Origin` allowlist. The model is
//! described in `docs/security.md`.
//!
//! * [`config`] — the `[auth]` section and its validation (pure).
//! * [`permissions`] — pattern coverage, namespace rules, per-connection
//!   permissions (pure).
//! * [`origin`] — the `Origin` allowlist (pure).
//! * [`jwt`] — token verification with the configured keys and JWKS file.
//!
//! [`Auth`] ties them together for the server: it checks an upgrade's
//! origin and credentials, builds a connection's [`ConnAuth`], and checks
//! HTTP API keys in constant time.

pub mod config;
pub mod jwt;
pub mod origin;
pub mod permissions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Uri, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use config::{AuthConfig, KeyConfig};
pub use jwt::{TokenError, VerifiedToken, Verifier};
pub use permissions::{Grant, Permissions, Rule, Who, covers};

use crate::config::Config;
use crate::error::Error;
use origin::OriginPattern;

/// The verified identity of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The token's `sub`.
    pub sub: String,
    /// The token's `exp` (seconds since the Unix epoch).
    pub exp: u64,
}

/// What the server knows about one connection's caller.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnAuth {
    /// `None` for an anonymous connection.
    pub identity: Option<Identity>,
    /// Shared: every anonymous connection holds the same permissions.
    pub permissions: Arc<Permissions>,
    /// When the connection must be closed (4003) unless it refreshes its
    /// token: `exp + leeway + expiry_grace`.
    pub deadline: Option<tokio::time::Instant>,
}

impl Default for ConnAuth {
    /// Anonymous with no permissions (fails closed).
    fn default() -> Self {
        ConnAuth {
            identity: None,
            permissions: Arc::new(Permissions::none()),
            deadline: None,
        }
    }
}

/// The node's authentication state, built once from the configuration.
pub struct Auth {
    enforced: bool,
    anonymous: bool,
    api_open: bool,
    verifier: Option<Verifier>,
    /// SHA-256 digests of the API keys.
    api_keys: Vec<[u8; 32]>,
    origins: Vec<OriginPattern>,
    rules: Vec<Rule>,
    broadcast: Who,
    /// What anonymous connections may do (shared by all of them).
    anonymous_permissions: Arc<Permissions>,
    query_param: Option<String>,
    cookie: Option<String>,
    leeway: Duration,
    grace: Duration,
    max_topic_length: usize,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Auth {
    /// Loads keys (PEM files, the JWKS file) and logs loudly what is open.
    pub fn new(config: &Config) -> Result<Auth, String> {
        let a = &config.auth;
        a.validate(config.listen, config.limits.max_topic_length)?;
        let verifier = Verifier::new(a, config.limits.max_topic_length)?;
        let origins = a
            .allowed_origins
            .iter()
            .map(|o| OriginPattern::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = Auth {
            enforced: a.enforced(),
            anonymous: a.anonymous_allowed(config.listen),
            api_open: a.api_open(config.listen),
            verifier,
            api_keys: a.api_keys.iter().map(|k| sha256(k.as_bytes())).collect(),
            origins,
            rules: a.rules.clone(),
            broadcast: a.broadcast,
            anonymous_permissions: Arc::new(if a.enforced() {
                Permissions::build(
                    &a.rules,
                    a.broadcast,
                    None,
                    None,
                    config.limits.max_topic_length,
                )
            } else {
                Permissions::unrestricted()
            }),
            query_param: Some(a.query_param.clone()).filter(|q| !q.is_empty()),
            cookie: a.cookie.clone(),
            leeway: a.leeway,
            grace: a.expiry_grace,
            max_topic_length: config.limits.max_topic_length,
        };
        auth.log_exposure(config.listen);
        Ok(auth)
    }

    /// Refuses every connection and API call: used when an embedding
    /// application builds a gateway with a configuration whose keys cannot
    /// be loaded.
    pub fn deny_all() -> Auth {
        Auth {
            enforced: true,
            anonymous: false,
            api_open: false,
            verifier: None,
            api_keys: Vec::new(),
            origins: Vec::new(),
            rules: Vec::new(),
            broadcast: Who::Nobody,
            anonymous_permissions: Arc::new(Permissions::none()),
            query_param: None,
            cookie: None,
            leeway: Duration::ZERO,
            grace: Duration::ZERO,
            max_topic_length: 0,
        }
    }

    fn log_exposure(&self, listen: SocketAddr) {
        if self.anonymous {
            if self.enforced {
                tracing::warn!(
                    %listen,
                    "ANONYMOUS ACCESS IS ON: connections without a token are accepted, with what auth.rules grant to \"anyone\""
                );
            } else {
                tracing::warn!(
                    %listen,
                    "ANONYMOUS ACCESS IS ON and no [auth] is configured: anyone who can connect may subscribe and publish to every topic (see docs/security.md)"
                );
            }
        }
        if self.api_open {
            tracing::warn!(%listen, "the HTTP API (/api/*) is open without a key: set auth.api_keys");
        } else if self.api_keys.is_empty() {
            tracing::info!("the HTTP API (/api/*) is disabled: no auth.api_keys are configured");
        }
        if self.origins.is_empty() && self.cookie.is_some() {
            tracing::warn!(
                "tokens are accepted from a cookie but auth.allowed_origins is empty: any web page can open connections with your users' cookies (cross-site WebSocket hijacking)"
            );
        }
    }

    /// True if permissions are enforced (tokens or rules configured).
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// Checks the upgrade's `Origin` against `auth.allowed_origins`.
    /// Requests without `Origin` (non-browser clients) pass.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Error> {
        if self.origins.is_empty() {
            return Ok(());
        }
        let mut values = headers.get_all(header::ORIGIN).iter();
        let Some(first) = values.next() else {
            return Ok(());
        };
        let ok = values.next().is_none()
            && first
                .to_str()
                .is_ok_and(|o| origin::allowed(&self.origins, o));
        if ok {
            Ok(())
        } else {
            tracing::debug!(origin = ?first, "upgrade refused: origin not allowed");
            Err(Error::Forbidden("origin not allowed".into()))
        }
    }

    /// The token of an upgrade request: `Authorization: Bearer`, else the
    /// query parameter, else the cookie.
    pub fn token_from_request<'a>(&self, headers: &'a HeaderMap, uri: &'a Uri) -> Option<String> {
        if let Some(t) = bearer(headers) {
            return Some(t.to_string());
        }
        if let (Some(name), Some(query)) = (&self.query_param, uri.query()) {
            if let Some((_, v)) =
                form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name.as_str())
            {
                return Some(v.into_owned());
            }
        }
        if let Some(name) = &self.cookie {
            return cookie(headers, name).map(str::to_string);
        }
        None
    }

    /// Authenticates a WebSocket upgrade. `Err` is an `Unauthorized` error
    /// to answer with 401; the detailed reason is logged at debug.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        peer: Option<SocketAddr>,
    ) -> Result<ConnAuth, Error> {
        let Some(verifier) = &self.verifier else {
            // No keys: tokens cannot be checked, so they are ignored.
            return self.anonymous_conn(peer);
        };
        match self.token_from_request(headers, uri) {
            None => self.anonymous_conn(peer),
            Some(token) => match verifier.verify(&token) {
                Ok(v) => Ok(self.conn_auth(&v)),
                Err(e) => {
                    tracing::debug!(?peer, reason = %e, "upgrade refused: invalid token");
                    Err(Error::Unauthorized(e.public().into()))
                }
            },
        }
    }

    fn anonymous_conn(&self, peer: Option<SocketAddr>) -> Result<ConnAuth, Error> {
        if !self.anonymous {
            tracing::debug!(?peer, "upgrade refused: no token");
            return Err(Error::Unauthorized("missing token".into()));
        }
        Ok(ConnAuth {
            identity: None,
            permissions: self.anonymous_permissions.clone(),
            deadline: None,
        })
    }

    /// Verifies a token given to `refresh`.
    pub fn verify(&self, token: &str, peer: Option<SocketAddr>) -> Result<VerifiedToken, Error> {
        let Some(verifier) = &self.verifier else {
            return Err(Error::Forbidden(
                "authentication is not configured on this node".into(),
            ));
        };
        verifier.verify(token).map_err(|e| {
            tracing::debug!(?peer, reason = %e, "refresh refused: invalid token");
            Error::Unauthorized(e.public().into())
        })
    }

    /// A connection's state for a verified token.
    pub fn conn_auth(&self, v: &VerifiedToken) -> ConnAuth {
        let permissions = Permissions::build(
            &self.rules,
            self.broadcast,
            Some(&v.sub),
            Some(&v.grant),
            self.max_topic_length,
        );
        ConnAuth {
            identity: Some(Identity {
                sub: v.sub.clone(),
                exp: v.exp,
            }),
            permissions: Arc::new(permissions),
            deadline: Some(self.deadline(v.exp)),
        }
    }

    /// `exp + leeway + grace` as a Tokio instant (at most ~100 years
    /// ahead, whatever `exp` says).
    fn deadline(&self, exp: u64) -> tokio::time::Instant {
        const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let left = UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .map_or(FAR, |exp| {
                exp.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            })
            .min(FAR);
        tokio::time::Instant::now() + left + self.leeway + self.grace
    }

    /// Checks `Authorization: Bearer <key>` on an HTTP API call against
    /// every configured key, in constant time.
    pub fn authorize_api(&self, headers: &HeaderMap) -> Result<(), Error> {
        if self.api_keys.is_empty() {
            return if self.api_open {
                Ok(())
            } else {
                Err(Error::Unauthorized(
                    "the HTTP API is disabled: no API keys are configured".into(),
                ))
            };
        }
        let Some(presented) = bearer(headers) else {
            tracing::debug!("API call refused: no API key");
            return Err(Error::Unauthorized("missing API key".into()));
        };
        let digest = sha256(presented.as_bytes());
        let mut found = subtle::Choice::from(0);
        for k in &self.api_keys {
            found |= k.ct_eq(&digest);
        }
        if bool::from(found) {
            Ok(())
        } else {
            tracing::debug!("API call refused: wrong API key");
            Err(Error::Unauthorized("invalid API key".into()))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of cookie `name` in the `Cookie` header(s).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Mints a development token signed with the configured HS secret
/// (`auth.secret`, else the first `[[auth.keys]]` entry with a secret):
/// `wsgate token`. Adds `iss`/`aud` when they are configured.
pub fn mint_dev_token(
    cfg: &AuthConfig,
    sub: &str,
    grant: &Grant,
    ttl: Duration,
) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let (secret, algorithms, kid) = if let Some(s) = &cfg.secret {
        (s, &cfg.secret_algorithms, None)
    } else {
        cfg.keys
            .iter()
            .find_map(|k| k.secret.as_ref().map(|s| (s, &k.algorithms, k.kid.clone())))
            .ok_or("no HS secret is configured: set auth.secret (or WSGATE_AUTH__SECRET)")?
    };
    let alg = if algorithms.contains(&Algorithm::HS256) {
        Algorithm::HS256
    } else {
        *algorithms.first().ok_or("the secret has no algorithms")?
    };
    if sub.is_empty() {
        return Err("--sub must not be empty".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = serde_json::json!({
        "sub": sub,
        "iat": now,
        "exp": now + ttl.as_secs().max(1),
    });
    let list = |ps: &[crate::Pattern]| {
        ps.iter()
            .map(|p| p.as_str().to_string())
            .collect::<Vec<_>>()
    };
    if !grant.subscribe.is_empty() {
        claims["subscribe"] = list(&grant.subscribe).into();
    }
    if !grant.publish.is_empty() {
        claims["publish"] = list(&grant.publish).into();
    }
    if grant.broadcast {
        claims["broadcast"] = true.into();
    }
    if let Some(iss) = &cfg.issuer {
        claims["iss"] = iss.clone().into();
    }
    if !cfg.audience.is_empty() {
        claims["aud"] = cfg.audience.clone().into();
    }
    let mut header = Header::new(alg);
    header.kid = kid;
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::HOST),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    fn auth(f: impl FnOnce(&mut AuthConfig)) -> Auth {
        let mut c = Config::default();
        c.auth.secret = Some("s".repeat(32));
        f(&mut c.auth);
        Auth::new(&c).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn token_sources_in_order() {
        let a = auth(|c| c.cookie = Some("tok".into()));
        let uri: Uri = "/ws?x=1&token=from%2Dquery".parse().unwrap_or_default();
        let plain: Uri = "/ws".parse().unwrap_or_default();
        let h = headers(&[
            ("authorization", "Bearer from-header"),
            ("cookie", "a=b; tok=from-cookie"),
        ]);
        assert_eq!(
            a.token_from_request(&h, &uri).as_deref(),
            Some("from-header")
        );
        let h = headers(&[("cookie", "a=b; tok=from-cookie")]);
        assert_eq!(
            a.token_from_request(&h, &uri).as_deref(),
            Some("from-query")
        );
        assert_eq!(
            a.token_from_request(&h, &plain).as_deref(),
            Some("from-cookie")
        );
        let h = headers(&[("authorization", "Basic abc"), ("cookie", "tok=")]);
        assert_eq!(a.token_from_request(&h, &plain), None);
        let no_cookie = auth(|c| c.query_param = String::new());
        let h = headers(&[("cookie", "tok=x")]);
        assert_eq!(no_cookie.token_from_request(&h, &uri), None);
    }

    #[test]
    fn api_keys_compare_every_key() {
        let a =
            auth(|c| c.api_keys = vec!["old-key-0123456789".into(), "new-key-0123456789".into()]);
        let ok = |v: &str| a.authorize_api(&headers(&[("authorization", v)])).is_ok();
        assert!(ok("Bearer old-key-0123456789"));
        assert!(ok("bearer new-key-0123456789"));
        assert!(!ok("Bearer new-key-012345678"));
        assert!(!ok("new-key-0123456789"));
        assert!(a.authorize_api(&HeaderMap::new()).is_err());
        // Keys configured, not anonymous on loopback by default: no key, no API.
        let open = auth(|_| {});
        assert!(
            open.authorize_api(&HeaderMap::new()).is_ok(),
            "loopback default: open"
        );
        let closed = auth(|c| c.anonymous = Some(false));
        assert!(closed.authorize_api(&HeaderMap::new()).is_err());
    }

    #[test]
    fn origins() {
        let a = auth(|c| c.allowed_origins = vec!["https://app.example.com".into()]);
        assert!(
            a.check_origin(&HeaderMap::new()).is_ok(),
            "no Origin: not a browser"
        );
        assert!(
            a.check_origin(&headers(&[("origin", "https://app.example.com")]))
                .is_ok()
        );
        assert!(
            a.check_origin(&headers(&[("origin", "https://evil.example.net")]))
                .is_err()
        );
        assert!(a.check_origin(&headers(&[("origin", "null")])).is_err());
    }

    #[test]
    fn far_or_past_expiry_does_not_overflow() {
        let a = auth(|_| {});
        for exp in [0, 1, u64::MAX / 2, u64::MAX] {
            let v = VerifiedToken {
                sub: "a".into(),
                exp,
                grant: Grant::default(),
            };
            let d = a.conn_auth(&v).deadline;
            assert!(d.is_some(), "{exp}");
        }
    }

    #[test]
    fn dev_tokens_verify() {
        let a = auth(|c| c.issuer = Some("me".into()));
        let mut cfg = AuthConfig {
            secret: Some("s".repeat(32)),
            issuer: Some("me".into()),
            ..AuthConfig::default()
        };
        let grant = Grant {
            subscribe: vec![crate::Pattern::parse("chat.>", 256).unwrap_or_else(|e| panic!("{e}"))],
            publish: vec![],
            broadcast: true,
        };
        let t = mint_dev_token(&cfg, "alice", &grant, Duration::from_secs(60)).unwrap_or_default();
        let v = a.verify(&t, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.sub, "alice");
        assert_eq!(v.grant, grant);
        cfg.secret = None;
        assert!(mint_dev_token(&cfg, "alice", &grant, Duration::from_secs(60)).is_err());
    }
}
