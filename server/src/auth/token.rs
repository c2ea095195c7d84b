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
            // Encryption keys and keys this broker cannot use are skipped (identity providers
            // publish such keys beside their signing keys), with a warning.
            let kid = jwk.common.key_id.clone();
            if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
                continue;
            }
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(path = %path.display(), ?kid, error = %e, "skipping a JWKS key this broker cannot use");
                    continue;
                }
            };
            let algs = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(a), _) => match a.to_string().parse::<Algorithm>() {
                    Ok(alg) => vec![alg],
                    Err(_) => {
                        tracing::warn!(path = %path.display(), ?kid, alg = %a, "skipping a JWKS key with an algorithm tokens cannot use");
                        continue;
                    }
                },
                (None, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)) => rsa_algs(),
                (None, jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)) => match p.curve {
                    jsonwebtoken::jwk::EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => vec![Algorithm::ES256],
                },
                (None, jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_)) => vec![Algorithm::EdDSA],
                (None, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) => {
                    tracing::warn!(path = %path.display(), ?kid, "skipping a symmetric (oct) key: only the issuer's public keys are used");
                    continue;
                }
            };
            // HMAC algorithms are never accepted, whatever a key claims.
            if algs.iter().any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) {
                continue;
            }
            keys.push((kid, key, algs));
        }
        if keys.is_empty() {
            return Err(err("the JWKS holds no signing key this broker can use".into()));
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
            // A token naming a kid gets that key; one without a kid, a key without one.
            Keys::Set(keys) => {
                keys.iter().find(|(kid, _, _)| *kid == header.kid).map(|(_, k, a)| (k, a)).ok_or_else(|| {
                    TokenError::Invalid(format!("no key with kid {:?} in the issuer's JWKS", header.kid))
                })?
            }
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
        // Cached while the keys it verified with are still held (a reload, which clears the
        // cache, waits for this read lock): a token of a removed key is never cached.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(token.to_string(), (name.clone(), exp));
        drop(cache);
        drop(loaded);
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    /// An EC P-256 key pair as a JWK (public half) and an encoding key.
    fn ec_jwk(kid: &str, use_: &str) -> (serde_json::Value, jsonwebtoken::EncodingKey) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw(); // 0x04 || X || Y
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": use_,
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
        });
        (jwk, jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap())
    }

    fn token(key: &jsonwebtoken::EncodingKey, kid: Option<&str>, sub: &str) -> String {
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_string);
        let claims = serde_json::json!({"sub": sub, "iss": "https://i.test", "exp": now_s() + 600});
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    }

    #[test]
    fn jwks_keys_by_kid_skipping_what_cannot_sign() {
        let dir = tempfile::tempdir().unwrap();
        let (sig, sig_key) = ec_jwk("k1", "sig");
        let (enc, enc_key) = ec_jwk("k2", "enc");
        let oct = serde_json::json!({"kty": "oct", "kid": "k3", "k": "c2VjcmV0"});
        let set = serde_json::json!({"keys": [sig, enc, oct]});
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, set.to_string()).unwrap();
        let v = JwtVerifier::new(&JwtSettings {
            keys: path.clone(),
            issuer: "https://i.test".into(),
            ..JwtSettings::default()
        })
        .unwrap();
        assert_eq!(v.verify(&token(&sig_key, Some("k1"), "alice")).unwrap(), "alice");
        let err = v.verify(&token(&enc_key, Some("k2"), "mallory")).unwrap_err().to_string();
        assert!(err.contains("no key with kid"), "an encryption key never verifies: {err}");
        let err = v.verify(&token(&sig_key, None, "alice")).unwrap_err().to_string();
        assert!(err.contains("no key with kid"), "no kid, no key without one: {err}");
        // Only unusable keys: the file is refused.
        std::fs::write(&path, serde_json::json!({"keys": [oct_only()]}).to_string()).unwrap();
        let settings = JwtSettings { keys: path, issuer: "x".into(), ..JwtSettings::default() };
        assert!(JwtVerifier::new(&settings).is_err());
    }

    fn oct_only() -> serde_json::Value {
        serde_json::json!({"kty": "oct", "kid": "k3", "k": "c2VjcmV0"})
    }
}
