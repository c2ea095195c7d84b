//! `[auth]`: how callers are authenticated and whether their calls are authorized
//! (docs/SECURITY.md has the rules and a complete example).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a verified client certificate becomes a principal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MtlsRule {
    /// `User:<subject CN>`; a certificate without a CN falls back to its first DNS SAN.
    #[default]
    Cn,
    /// `User:<first DNS SAN>`, else the first URI SAN, else the CN.
    San,
}

/// `[auth]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Check ACLs on every call. Default false (everyone may do everything). With it on and no
    /// ACL, only superusers and brokers can do anything.
    pub authorization: bool,
    /// Principals (`User:<name>`) allowed everything, ACLs or not.
    pub superusers: Vec<String>,
    /// Principals of the brokers' own certificates (mTLS between brokers). When set, only they
    /// may send Raft traffic, and they act as superusers for the calls they pass on. Required
    /// in a cluster with `authorization` or `require_authentication`.
    pub broker_principals: Vec<String>,
    /// Refuse calls that carry no credentials (no token, no client certificate) with
    /// UNAUTHENTICATED. Default false: they run as `User:ANONYMOUS`.
    pub require_authentication: bool,
    /// How a client certificate maps to a principal: `cn` (default) or `san`.
    pub mtls_principal: MtlsRule,
    /// Bearer tokens (JWT), off unless `[auth.jwt]` names keys.
    pub jwt: Option<JwtSettings>,
}

/// `[auth.jwt]`: signed bearer tokens (`authorization: Bearer <JWT>` in gRPC metadata), as
/// an OIDC provider issues them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// The issuer's public keys: a JWKS file (JSON, keys chosen by `kid`) or one PEM public
    /// key (RSA, EC P-256/P-384 or Ed25519). Reloaded when the file changes.
    pub keys: PathBuf,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (one of its audiences); empty: not checked.
    pub audience: String,
    /// The claim holding the principal's name. Default `sub`.
    pub principal_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 30.
    pub leeway_s: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            keys: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            principal_claim: "sub".into(),
            leeway_s: 30,
        }
    }
}

/// The principal of a request without credentials.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// Checks a principal as configured or given in an ACL: `User:<name>` (`User:*` where
/// wildcards are allowed).
pub fn check_principal(p: &str, wildcard: bool) -> Result<(), String> {
    match p.strip_prefix("User:") {
        Some("*") if wildcard => Ok(()),
        Some(name) if !name.is_empty() && name != "*" => Ok(()),
        _ => Err(format!("principal {p:?} must be User:<name>{}", if wildcard { " or User:*" } else { "" })),
    }
}

impl AuthSettings {
    /// Whether anything about callers is checked (a layer is installed).
    pub fn enabled(&self) -> bool {
        self.authorization || self.require_authentication || self.jwt.is_some() || !self.broker_principals.is_empty()
    }

    /// Checks the settings; `cluster_mtls` says whether brokers present certificates to each
    /// other (a cluster with `tls.ca`), `cluster` whether this is a cluster at all.
    pub fn validate(&self, cluster: bool, cluster_mtls: bool) -> Result<(), String> {
        for p in self.superusers.iter().chain(&self.broker_principals) {
            check_principal(p, false).map_err(|e| format!("auth: {e}"))?;
        }
        if let Some(j) = &self.jwt {
            if j.keys.as_os_str().is_empty() {
                return Err("auth.jwt.keys: the issuer's JWKS or PEM public key file is required".into());
            }
            if j.issuer.is_empty() {
                return Err("auth.jwt.issuer: the issuer (iss) tokens must carry is required".into());
            }
            if j.principal_claim.is_empty() {
                return Err("auth.jwt.principal_claim must name a claim (e.g. sub)".into());
            }
        }
        if cluster && (self.authorization || self.require_authentication) {
            if !cluster_mtls {
                return Err("auth: a cluster with authorization or require_authentication needs mutual TLS between \
                            brokers (tls.cert, tls.key and tls.ca), so brokers can prove who they are"
                    .into());
            }
            if self.broker_principals.is_empty() {
                return Err("auth.broker_principals: list the principals of the brokers' certificates \
                            (e.g. [\"User:broker-1\", ...]); only they may send Raft traffic"
                    .into());
            }
        }
        Ok(())
    }
}
