//! Bearer tokens: JWTs signed by an identity provider, checked against its public keys (a
//! JWKS file or one PEM key), as Redpanda's OIDC does. Stateless: the broker stores no
//! secrets, the provider issues and expires tokens, rotation is a new JWKS file.
//!
//! A token is valid when its signature verifies with a key of the configured file (chosen by
//! `kid` in a JWKS; the algorithm must be one the key supports: no `none`, no HMAC with a
//! public key), `iss` equals the configured issuer, `aud` contains the audience (if one is
//! configured), `exp` is in the future and `nbf` (if present) in the past, within the leeway.
//! The principal is `User:<claim>` for the configured claim (default `sub`).
//!
//! The key file is read at start (a bad file stops the broker) and again when its
//! modification time changes (checked at most every [`RELOAD_CHECK`]; a bad new file keeps
//! the old keys and logs why). Verified tokens are cached until they expire, so a stream or a
//! client reusing its token costs one map lookup.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::settings::JwtSettings;

/// How often the key file's modification time is looked at.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// Verified tokens remembered (the cache is cleared when full).
const CACHE_ENTRIES: usize = 10_000;
/// Longest token accepted (bytes).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the JWT key file {path}: {message}")]
    Keys { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The keys of the configured file.
enum Keys {
    /// A JWKS: keys by `kid` (a key without one is used for tokens without one).
    Set(Vec<(Option<String>, DecodingKey, Vec<Algorithm>)>),
    /// One PEM key and the algorithms it verifies.
    Single(DecodingKey, Vec<Algorithm>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::Set(k) => write!(f, "Keys::Set({} keys)", k.len()),
            Keys::Single(_, a) => write!(f, "Keys::Single({a:?})"),
        }
    }
}

fn rsa_algs() -> Vec<Algorithm> {
    use Algorithm::*;
    vec![RS256, RS384, RS512, PS256, PS384, PS512]
}

fn load(path: &Path) -> Result<Keys, TokenError> {
    let err = |message: String| TokenError::Keys { path: path.display().to_string(), message };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| err(format!("not a JWKS: {e}")))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {:?}: {e}", jwk.common.key_id)))?;
            let algs = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(a), _) => vec![Algorithm::from_str_lossy(&a.to_string())],
                (None, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) => rsa_algs(),
                (None, jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)) => match p.curve {
                    jsonwebtoken::jwk::EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => vec![Algorithm::ES256],
                },
                (None, jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_)) => vec![Algorithm::EdDSA],
                (None, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) => {
                    return Err(err("symmetric (oct) keys are not accepted: use the issuer's public keys".into()))
                }
            };
            keys.push((jwk.common.key_id.clone(), key, algs));
        }
        if keys.is_empty() {
            return Err(err("the JWKS holds no key".into()));
        }
        return Ok(Keys::Set(keys));
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(&bytes) {
        return Ok(Keys::Single(k, rsa_algs()));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&bytes) {
        return Ok(Keys::Single(k, vec![Algorithm::ES256, Algorithm::ES384]));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(&bytes) {
        return Ok(Keys::Single(k, vec![Algorithm::EdDSA]));
    }
    Err(err("neither a JWKS nor a PEM public key (RSA, EC or Ed25519)".into()))
}

/// Small extension: `Algorithm` from the name a JWK's `alg` field carries.
trait FromStrLossy {
    fn from_str_lossy(s: &str) -> Algorithm;
}

impl FromStrLossy for Algorithm {
    fn from_str_lossy(s: &str) -> Algorithm {
        s.parse().unwrap_or(Algorithm::RS256)
    }
}

#[derive(Debug)]
struct Loaded {
    keys: Keys,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Verifies tokens (see the module docs).
#[derive(Debug)]
pub struct JwtVerifier {
    settings: JwtSettings,
    loaded: RwLock<Loaded>,
    /// token → (principal name, expiry in seconds since the epoch).
    cache: Mutex<HashMap<String, (String, u64)>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Result<Self, TokenError> {
        let keys = load(&settings.keys)?;
        Ok(Self {
            settings: settings.clone(),
            loaded: RwLock::new(Loaded { keys, modified: modified(&settings.keys), checked: Instant::now() }),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn maybe_reload(&self) {
        let due = self.loaded.read().unwrap_or_else(PoisonError::into_inner).checked.elapsed() >= RELOAD_CHECK;
        if !due {
            return;
        }
        let mut l = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        l.checked = Instant::now();
        let m = modified(&self.settings.keys);
        if m == l.modified {
            return;
        }
        match load(&self.settings.keys) {
            Ok(keys) => {
                l.keys = keys;
                l.modified = m;
                self.cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
                tracing::info!(path = %self.settings.keys.display(), "JWT keys reloaded");
            }
            Err(e) => tracing::error!(error = %e, "JWT key reload failed; keeping the previous keys"),
        }
    }

    /// The principal's name in a valid token; the error says why it is not (for the client's
    /// UNAUTHENTICATED status: never the token itself).
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Invalid(format!("token longer than {MAX_TOKEN_BYTES} bytes")));
        }
        self.maybe_reload();
        let now = now_s();
        if let Some((name, exp)) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(token) {
            if *exp + self.settings.leeway_s > now {
                return Ok(name.clone());
            }
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("the bearer token is not a JWT: {e}")))?;
        let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        let (key, algs) = match &loaded.keys {
            Keys::Single(k, a) => (k, a),
            Keys::Set(keys) => keys
                .iter()
                .find(|(kid, _, _)| *kid == header.kid)
                .or_else(|| keys.iter().find(|(kid, _, _)| kid.is_none()))
                .map(|(_, k, a)| (k, a))
                .ok_or_else(|| TokenError::Invalid(format!("no key with kid {:?} in the issuer's JWKS", header.kid)))?,
        };
        if !algs.contains(&header.alg) {
            return Err(TokenError::Invalid(format!("algorithm {:?} is not accepted for this key", header.alg)));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.settings.leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[&self.settings.issuer]);
        v.set_required_spec_claims(&["exp", "iss"]);
        if self.settings.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.settings.audience]);
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v)
            .map_err(|e| TokenError::Invalid(format!("invalid token: {e}")))?;
        let claim = &self.settings.principal_claim;
        let name = match data.claims.get(claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(TokenError::Invalid(format!("the token has no {claim:?} claim naming its principal"))),
        };
        let exp = data.claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(now);
        drop(loaded);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(token.to_string(), (name.clone(), exp));
        Ok(name)
    }
}
