//! Certificates generated at test time (rcgen): a CA, server certificates for 127.0.0.1 and
//! localhost, client certificates; written as PEM files into a test's directory. Nothing
//! secret is committed.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Its certificate, as PEM, at this path.
    pub pem: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Signed {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, issuer.pem()).unwrap();
        Self { issuer, pem }
    }

    /// A certificate for `cn`, valid for 127.0.0.1 and localhost, written as `{file}.pem` and
    /// `{file}-key.pem` (overwriting: a reload test rewrites them).
    pub fn sign(&self, dir: &Path, file: &str, cn: &str) -> Signed {
        self.sign_params(dir, file, cn, |_| {})
    }

    /// As [`Ca::sign`], for a certificate that expired in 2020.
    pub fn sign_expired(&self, dir: &Path, file: &str, cn: &str) -> Signed {
        self.sign_params(dir, file, cn, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn sign_params(&self, dir: &Path, file: &str, cn: &str, adjust: impl FnOnce(&mut CertificateParams)) -> Signed {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, cn);
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let signed = Signed { cert: dir.join(format!("{file}.pem")), key: dir.join(format!("{file}-key.pem")) };
        std::fs::write(&signed.key, key.serialize_pem()).unwrap();
        std::fs::write(&signed.cert, cert.pem()).unwrap();
        signed
    }
}
