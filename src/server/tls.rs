//! TLS for `turns:` listeners: rustls through tokio-rustls, with a
//! certificate that is reloaded on SIGHUP without dropping connections.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

pub use crate::stun::ALPN_STUN_TURN;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file holds no usable PEM item.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: String,
    },
}

/// Loads a PEM certificate chain (`cert`) and private key (`pkey`).
///
/// # Errors
/// [`TlsError`] naming the file and what is wrong with it.
pub fn load_certified_key(cert: &Path, pkey: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(pkey)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            what: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_owned(),
            what: "no CERTIFICATE found".into(),
        });
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: pkey.to_owned(),
            what: format!("bad PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: pkey.to_owned(),
            what: "no PRIVATE KEY found".into(),
        })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Pem {
            path: pkey.to_owned(),
            what: format!("unsupported key: {e}"),
        })?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The certificate in force, swapped by [`ReloadableCert::reload`].
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert: PathBuf,
    pkey: PathBuf,
}

impl ReloadableCert {
    /// Loads `cert` and `pkey`.
    ///
    /// # Errors
    /// [`TlsError`] when either cannot be loaded.
    pub fn load(cert: &Path, pkey: &Path) -> Result<Arc<Self>, TlsError> {
        let key = load_certified_key(cert, pkey)?;
        Ok(Arc::new(ReloadableCert {
            current: RwLock::new(Arc::new(key)),
            cert: cert.to_owned(),
            pkey: pkey.to_owned(),
        }))
    }

    /// Re-reads the files; on error the old certificate stays in force.
    /// Connections already established keep their session.
    ///
    /// # Errors
    /// [`TlsError`] when the new files cannot be loaded.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert, &self.pkey)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A TLS acceptor (TLS 1.2 and 1.3, ALPN `stun.turn`) serving `cert`.
pub fn acceptor(cert: Arc<ReloadableCert>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
