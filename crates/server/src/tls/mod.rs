//! TLS with rustls: a certificate from PEM files (re-read when asked, on SIGHUP, so a renewed
//! certificate takes effect without a restart) or a self-signed one made at start for local
//! use, and ALPN offering HTTP/2 then HTTP/1.1.
//!
//! Why HTTP/2 matters here: a browser opens at most six HTTP/1.1 connections per origin, all
//! tabs together, so the seventh live event stream waits for one of the six to close. Over
//! HTTP/2 every stream shares one connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

mod records;

pub(crate) use records::Sealer;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// A PEM certificate chain and its PEM private key.
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// A certificate for `localhost` and `127.0.0.1` made at start, its PEM written here so
    /// that clients can be told to trust it.
    SelfSigned {
        /// Where to write the certificate (PEM).
        cert_out: PathBuf,
    },
}

/// The server's TLS: what to present, reloadable in place.
pub struct Tls {
    source: CertificateSource,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

/// The certificate in use, swapped by [`Tls::reload`].
struct Current(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("source", &self.source).finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, TlsError> {
    if chain.is_empty() {
        return Err(TlsError("the certificate file holds no certificate".into()));
    }
    CertifiedKey::from_der(chain, key.clone_key(), &provider())
        .map_err(|e| TlsError(format!("the key does not fit the certificate: {e}")))
}

fn load(source: &CertificateSource) -> Result<CertifiedKey, TlsError> {
    match source {
        CertificateSource::Files { cert, key } => {
            let read = |path: &Path| {
                std::fs::read(path)
                    .map_err(|e| TlsError(format!("reading {}: {e}", path.display())))
            };
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError(format!("{}: {e}", cert.display())))?;
            let private = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| TlsError(format!("{}: {e}", key.display())))?;
            certified(chain, &private)
        }
        CertificateSource::SelfSigned { cert_out } => {
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
            let made = rcgen::generate_simple_self_signed(names)
                .map_err(|e| TlsError(format!("making a self-signed certificate: {e}")))?;
            if let Some(parent) = cert_out.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            std::fs::write(cert_out, made.cert.pem())
                .map_err(|e| TlsError(format!("writing {}: {e}", cert_out.display())))?;
            let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
                .map_err(|e| TlsError(format!("the generated key: {e}")))?;
            certified(vec![made.cert.der().clone()], &key)
        }
    }
}

impl Tls {
    /// Loads (or makes) the certificate and builds the acceptor, offering `h2` and
    /// `http/1.1` by ALPN.
    pub fn new(source: CertificateSource) -> Result<Self, TlsError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(load(&source)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // A subscription's records are sealed here once its request is read ([`Sealer`]).
        config.enable_secret_extraction = true;
        Ok(Tls { source, current, acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    /// Reads the certificate files again and presents them from the next handshake on. A
    /// self-signed certificate is kept (reloading it would only make another).
    pub fn reload(&self) -> Result<(), TlsError> {
        if matches!(self.source, CertificateSource::SelfSigned { .. }) {
            return Ok(());
        }
        let fresh = Arc::new(load(&self.source)?);
        *self.current.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Where the certificate comes from.
    pub fn source(&self) -> &CertificateSource {
        &self.source
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
