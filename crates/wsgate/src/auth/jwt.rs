//! JWT verification with `jsonwebtoken`.
//!
//! The accepted algorithms are configured per key and never taken from the
//! token: a token's `alg` only selects among the keys that accept it. There
//! is no `none` algorithm (`jsonwebtoken` cannot even parse such a header),
//! and a key accepts one algorithm family only, so an HS256 token "signed"
//! with an RSA public key as its secret matches no key (HS/RS confusion).
//!
//! Keys come from the configuration (`auth.secret`, `[[auth.keys]]`) and
//! from a JWKS file, whose metadata is checked on every verification and
//! which is re-read when it changes; a token with a `kid` is verified only
//! with the keys of that `kid`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation, errors::ErrorKind};
use parking_lot::Mutex;
use serde::Deserialize;

use super::config::{AuthConfig, family, family_of};
use super::permissions::Grant;
use crate::topic::Pattern;

/// Longest accepted `sub`.
const MAX_SUB_LEN: usize = 256;

/// A key tokens can be verified with.
struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// Why a token was refused. [`TokenError::public`] is what the client is
/// told; the `Display` text (logged at debug) says more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token or unsupported algorithm: {0}")]
    Malformed(String),
    #[error("no configured key accepts alg {alg:?} with kid {kid:?}")]
    NoKey { alg: Algorithm, kid: Option<String> },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    #[error("invalid claims: {0}")]
    Claims(String),
}

impl TokenError {
    /// The reason given to the client (coarse on purpose).
    pub fn public(&self) -> &'static str {
        match self {
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            _ => "invalid token",
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The user id (`sub`).
    pub sub: String,
    /// `exp`, seconds since the Unix epoch.
    pub exp: u64,
    /// Its `subscribe`/`publish`/`broadcast` claims.
    pub grant: Grant,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    broadcast: bool,
}

/// A JWKS file, re-read when its modification time or size changes.
struct JwksFile {
    path: PathBuf,
    state: Mutex<JwksState>,
}

struct JwksState {
    stamp: Option<(SystemTime, u64)>,
    keys: Arc<Vec<VerifyKey>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// The algorithm for a JWK: its `alg` (part of the trusted file), else the
/// usual one for its key type.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if let Some(a) = jwk.common.key_algorithm {
        return match a {
            KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => None,
            other => other.to_string().parse().ok(),
        };
    }
    Some(match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
    })
}

fn load_jwks(path: &Path) -> Result<Vec<VerifyKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let kid = jwk.common.key_id.clone();
        let Some(alg) = jwk_algorithm(jwk) else {
            tracing::warn!(path = %path.display(), ?kid, "JWKS key skipped: no usable signature algorithm");
            continue;
        };
        let key = match &jwk.algorithm {
            // An HMAC key from a JWKS must be as long as a configured secret.
            AlgorithmParameters::OctetKey(_) => DecodingKey::from_jwk(jwk).ok().filter(|k| {
                k.try_get_hmac_secret()
                    .is_ok_and(|s| s.len() >= super::config::MIN_SECRET_LEN)
            }),
            _ => DecodingKey::from_jwk(jwk).ok(),
        };
        match key {
            Some(key) if key.family() == family(alg) => keys.push(VerifyKey {
                kid,
                algorithms: vec![alg],
                key,
            }),
            _ => tracing::warn!(path = %path.display(), ?kid, "JWKS key skipped: invalid key"),
        }
    }
    Ok(keys)
}

impl JwksFile {
    fn keys(&self) -> Arc<Vec<VerifyKey>> {
        let now = stamp(&self.path);
        let mut st = self.state.lock();
        if now.is_some() && now != st.stamp {
            st.stamp = now;
            match load_jwks(&self.path) {
                Ok(keys) => {
                    tracing::info!(path = %self.path.display(), keys = keys.len(), "JWKS loaded");
                    st.keys = Arc::new(keys);
                }
                // Keep the previous keys: a half-written file is retried
                // when it changes again.
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS reload failed; keeping the previous keys")
                }
            }
        }
        st.keys.clone()
    }
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    jwks: Option<JwksFile>,
    validation: Validation,
    max_topic_length: usize,
}

fn pem_key(family: AlgorithmFamily, pem: &[u8]) -> Result<DecodingKey, String> {
    let r = match family {
        AlgorithmFamily::Hmac => return Err("HS* keys need a secret".into()),
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
    };
    r.map_err(|e| format!("cannot read the public key PEM: {e}"))
}

impl Verifier {
    /// Loads every configured key; `None` when no key is configured.
    pub fn new(cfg: &AuthConfig, max_topic_length: usize) -> Result<Option<Verifier>, String> {
        if !cfg.has_token_keys() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(s) = &cfg.secret {
            keys.push(VerifyKey {
                kid: None,
                algorithms: cfg.secret_algorithms.clone(),
                key: DecodingKey::from_secret(s.as_bytes()),
            });
        }
        for (i, k) in cfg.keys.iter().enumerate() {
            let family = family_of(&k.algorithms)
                .ok_or_else(|| format!("auth.keys[{i}]: algorithms of one family required"))?;
            let key = if let Some(s) = &k.secret {
                DecodingKey::from_secret(s.as_bytes())
            } else if let Some(pem) = &k.public_key {
                pem_key(family, pem.as_bytes()).map_err(|e| format!("auth.keys[{i}]: {e}"))?
            } else if let Some(path) = &k.public_key_file {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("auth.keys[{i}]: {}: {e}", path.display()))?;
                pem_key(family, &pem)
                    .map_err(|e| format!("auth.keys[{i}]: {}: {e}", path.display()))?
            } else {
                return Err(format!("auth.keys[{i}]: no key material"));
            };
            if key.family() != family {
                return Err(format!(
                    "auth.keys[{i}]: key type does not match its algorithms"
                ));
            }
            keys.push(VerifyKey {
                kid: k.kid.clone(),
                algorithms: k.algorithms.clone(),
                key,
            });
        }
        let jwks = match &cfg.jwks_file {
            Some(path) => {
                let loaded = load_jwks(path).map_err(|e| format!("auth.jwks_file: {e}"))?;
                Some(JwksFile {
                    path: path.clone(),
                    state: Mutex::new(JwksState {
                        stamp: stamp(path),
                        keys: Arc::new(loaded),
                    }),
                })
            }
            None => None,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if cfg.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&cfg.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Verifier {
            keys,
            jwks,
            validation,
            max_topic_length,
        }))
    }

    /// Verifies `token`: signature with a configured key that accepts its
    /// `alg` (and matches its `kid`), then `exp`/`nbf`/`iss`/`aud`, then
    /// the claims wsgate uses.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let jwks = self.jwks.as_ref().map(JwksFile::keys);
        let all = self.keys.iter().chain(jwks.iter().flat_map(|k| k.iter()));
        let accepts = |k: &&VerifyKey| k.algorithms.contains(&header.alg);
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => all
                .filter(accepts)
                .filter(|k| k.kid.as_ref() == Some(kid))
                .collect(),
            None => all.filter(accepts).collect(),
        };
        if candidates.is_empty() {
            return Err(TokenError::NoKey {
                alg: header.alg,
                kid: header.kid,
            });
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let mut last = TokenError::BadSignature;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return self.claims(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => {
                            // Another key of the same kid/alg may verify it.
                            continue;
                        }
                        // The signature verified (claims are checked after
                        // it), so this is the answer.
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidIssuer
                        | ErrorKind::InvalidAudience
                        | ErrorKind::MissingRequiredClaim(_)
                        | ErrorKind::InvalidClaimFormat(_)
                        | ErrorKind::Json(_) => return Err(TokenError::Claims(e.to_string())),
                        _ => TokenError::Malformed(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }

    fn claims(&self, c: Claims) -> Result<VerifiedToken, TokenError> {
        if c.sub.is_empty() || c.sub.len() > MAX_SUB_LEN {
            return Err(TokenError::Claims(format!(
                "sub must be 1 to {MAX_SUB_LEN} bytes"
            )));
        }
        let patterns = |list: &[String], claim: &str| {
            list.iter()
                .map(|p| {
                    Pattern::parse(p, self.max_topic_length).map_err(|e| {
                        TokenError::Claims(format!("{claim} claim: pattern {p:?}: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(VerifiedToken {
            grant: Grant {
                subscribe: patterns(&c.subscribe, "subscribe")?,
                publish: patterns(&c.publish, "publish")?,
                broadcast: c.broadcast,
            },
            sub: c.sub,
            exp: c.exp,
        })
    }
}
