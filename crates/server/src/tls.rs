//! TLS on the listener (`[server.tls]`): a certificate and key from PEM files, reloaded when the
//! files change without touching connections already open, and optionally client certificates
//! signed by a CA of the operator's, which the admin API can require.
//!
//! rustls with the ring provider, the same as the upstream client: no OpenSSL in the process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Clients may present a certificate signed by a CA in this PEM file; a presented one that
    /// does not verify fails the handshake. `admin.require_client_cert` makes the admin API
    /// insist on one.
    pub client_ca_file: Option<PathBuf>,
}

/// The listener's TLS state: the config in force, swapped whole when the files change.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamps: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("config", &self.config).finish()
    }
}

impl Tls {
    /// Read and check the files now: a config that names unreadable or mismatched ones fails
    /// to load, naming the field.
    pub fn load(config: &TlsConfig) -> Result<Self, String> {
        let built = build(config)?;
        Ok(Self {
            stamps: std::sync::Mutex::new(stamps(config)),
            config: config.clone(),
            current: RwLock::new(Arc::new(built)),
        })
    }

    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// The acceptor for the next handshake.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(current)
    }

    /// Whether client certificates are asked for.
    pub fn verifies_clients(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// Check the files every `every`; when one changed, load them all and swap the config in
    /// (a bad set is refused with a log line and the running one stays). Handshakes after the
    /// swap use the new certificate; connections already open keep theirs.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamps(&self.config);
            {
                let mut seen = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
                if *seen == now {
                    continue;
                }
                *seen = now;
            }
            match build(&self.config) {
                Ok(c) => {
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(c);
                    tracing::info!(cert = %self.config.cert_file.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS files changed but cannot be used; the running certificate stays")
                }
            }
        }
    }
}

fn stamps(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    [
        Some(&config.cert_file),
        Some(&config.key_file),
        config.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

fn certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("server.tls.{field}: cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls.{field}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.{field}: {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn build(config: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let chain = certs(&config.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        format!(
            "server.tls.key_file: cannot read a private key from {}: {e}",
            config.key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server.tls: {e}"))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "client_ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("server.tls.client_ca_file: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("server.tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("server.tls.key_file: does not match cert_file: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}
