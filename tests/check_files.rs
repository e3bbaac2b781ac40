//! `wsgate check`, `run` and reload load every file the config names (issue
//! 13 item 4, SPEC "Hardening rules"): TLS cert and key (readable,
//! parseable, belonging together), `auth.jwt_public_key`, a backend's `ca`,
//! `admin.token_file`. Through the real binary: exit code 2 and a message
//! naming the key, its line and the file problem. Every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::binary::check;
use common::named::TestBackend;
use common::*;
use rcgen::{CertificateParams, KeyPair};
use tokio::io::AsyncBufReadExt;

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A fresh directory for one test's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!(
            "wsgate-check-files-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
    fn write(&self, name: &str, text: &str) -> String {
        std::fs::write(self.0.join(name), text).unwrap();
        self.path(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed `localhost` certificate and its key, as PEM.
fn cert_and_key() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

const HEAD: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                    [health]\nhttp_path = \"\"\nws_path = \"\"\n";

fn backend(url: &str) -> String {
    format!("[[backends]]\nname = \"b1\"\nurl = \"{url}\"\n")
}

/// The 1-based line of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}

fn assert_refused(dir: &Dir, text: &str, key: &str, key_line: &str, problem: &str) {
    let file = dir.write("gateway.toml", text);
    let (code, out) = check(Path::new(&file));
    let line = line_of(text, key_line);
    let want = format!("config key `{key}` (line {line}): ");
    assert_eq!(code, 2, "check must fail with 2: {out}\n{text}");
    assert!(out.contains(&want), "expected {want:?} in: {out}");
    assert!(out.contains(problem), "expected {problem:?} in: {out}");
}

#[test]
fn check_reads_the_tls_cert_and_key_and_that_they_belong_together() {
    let dir = Dir::new();
    let (cert, key) = cert_and_key();
    let (_, other_key) = cert_and_key();
    let cert_path = dir.write("cert.pem", &cert);
    let key_path = dir.write("key.pem", &key);
    let other_key_path = dir.write("other-key.pem", &other_key);
    let garbage = dir.write("garbage.pem", "not a certificate\n");
    let missing = dir.path("missing.pem");
    let tls = |c: &str, k: &str| {
        format!(
            "{HEAD}[server.tls]\ncert = \"{c}\"\nkey = \"{k}\"\n{}",
            backend("ws://127.0.0.1:9")
        )
    };
    // Missing cert: the message nginx -t would give, with key and line.
    assert_refused(
        &dir,
        &tls(&missing, &key_path),
        "server.tls.cert",
        "cert =",
        &format!("cannot read {missing}: No such file or directory"),
    );
    assert_refused(
        &dir,
        &tls(&cert_path, &missing),
        "server.tls.key",
        "key =",
        "No such file or directory",
    );
    assert_refused(
        &dir,
        &tls(&garbage, &key_path),
        "server.tls.cert",
        "cert =",
        "holds no PEM certificate",
    );
    assert_refused(
        &dir,
        &tls(&cert_path, &garbage),
        "server.tls.key",
        "key =",
        "no PEM private key",
    );
    assert_refused(
        &dir,
        &tls(&cert_path, &other_key_path),
        "server.tls.key",
        "key =",
        "do not belong together",
    );
    // The matching pair passes.
    let file = dir.write("gateway.toml", &tls(&cert_path, &key_path));
    let (code, out) = check(Path::new(&file));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn check_reads_the_jwt_public_key_the_backend_ca_and_the_admin_token_file() {
    let dir = Dir::new();
    let missing = dir.path("nope.pem");
    let garbage = dir.write("garbage.pem", "-----BEGIN NOTHING-----\n");
    let jwt = |k: &str| {
        format!(
            "{HEAD}[auth]\nmode = \"jwt\"\njwt_public_key = \"{k}\"\n{}",
            backend("ws://127.0.0.1:9")
        )
    };
    assert_refused(
        &dir,
        &jwt(&missing),
        "auth.jwt_public_key",
        "jwt_public_key",
        "No such file or directory",
    );
    assert_refused(
        &dir,
        &jwt(&garbage),
        "auth.jwt_public_key",
        "jwt_public_key",
        "neither an RSA nor an EC public key",
    );
    let good_key = dir.write("pub.pem", &KeyPair::generate().unwrap().public_key_pem());
    let (code, out) = check(Path::new(&dir.write("gateway.toml", &jwt(&good_key))));
    assert_eq!(code, 0, "{out}");

    // A backend's ca: the second backend's, so the line is that entry's.
    let ca = |c: &str| {
        format!(
            "{HEAD}{}[[backends]]\nname = \"b2\"\nurl = \"wss://127.0.0.1:9\"\nca = \"{c}\"\n",
            backend("ws://127.0.0.1:9")
        )
    };
    assert_refused(&dir, &ca(&missing), "backends.ca", "ca =", "No such file");
    assert_refused(
        &dir,
        &ca(&garbage),
        "backends.ca",
        "ca =",
        "no PEM certificate",
    );
    let (cert, _) = cert_and_key();
    let ca_ok = dir.write("ca.pem", &cert);
    let (code, out) = check(Path::new(&dir.write("gateway.toml", &ca(&ca_ok))));
    assert_eq!(code, 0, "{out}");

    let token = |t: &str| {
        format!(
            "{HEAD}{}[admin]\ntoken_file = \"{t}\"\n",
            backend("ws://127.0.0.1:9")
        )
        .replacen("[admin]\nlisten = \"127.0.0.1:0\"\n", "", 1)
    };
    assert_refused(
        &dir,
        &token(&missing),
        "admin.token_file",
        "token_file",
        "No such file",
    );
    let short = dir.write("short", "abc\n");
    assert_refused(
        &dir,
        &token(&short),
        "admin.token_file",
        "token_file",
        "at least 16",
    );
    let good = dir.write("token", "0123456789abcdef0123\n");
    let (code, out) = check(Path::new(&dir.write("gateway.toml", &token(&good))));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn run_with_a_missing_cert_exits_2_with_key_and_line() {
    let dir = Dir::new();
    let missing = dir.path("cert.pem");
    let text = format!(
        "{HEAD}[server.tls]\ncert = \"{missing}\"\nkey = \"{missing}\"\n{}",
        backend("ws://127.0.0.1:9")
    );
    let file = dir.write("gateway.toml", &text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "-c", &file])
        .output()
        .expect("run wsgate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = line_of(&text, "cert =");
    assert!(
        err.contains(&format!(
            "config key `server.tls.cert` (line {line}): cannot read"
        )),
        "{err}"
    );
}

/// A reload whose config names a file that cannot be read keeps the old
/// config serving and counts a failed reload.
#[tokio::test]
async fn sighup_with_a_bad_file_keeps_the_old_config_and_counts_an_error() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let dir = Dir::new();
    let good = format!("{HEAD}{}", backend(&format!("ws://{}", b1.addr)));
    let file = dir.write("gateway.toml", &good);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["run", "-c", &file])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgate");
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut admin = None::<SocketAddr>;
    tokio::time::timeout(Duration::from_secs(20), async {
        while admin.is_none() {
            let line = lines.next_line().await.unwrap().expect("wsgate exited");
            if let Some(a) = line.strip_prefix("wsgate admin on http://") {
                admin = Some(a.trim().parse().unwrap());
            }
        }
    })
    .await
    .expect("wsgate did not announce its admin address");
    let admin = admin.unwrap();

    // The new config adds b2 and names a TLS cert that does not exist.
    let missing = dir.path("missing-cert.pem");
    let bad = format!(
        "{HEAD}[server.tls]\ncert = \"{missing}\"\nkey = \"{missing}\"\n{}[[backends]]\nname = \"b2\"\nurl = \"ws://{}\"\n",
        backend(&format!("ws://{}", b1.addr)),
        b2.addr
    );
    dir.write("gateway.toml", &bad);
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    eventually("a failed reload is counted", || async {
        metric(admin, "wsgate_config_reloads_total{result=\"error\"}").await == 1.0
    })
    .await;
    assert_eq!(
        metric(admin, "wsgate_config_reloads_total{result=\"ok\"}").await,
        0.0
    );
    let (s, _, body) = http(admin, "GET", "/backends").await;
    assert_eq!(s, 200);
    assert!(
        body.contains("\"b1\"") && !body.contains("\"b2\""),
        "old config: {body}"
    );
    let _ = child.start_kill();
}
