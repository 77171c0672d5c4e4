//! TLS for `Gateway::serve` (`[tls]`): rustls with the `ring` provider.
//!
//! The certificate and key live behind a resolver that the accept loop's
//! one `ServerConfig` asks at every handshake, so a reload (SIGHUP, or the
//! files' modification time or size changing) only affects new handshakes;
//! established connections keep their session. A reload that fails (a
//! missing file, a key that does not match the certificate) keeps the
//! previous certificate and logs why.
//!
//! ALPN offers `h2` (with `tls.http2`) and `http/1.1`; the accept loop
//! serves each connection with the protocol it negotiated.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;
use crate::metrics::Metrics;

/// ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The node's TLS state: the acceptor for new connections and what is
/// needed to reload its certificate.
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    pub(crate) acceptor: TlsAcceptor,
    /// The files' (modification time, size) when last loaded.
    stamps: Mutex<(Stamp, Stamp)>,
    watch_interval: Duration,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    // Follows symlinks: a Kubernetes secret's symlink swap counts.
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Hands the current certificate to every handshake.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads the PEM certificate chain and private key, and checks that they
/// belong together.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    CertifiedKey::from_der(certs, key_der, &provider()).map_err(|e| {
        format!(
            "tls.key {} with tls.cert {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

impl Tls {
    /// Loads the certificate and key; `Ok(None)` without `[tls]`.
    pub(crate) fn from_config(c: &TlsConfig) -> Result<Option<Arc<Tls>>, String> {
        let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
            return Ok(None);
        };
        let stamps = (stamp(cert), stamp(key));
        let certified = load(cert, key)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = if c.http2 {
            vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Some(Arc::new(Tls {
            cert: cert.clone(),
            key: key.clone(),
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            stamps: Mutex::new(stamps),
            watch_interval: c.watch_interval,
        })))
    }

    /// Re-reads the files now. On failure the current certificate stays.
    pub(crate) fn reload(&self, metrics: &Metrics) -> bool {
        let stamps = (stamp(&self.cert), stamp(&self.key));
        *self.stamps.lock() = stamps;
        match load(&self.cert, &self.key) {
            Ok(certified) => {
                *self.resolver.0.write() = Arc::new(certified);
                metrics.tls_reloads.inc();
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                metrics.tls_reload_failures.inc();
                tracing::warn!(error = %e, "TLS certificate reload failed; keeping the current one");
                false
            }
        }
    }

    /// Reloads if either file's modification time or size changed since
    /// the last load. (A half-written pair fails to load and is retried at
    /// the next change.)
    pub(crate) fn reload_if_changed(&self, metrics: &Metrics) {
        let now = (stamp(&self.cert), stamp(&self.key));
        if *self.stamps.lock() != now {
            self.reload(metrics);
        }
    }

    /// Reloads on SIGHUP (`hup`, registered by the caller before the
    /// listener serves) and when the files change, until `stop`.
    pub(crate) async fn watch(
        self: Arc<Self>,
        metrics: Arc<Metrics>,
        mut hup: Option<Hangup>,
        stop: CancellationToken,
    ) {
        let interval = self.watch_interval;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = next_hangup(&mut hup) => {
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    self.reload(&metrics);
                }
                () = tokio::time::sleep(interval), if !interval.is_zero() => {
                    self.reload_if_changed(&metrics);
                }
            }
        }
    }
}

/// A SIGHUP listener (Unix).
#[cfg(unix)]
pub(crate) type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
pub(crate) type Hangup = std::convert::Infallible;

/// Registers for SIGHUP. Registering keeps the signal from terminating
/// the process from now on.
pub(crate) fn hangup() -> Option<Hangup> {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
            .ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn next_hangup(hup: &mut Option<Hangup>) {
    #[cfg(unix)]
    if let Some(s) = hup {
        if s.recv().await.is_some() {
            return;
        }
        *hup = None;
    }
    #[cfg(not(unix))]
    let _ = hup;
    std::future::pending().await
}
