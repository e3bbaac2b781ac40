//! TLS both ways: termination with rustls (ALPN http/1.1, X-Forwarded-Proto
//! https), certificates reloaded without dropping live connections, clear
//! startup errors, and wss:// backends verified against a `ca` file.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use wsgate::Config;

/// A throwaway CA and a `localhost` certificate it signed, as PEM files.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

static DIRS: AtomicU32 = AtomicU32::new(0);

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!(
        "wsgate-tls-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca.pem(),
    }
}

impl Pki {
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(ca_pem) {
        roots.add(c).unwrap();
    }
    tls_connector(roots)
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

fn tls_config(backend: std::net::SocketAddr, pki: &Pki) -> String {
    config_for(
        &[backend],
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.path("cert.pem"),
            pki.path("key.pem")
        ),
    )
}

/// Opens wss:// to the gateway trusting `ca_pem`; returns the client.
async fn wss_connect(addr: std::net::SocketAddr, ca_pem: &str) -> Result<WsTls, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(ca_pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

type WsTls = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn echo(ws: &mut WsTls, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn tls_termination_and_certificate_reload_keep_live_connections() {
    let (b, seen) = echo_backend().await;
    let first = pki();
    let g = gateway(&tls_config(b, &first)).await;
    let mut old = wss_connect(g.addr, &first.ca_pem).await.unwrap();
    echo(&mut old, "over tls").await;
    assert!(
        seen.lock().unwrap().requests[0]
            .1
            .iter()
            .any(|(k, v)| k == "x-forwarded-proto" && v == "https")
    );
    // New certificate from a new CA in the same files; reload.
    let second = pki();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(second.path(f), first.path(f)).unwrap();
    }
    g.gw.reload(Config::parse(&tls_config(b, &first)).unwrap())
        .unwrap();
    let mut new = wss_connect(g.addr, &second.ca_pem)
        .await
        .expect("new connections get the new certificate");
    echo(&mut new, "new cert").await;
    assert!(
        wss_connect(g.addr, &first.ca_pem).await.is_err(),
        "the old certificate is gone for new connections"
    );
    echo(&mut old, "still here").await;
}

#[tokio::test]
async fn missing_or_mismatched_key_is_a_clear_startup_error() {
    let (b, _) = echo_backend().await;
    let p = pki();
    let other = pki();
    let start = |text: String| async move {
        let mut config = Config::parse(&text).unwrap();
        config.server.listen = common::loopback_port_0();
        config.admin.listen = wsgate::config::Listen(Vec::new());
        wsgate::Gateway::bind(config, common::SHARDS)
            .await
            .err()
            .map(|e| e.to_string())
    };
    let missing = config_for(
        &[b],
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"/nonexistent/key.pem\"\n",
            p.path("cert.pem")
        ),
    );
    let e = start(missing).await.expect("missing key must fail");
    assert!(e.contains("/nonexistent/key.pem"), "{e}");
    let mismatched = config_for(
        &[b],
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            p.path("cert.pem"),
            other.path("key.pem")
        ),
    );
    let e = start(mismatched).await.expect("mismatched key must fail");
    assert!(e.contains("do not belong together"), "{e}");
}

/// A wss:// echo backend with a certificate from `pki`.
async fn tls_backend(pki: &Pki) -> std::net::SocketAddr {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let certs = rustls_pemfile_certs(&std::fs::read_to_string(pki.path("cert.pem")).unwrap());
    let key = PrivateKeyDer::from_pem_file(pki.path("key.pem")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_backend_verified_against_ca_file() {
    let p = pki();
    let b = tls_backend(&p).await;
    let url = format!("wss://localhost:{}", b.port());
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[health]\nhttp_path = \"\"\nws_path = \"\"\n[routing]\nconnect_retries = 0\n";
    // With the CA file: works.
    let g = gateway(&format!(
        "{base}[[backends]]\nname = \"b1\"\nurl = \"{url}\"\nca = \"{}\"\n",
        p.path("ca.pem")
    ))
    .await;
    let mut c = connect(&g.url("/")).await;
    c.send(Message::text("via wss")).await.unwrap();
    assert_eq!(next_msg(&mut c).await, Some(Message::text("via wss")));
    // Against the system roots the private CA is not trusted: 502.
    let g = gateway(&format!(
        "{base}[[backends]]\nname = \"b1\"\nurl = \"{url}\"\n"
    ))
    .await;
    assert_eq!(raw_request(g.addr, "/", "").await.0, 502);
    // The explicit opt-out (tests only) skips verification.
    let g = gateway(&format!(
        "{base}[[backends]]\nname = \"b1\"\nurl = \"{url}\"\ntls_insecure_skip_verify = true\n"
    ))
    .await;
    assert_eq!(raw_request(g.addr, "/", "").await.0, 101);
}

/// The gateway picks TLS 1.3's AES-128-GCM-SHA256 even when the client
/// lists AES-256-GCM-SHA384 first (rustls and OpenSSL clients do): its key
/// schedule's SHA-256 runs on the CPU's SHA extensions (src/tls.rs). A
/// client offering only AES-256 still gets it.
#[tokio::test]
async fn the_server_prefers_aes_128_gcm_and_accepts_the_others() {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let (b, _) = echo_backend().await;
    let p = pki();
    let g = gateway(&tls_config(b, &p)).await;
    let first = |c: &rustls::ClientConnection| c.negotiated_cipher_suite().map(|s| s.suite());

    let ring = rustls::crypto::ring::default_provider();
    assert_eq!(ring.cipher_suites[0].suite(), TLS13_AES_256_GCM_SHA384);
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let tls = connector(&p.ca_pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(first(tls.get_ref().1), Some(TLS13_AES_128_GCM_SHA256));

    let mut only_256 = ring;
    only_256
        .cipher_suites
        .retain(|s| s.suite() == TLS13_AES_256_GCM_SHA384);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(&p.ca_pem) {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(only_256))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(first(tls.get_ref().1), Some(TLS13_AES_256_GCM_SHA384));
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls)
        .await
        .unwrap();
    ws.send(Message::text("aes-256")).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(matches!(reply, Some(Ok(Message::Text(t))) if t.as_str() == "aes-256"));
}
