//! The real `wsgate` binary under test: started on a config file, its
//! announced address read from stdout, its stderr (logs, the access log)
//! streamed line by line, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tokio::sync::mpsc;

/// A running gateway process; killed and reaped on drop.
pub struct Binary {
    pub child: Child,
    /// `host:port` of its first WebSocket listener.
    pub addr: String,
    /// Its stderr, one line at a time.
    pub stderr: mpsc::UnboundedReceiver<String>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// Runs `wsgate run -c config` with `RUST_LOG=rust_log` and waits for
    /// its "listening" line.
    pub async fn run(config: &Path, rust_log: &str) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["run", "-c", config.to_str().unwrap()])
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let addr = tokio::time::timeout(
            super::WAIT,
            tokio::task::spawn_blocking(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .find_map(|l| {
                        l.strip_prefix("wsgate listening on ws://")
                            .map(str::to_string)
                    })
                    .expect("listening line")
            }),
        )
        .await
        .expect("the gateway announced its address in time")
        .unwrap();
        Binary {
            child,
            addr,
            stderr: rx,
        }
    }
}

/// Runs `wsgate check -c FILE`; returns (exit code, stdout + stderr).
pub fn check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "-c"])
        .arg(config)
        .output()
        .expect("run wsgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
