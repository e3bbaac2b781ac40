//! rustls configurations from PEM files: the server side for `[server.tls]`
//! and the client side for wss:// backends, plus the one stream type both
//! sides of the gateway use.
//!
//! Reads files; never touches a socket. A reload calls these again, so new
//! certificates apply to new connections while live ones keep theirs.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::config::{BackendConfig, TlsConfig};

/// A gateway socket: plain TCP, or TLS over TCP (boxed: a TLS session is a
/// few KiB, and most deployments terminate TLS elsewhere or not at all).
pub type Stream = Either<TcpStream, Box<tokio_rustls::TlsStream<TcpStream>>>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCert { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, RSA or EC)")]
    NoKey { path: String },
    #[error(
        "certificate {cert} and key {key} do not belong together, or the key is unusable: {source}"
    )]
    Mismatch {
        cert: String,
        key: String,
        source: rustls::Error,
    },
    #[error("CA file {path}: {message}")]
    BadCa { path: String, message: String },
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_string(),
        source,
    })
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_string(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(PROVIDER())
}

/// Makes [`PROVIDER`] the process's default for code that builds rustls
/// configs without naming one (the Redis client of `[cluster]`): with two
/// providers compiled in, rustls will not guess. A no-op when one is set.
pub fn install_default_provider() {
    let _ = PROVIDER().install_default();
}

/// The crypto library behind rustls: aws-lc-rs (rustls' default) rather
/// than ring, because a reconnect storm is full TLS handshakes, and in the
/// profile of one ring's X25519 alone took a sixth of the gateway's CPU;
/// aws-lc's is about twice as fast (bench/RESULTS.md, TLS section).
const PROVIDER: fn() -> rustls::crypto::CryptoProvider =
    rustls::crypto::aws_lc_rs::default_provider;

/// The provider of the client-facing side, with the TLS 1.3 suites in the
/// order the server prefers: AES-128-GCM with SHA-256 first. A reconnect
/// storm is full handshakes, and their key schedule is a few dozen HMACs:
/// SHA-256 runs on the CPU's SHA extensions, while SHA-384 (the hash of
/// AES-256-GCM's suite, which rustls and OpenSSL clients list first) runs
/// a generic SHA-512 code path on this AMD CPU and took a tenth of the
/// gateway's CPU per handshake. Browsers list AES-128-GCM first already.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut p = PROVIDER();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384 => 1,
        TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    };
    // A stable sort: TLS 1.2 suites keep their order, after these.
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

/// TLS 1.2 and 1.3 only, ALPN `http/1.1` (WebSocket upgrades are HTTP/1.1).
pub fn server_config(c: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(&c.cert)?;
    let key_pem = read(&c.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
        path: c.key.clone(),
    })?;
    let mismatch = |source| TlsError::Mismatch {
        cert: c.cert.clone(),
        key: c.key.clone(),
        source,
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(mismatch)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The order of `server_provider`, whatever the client listed first.
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// Client config for a wss:// backend: its `ca` file, else the system roots
/// (falling back to the bundled webpki roots when the system has none), or
/// no verification at all with `tls_insecure_skip_verify` (tests only).
pub fn client_config(b: &BackendConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3");
    let mut cfg = if b.tls_insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAny(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if !b.ca.is_empty() {
            for cert in certs(&b.ca)? {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: b.ca.clone(),
                    message: e.to_string(),
                })?;
            }
        } else {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The SNI / verification name for a backend host.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_string()).ok()
}

mod insecure {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

    /// Accepts any server certificate (still checks handshake signatures).
    /// Only reachable through `tls_insecure_skip_verify = true`.
    #[derive(Debug)]
    pub struct AcceptAny(pub Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
