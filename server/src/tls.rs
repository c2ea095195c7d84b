//! TLS for the broker's listener and for its calls to peers, on rustls (ring): certificates and
//! keys from PEM files, reloaded without dropping connections.
//!
//! ```text
//! TcpListener ─ accept ─▶ handshake task (10 s limit) ─▶ tonic (h2 over TLS)
//!                              uses the ServerConfig current at accept time
//! SIGHUP or a changed file ─▶ reload: build a new ServerConfig, swap it in (a bad file keeps
//!                             the old one and logs why)
//! ```
//!
//! Invariants:
//! - a connection keeps the certificate it was accepted with; new connections get the newest
//!   one that loaded: a reload never drops a stream;
//! - with `require_client_cert`, a client without a certificate chaining to `ca` never gets past
//!   the handshake (it sees a TLS alert, not a gRPC status);
//! - a handshake that stalls cannot hold the accept loop: each runs in its own task, bounded.
//!
//! Never: fall back to plaintext on a TLS listener.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for changes (SIGHUP reloads at once).
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Accepted connections waiting for tonic.
const ACCEPT_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.into(), message: format!("not PEM certificates: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.into(), message: "holds no certificate".into() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::Pem { path: path.into(), message: format!("no PEM private key: {e}") })
}

/// The CA certificates in `path`, as a root store.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|e| TlsError::Pem { path: path.into(), message: format!("not a CA certificate: {e}") })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration from the settings' files.
fn server_config(s: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let (Some(cert), Some(key_path)) = (&s.cert, &s.key) else {
        return Err(TlsError::Config("tls.cert and tls.key are required".into()));
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &s.ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let verifier = if s.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The listener's TLS: the current configuration, swapped on reload.
#[derive(Debug)]
pub struct ServerTls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the files; fails (for the broker to refuse to start) if any is missing or bad.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, TlsError> {
        let config = server_config(settings)?;
        Ok(Arc::new(Self { settings: settings.clone(), current: RwLock::new(Arc::new(config)) }))
    }

    /// Loads the files again and swaps the configuration in; a failure keeps the old one.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.settings)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }

    fn files(&self) -> Vec<PathBuf> {
        [&self.settings.cert, &self.settings.key, &self.settings.ca].into_iter().flatten().cloned().collect()
    }

    /// Reloads on SIGHUP and when a file's modification time changes, until `shutdown`.
    pub fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tokio::spawn(async move {
            let stamp = |tls: &Self| -> Vec<Option<SystemTime>> {
                tls.files().iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
            };
            let mut seen = stamp(&self);
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let why = tokio::select! {
                    _ = hangup => "SIGHUP",
                    () = tokio::time::sleep(WATCH_INTERVAL) => {
                        let now = stamp(&self);
                        if now == seen { continue }
                        seen = now;
                        "a file changed"
                    }
                    _ = shutdown.changed() => return,
                };
                match self.reload() {
                    Ok(()) => tracing::info!(why, "TLS certificates reloaded"),
                    Err(e) => tracing::error!(why, error = %e, "TLS reload failed; keeping the previous certificates"),
                }
            }
        });
    }

    /// Accepts connections on `listener` and hands tonic the ones whose handshake succeeded.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return; // the server stopped
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = self.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// TLS for this broker's calls to its peers: trusts `ca`, presents its own certificate.
pub fn peer_client_config(s: &TlsSettings) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let (Some(cert), Some(key), Some(ca)) = (&s.cert, &s.key, &s.ca) else {
        return Err(TlsError::Config("calls to peers over TLS need tls.cert, tls.key and tls.ca".into()));
    };
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
        .identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?)))
}
