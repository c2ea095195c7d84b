//! Who a caller is: [`Caller`], made once per call by the auth layer (`layer.rs`) from its
//! credentials, and the rule that maps a client certificate to a principal.
//!
//! Mapping rule for mTLS (`auth.mtls_principal`): `cn` (the default) takes the subject's
//! common name, falling back to the first DNS subjectAltName; `san` takes the first DNS
//! subjectAltName, else the first URI one, else the CN. The principal is `User:<that>`. Only
//! certificates the TLS handshake verified against `tls.ca` reach this code.

use std::net::IpAddr;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::settings::{MtlsRule, ANONYMOUS};

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Token,
    Mtls,
    Anonymous,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Token => "token",
            Source::Mtls => "mtls",
            Source::Anonymous => "anonymous",
        }
    }
}

/// The caller of one request, in its extensions.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `User:<name>`.
    pub principal: Arc<str>,
    pub source: Source,
    /// The peer's IP address (none for in-process callers).
    pub host: Option<IpAddr>,
    /// `x-tidelog-client-id` metadata, for quotas ("" when absent).
    pub client_id: Arc<str>,
    /// A broker of this cluster (its certificate's principal is in `auth.broker_principals`).
    pub broker: bool,
}

impl Caller {
    /// A caller without credentials.
    pub fn anonymous(host: Option<IpAddr>, client_id: Arc<str>) -> Self {
        Self { principal: Arc::from(ANONYMOUS), source: Source::Anonymous, host, client_id, broker: false }
    }

    /// The principal's name, without `User:`.
    pub fn user(&self) -> &str {
        self.principal.strip_prefix("User:").unwrap_or(&self.principal)
    }
}

/// The principal's name in a verified client certificate (DER), per `rule`.
pub fn certificate_name(der: &[u8], rule: MtlsRule) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_string);
    let (mut dns, mut uri) = (None, None);
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) if dns.is_none() => dns = Some((*d).to_string()),
                GeneralName::URI(u) if uri.is_none() => uri = Some((*u).to_string()),
                _ => {}
            }
        }
    }
    let name = match rule {
        MtlsRule::Cn => cn.or(dns),
        MtlsRule::San => dns.or(uri).or(cn),
    };
    name.filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, dns: &[&str], uri: Option<&str>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        if let Some(u) = uri {
            p.subject_alt_names.push(rcgen::SanType::URI(u.try_into().unwrap()));
        }
        p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn mapping_rules() {
        let full = cert(Some("alice"), &["alice.apps.internal"], Some("spiffe://corp/alice"));
        assert_eq!(certificate_name(&full, MtlsRule::Cn).as_deref(), Some("alice"));
        assert_eq!(certificate_name(&full, MtlsRule::San).as_deref(), Some("alice.apps.internal"));
        let no_cn = cert(None, &["svc.internal"], None);
        assert_eq!(certificate_name(&no_cn, MtlsRule::Cn).as_deref(), Some("svc.internal"));
        let uri_only = cert(Some("bob"), &[], Some("spiffe://corp/bob"));
        assert_eq!(certificate_name(&uri_only, MtlsRule::San).as_deref(), Some("spiffe://corp/bob"));
        assert_eq!(certificate_name(&cert(None, &[], None), MtlsRule::Cn), None);
        assert_eq!(certificate_name(b"not a certificate", MtlsRule::Cn), None);
    }
}
