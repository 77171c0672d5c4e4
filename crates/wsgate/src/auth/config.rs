//! The `[auth]` configuration section and its validation (pure: no files
//! are read here; key files are loaded by [`super::Auth::new`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Serialize};

use super::origin::OriginPattern;
use super::permissions::{Rule, SUB_PLACEHOLDER, Who};
use crate::topic::Pattern;

/// Shortest accepted HMAC secret, in bytes (RFC 7518 §3.2: at least the
/// hash size; 32 bytes for HS256).
pub const MIN_SECRET_LEN: usize = 32;
/// Shortest accepted HTTP API key, in bytes.
pub const MIN_API_KEY_LEN: usize = 16;

/// `[auth]`: who may connect, what they may do, and how the HTTP API is
/// protected. See `docs/security.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept WebSocket connections without a token (and the HTTP API
    /// without a key when no `api_keys` are set). Unset: yes when `listen`
    /// is a loopback address or when no token keys are configured at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,
    /// Allow anonymous access on a non-loopback address. Without it such a
    /// node refuses to start (`wsgate serve --allow-anonymous` sets it).
    pub allow_anonymous_public: bool,
    /// A shared secret for HS* tokens (shorthand for one `[[auth.keys]]`
    /// entry; handy as `WSGATE_AUTH__SECRET`). At least 32 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The algorithms accepted with `secret`.
    pub secret_algorithms: Vec<Algorithm>,
    /// A JWKS file (`{"keys":[...]}`), re-read when it changes; keys are
    /// chosen by the token's `kid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Required `iss` claim, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty: `aud` is not checked (tokens that
    /// carry one are then refused).
    pub audience: Vec<String>,
    /// Query parameter that may carry the token on the upgrade (browsers
    /// cannot set headers on a WebSocket); empty disables it.
    pub query_param: String,
    /// Cookie that may carry the token on the upgrade; unset disables it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Time after the token's `exp` (plus `leeway`) before a connection
    /// that did not `refresh` is closed with 4003.
    #[serde(with = "humantime_serde")]
    pub expiry_grace: Duration,
    /// Origins allowed to open WebSocket connections (`https://app.example.com`,
    /// `*.example.com`); empty allows every origin.
    pub allowed_origins: Vec<String>,
    /// Keys for `POST /api/*` (`Authorization: Bearer <key>`); several
    /// for rotation. At least 16 bytes each.
    pub api_keys: Vec<String>,
    /// Who may use the `broadcast` method (besides tokens with the
    /// `"broadcast": true` claim).
    pub broadcast: Who,
    /// Public keys and secrets for tokens.
    pub keys: Vec<KeyConfig>,
    /// Namespace rules, granting topics to anyone, to authenticated
    /// connections, or to their own `{sub}` namespace.
    pub rules: Vec<Rule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: None,
            allow_anonymous_public: false,
            secret: None,
            secret_algorithms: vec![Algorithm::HS256],
            jwks_file: None,
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: Vec::new(),
            query_param: "token".into(),
            cookie: None,
            expiry_grace: Duration::ZERO,
            allowed_origins: Vec::new(),
            api_keys: Vec::new(),
            broadcast: Who::Nobody,
            keys: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// One verification key (`[[auth.keys]]`). Give exactly one of `secret`,
/// `public_key_file` or `public_key`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against the token header's `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Accepted algorithms, all of one family (HS*, RS*/PS*, ES*, EdDSA).
    /// The token's `alg` must be one of them.
    pub algorithms: Vec<Algorithm>,
    /// Shared secret for HS* (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// PEM file with the public key for RS*/PS*/ES*/EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// The public key PEM itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// The family (key type) of an algorithm.
pub(crate) fn family(alg: Algorithm) -> AlgorithmFamily {
    [
        AlgorithmFamily::Rsa,
        AlgorithmFamily::Ec,
        AlgorithmFamily::Ed,
    ]
    .into_iter()
    .find(|f| f.algorithms().contains(&alg))
    .unwrap_or(AlgorithmFamily::Hmac)
}

/// The algorithm family of a non-empty list, if all agree.
pub(crate) fn family_of(algs: &[Algorithm]) -> Option<AlgorithmFamily> {
    let first = family(*algs.first()?);
    algs.iter().all(|a| family(*a) == first).then_some(first)
}

impl AuthConfig {
    /// True if tokens can be verified (a secret, a key or a JWKS file).
    pub fn has_token_keys(&self) -> bool {
        self.secret.is_some() || !self.keys.is_empty() || self.jwks_file.is_some()
    }

    /// True if permissions are enforced: tokens or namespace rules are
    /// configured. Otherwise (the quick start) every connection may do
    /// everything.
    pub fn enforced(&self) -> bool {
        self.has_token_keys() || !self.rules.is_empty()
    }

    /// Whether connections without a token are accepted, on `listen`.
    pub fn anonymous_allowed(&self, listen: SocketAddr) -> bool {
        self.anonymous
            .unwrap_or_else(|| listen.ip().is_loopback() || !self.has_token_keys())
    }

    /// Whether the HTTP API is open without a key.
    pub fn api_open(&self, listen: SocketAddr) -> bool {
        self.api_keys.is_empty() && self.anonymous_allowed(listen)
    }

    /// Rejects combinations that cannot work or would expose a public node.
    pub fn validate(&self, listen: SocketAddr, max_topic_length: usize) -> Result<(), String> {
        if self.anonymous == Some(false) && !self.has_token_keys() {
            return Err(
                "auth.anonymous = false needs a way to authenticate: set auth.secret, [[auth.keys]] or auth.jwks_file"
                    .into(),
            );
        }
        if let Some(s) = &self.secret {
            if s.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "auth.secret must be at least {MIN_SECRET_LEN} bytes"
                ));
            }
            if family_of(&self.secret_algorithms) != Some(AlgorithmFamily::Hmac) {
                return Err(
                    "auth.secret_algorithms must list HS256, HS384 and/or HS512 only".into(),
                );
            }
        }
        for (i, k) in self.keys.iter().enumerate() {
            k.validate().map_err(|e| format!("auth.keys[{i}]: {e}"))?;
        }
        for k in &self.api_keys {
            if k.len() < MIN_API_KEY_LEN {
                return Err(format!(
                    "auth.api_keys: every key must be at least {MIN_API_KEY_LEN} bytes"
                ));
            }
        }
        for o in &self.allowed_origins {
            OriginPattern::parse(o)?;
        }
        if let Some(c) = &self.cookie {
            let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if c.is_empty() || !c.bytes().all(token_char) {
                return Err(format!("auth.cookie: {c:?} is not a valid cookie name"));
            }
        }
        if self.leeway > Duration::from_secs(3600) {
            return Err("auth.leeway must be at most 1h".into());
        }
        for (i, r) in self.rules.iter().enumerate() {
            let sample = r.pattern.replace(SUB_PLACEHOLDER, "x");
            if let Err(e) = Pattern::parse(&sample, max_topic_length) {
                return Err(format!("auth.rules[{i}]: pattern {:?}: {e}", r.pattern));
            }
            if sample.contains('{') || sample.contains('}') {
                return Err(format!(
                    "auth.rules[{i}]: pattern {:?}: the only placeholder is {SUB_PLACEHOLDER}",
                    r.pattern
                ));
            }
        }
        if !listen.ip().is_loopback()
            && !self.allow_anonymous_public
            && self.anonymous_allowed(listen)
        {
            let why = if self.has_token_keys() {
                "auth.anonymous = true"
            } else {
                "no token keys are configured"
            };
            return Err(format!(
                "refusing to start: {listen} is not a loopback address and anonymous access is on ({why}), \
                 so anyone who can reach it could subscribe, publish and use the HTTP API. \
                 Configure [auth] (see docs/security.md), or accept this with \
                 `wsgate serve --allow-anonymous` (auth.allow_anonymous_public = true)"
            ));
        }
        Ok(())
    }
}

impl KeyConfig {
    fn validate(&self) -> Result<(), String> {
        let sources = [
            self.secret.is_some(),
            self.public_key_file.is_some(),
            self.public_key.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err("give exactly one of secret, public_key_file or public_key".into());
        }
        let Some(family) = family_of(&self.algorithms) else {
            return Err(
                "algorithms must be a non-empty list of one family (HS*, RS*/PS*, ES* or EdDSA)"
                    .into(),
            );
        };
        let hmac = family == AlgorithmFamily::Hmac;
        match &self.secret {
            Some(_) if !hmac => Err("a secret is for HS256/HS384/HS512 only".into()),
            None if hmac => Err("HS256/HS384/HS512 need a secret, not a public key".into()),
            Some(s) if s.len() < MIN_SECRET_LEN => {
                Err(format!("secret must be at least {MIN_SECRET_LEN} bytes"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lo() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    fn public() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn quick_start_is_anonymous_on_loopback_and_refused_in_public() {
        let c = AuthConfig::default();
        assert!(!c.enforced());
        assert!(c.anonymous_allowed(lo()));
        assert!(c.api_open(lo()));
        assert!(c.validate(lo(), 256).is_ok());
        let e = c.validate(public(), 256).err().unwrap_or_default();
        assert!(
            e.contains("refusing to start") && e.contains("--allow-anonymous"),
            "{e}"
        );
        let allowed = AuthConfig {
            allow_anonymous_public: true,
            ..AuthConfig::default()
        };
        assert!(allowed.validate(public(), 256).is_ok());
    }

    #[test]
    fn with_keys_anonymous_defaults_to_loopback_only() {
        let c = AuthConfig {
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        assert!(c.enforced());
        assert!(c.anonymous_allowed(lo()));
        assert!(!c.anonymous_allowed(public()));
        assert!(!c.api_open(public()), "no keys, not anonymous: API closed");
        assert!(c.validate(public(), 256).is_ok());
        let explicit = AuthConfig {
            anonymous: Some(true),
            ..c.clone()
        };
        assert!(explicit.validate(public(), 256).is_err());
        let no = AuthConfig {
            anonymous: Some(false),
            ..AuthConfig::default()
        };
        assert!(no.validate(lo(), 256).is_err(), "nobody could connect");
    }

    #[test]
    fn keys_are_checked() {
        let key = |algorithms: Vec<Algorithm>, secret: Option<&str>, pem: Option<&str>| KeyConfig {
            kid: None,
            algorithms,
            secret: secret.map(String::from),
            public_key_file: None,
            public_key: pem.map(String::from),
        };
        assert!(
            key(vec![Algorithm::HS256], Some(SECRET), None)
                .validate()
                .is_ok()
        );
        assert!(
            key(vec![Algorithm::RS256], None, Some("pem"))
                .validate()
                .is_ok()
        );
        assert!(
            key(vec![Algorithm::HS256], Some("short"), None)
                .validate()
                .is_err()
        );
        assert!(
            key(vec![Algorithm::RS256], Some(SECRET), None)
                .validate()
                .is_err(),
            "HS/RS confusion"
        );
        assert!(
            key(vec![Algorithm::HS256], None, Some("pem"))
                .validate()
                .is_err(),
            "HS/RS confusion"
        );
        assert!(
            key(vec![Algorithm::HS256, Algorithm::RS256], None, Some("pem"))
                .validate()
                .is_err(),
            "mixed"
        );
        assert!(key(vec![], None, Some("pem")).validate().is_err());
        assert!(
            key(vec![Algorithm::ES256], Some(SECRET), Some("pem"))
                .validate()
                .is_err(),
            "two sources"
        );
        let c = AuthConfig {
            secret: Some(SECRET.into()),
            secret_algorithms: vec![Algorithm::RS256],
            ..AuthConfig::default()
        };
        assert!(c.validate(lo(), 256).is_err());
    }

    #[test]
    fn rules_origins_cookies_api_keys() {
        let with = |f: &dyn Fn(&mut AuthConfig)| {
            let mut c = AuthConfig::default();
            f(&mut c);
            c.validate(lo(), 256)
        };
        let rule = |p: &str| Rule {
            pattern: p.into(),
            subscribe: Who::Anyone,
            publish: Who::Nobody,
        };
        assert!(with(&|c| c.rules = vec![rule("user.{sub}.>"), rule("public.>")]).is_ok());
        assert!(with(&|c| c.rules = vec![rule("a..b")]).is_err());
        assert!(with(&|c| c.rules = vec![rule("user.{user}")]).is_err());
        assert!(with(&|c| c.allowed_origins = vec!["*.example.com".into()]).is_ok());
        assert!(with(&|c| c.allowed_origins = vec!["*".into()]).is_err());
        assert!(with(&|c| c.cookie = Some("wsgate_token".into())).is_ok());
        assert!(with(&|c| c.cookie = Some("a b".into())).is_err());
        assert!(with(&|c| c.api_keys = vec!["short".into()]).is_err());
        assert!(with(&|c| c.api_keys = vec!["k".repeat(16)]).is_ok());
    }
}
