//! Test certificates: self-signed ones made with `openssl req -x509`, and
//! a rustls client configuration that trusts exactly the ones pinned.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::{run_with_timeout, TempDir};

/// A self-signed certificate and key made with `openssl req -x509` in a
/// temporary directory (removed on drop).
pub struct TestCert {
    /// The directory holding `cert.pem` and `key.pem` (removed on drop).
    pub dir: TempDir,
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// The certificate's DER.
    pub der: Vec<u8>,
}

impl TestCert {
    /// Makes a certificate for CN=`cn` (SAN IP:127.0.0.1, DNS:localhost)
    /// in a fresh directory named after `name`. Panics (a failure, never
    /// a skip) when openssl is missing.
    pub fn generate(name: &str, cn: &str) -> TestCert {
        let dir = TempDir::new(&format!("cert-{name}"));
        let (cert, key) = make_cert_files(&dir.path, "cert.pem", "key.pem", cn);
        let der = cert_der(&cert);
        TestCert {
            dir,
            cert,
            key,
            der,
        }
    }

    /// `--cert FILE --pkey FILE` for turnd.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--cert".into(),
            self.cert.display().to_string(),
            "--pkey".into(),
            self.key.display().to_string(),
        ]
    }
}

/// Path of `openssl`; panics when it is not installed.
pub fn openssl_bin() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join("openssl");
        if p.is_file() {
            return p;
        }
    }
    panic!("openssl not found: these tests make their certificates with `openssl req -x509` (apt-get install openssl)");
}

/// The subjectAltName of [`TestCert`]s and [`make_cert_files`].
pub const SAN_LOOPBACK: &str = "IP:127.0.0.1,DNS:localhost";

/// Writes `dir/cert_name` and `dir/key_name` (self-signed, RSA 2048, one
/// day) for CN=`cn` with subjectAltName [`SAN_LOOPBACK`].
pub fn make_cert_files(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    cn: &str,
) -> (PathBuf, PathBuf) {
    make_cert_files_for(dir, cert_name, key_name, cn, SAN_LOOPBACK)
}

/// Like [`make_cert_files`] with subjectAltName `san` (openssl's syntax,
/// e.g. `IP:127.0.0.1`).
pub fn make_cert_files_for(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    cn: &str,
    san: &str,
) -> (PathBuf, PathBuf) {
    let cert = dir.join(cert_name);
    let key = dir.join(key_name);
    let subj = format!("/CN={cn}");
    let out = run_with_timeout(
        Command::new(openssl_bin()).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "1",
            "-subj",
            &subj,
            "-addext",
            &format!("subjectAltName={san}"),
        ]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.is_some_and(|s| s.success()) && cert.is_file() && key.is_file(),
        "openssl req -x509 failed: {out:?}"
    );
    (cert, key)
}

/// The DER of the first certificate in a PEM file.
pub fn cert_der(pem: &Path) -> Vec<u8> {
    let bytes = std::fs::read(pem).unwrap_or_else(|e| panic!("read {}: {e}", pem.display()));
    let first = rustls_pemfile::certs(&mut bytes.as_slice())
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", pem.display()))
        .expect("well-formed PEM");
    first.as_ref().to_vec()
}

/// Accepts exactly the pinned certificates (by DER), with real handshake
/// signature checks.
#[derive(Debug)]
struct PinnedCerts {
    pinned: Vec<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCerts {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_slice() == end_entity.as_ref())
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client config (ring) that trusts exactly the certificates in
/// `trusted` (DER), limited to `versions` (empty: TLS 1.2 and 1.3), and
/// offers ALPN `alpn` (none when empty). Session resumption is off.
pub fn tls_client_config(
    trusted: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = if versions.is_empty() {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        versions
    };
    let verifier = PinnedCerts {
        pinned: trusted.iter().map(|d| d.to_vec()).collect(),
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("ring supports these versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    // Every connection does a full handshake: a resumed session would
    // report the certificate of the session it resumes, not the one the
    // server holds now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}
