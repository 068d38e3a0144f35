//! A real `redis-server` for the fleet tests: started on a loopback port
//! with no persistence unless asked, stopped by its PID on drop. A missing
//! `redis-server` or `redis-cli` fails the test (scripts/install-deps.sh
//! installs them).

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::{run_with_timeout, wait_until, TempDir};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on `ip`.
    pub port: u16,
    /// The address it listens on.
    pub ip: String,
    dir: TempDir,
}

impl RedisServer {
    /// Starts one on 127.0.0.1 and a free port; waits until it answers.
    #[track_caller]
    pub fn start() -> RedisServer {
        let port = super::process::free_port();
        RedisServer::start_at("127.0.0.1", port)
    }

    /// Starts one on `ip:port` (a namespace's address), data in a fresh
    /// directory, no snapshot and no append-only file.
    #[track_caller]
    pub fn start_at(ip: &str, port: u16) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port,
            ip: ip.to_owned(),
            dir: TempDir::new("redis"),
        };
        r.restart();
        r
    }

    /// `redis://IP:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://{}:{}/0", self.ip, self.port)
    }

    /// coturn's connection string for it.
    pub fn coturn_string(&self) -> String {
        format!(
            "ip={} port={} dbname=0 connect_timeout=5",
            self.ip, self.port
        )
    }

    /// Stops it (SIGKILL by PID: its data is gone, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                &self.ip,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
                &self.dir.path.display().to_string(),
                "--logfile",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (scripts/install-deps.sh installs it): {e}")
            });
        self.child = Some(child);
        let addr: SocketAddr = format!("{}:{}", self.ip, self.port).parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && self.cli(&["PING"]).trim() == "PONG"
            }),
            "redis-server on {addr} did not answer PING"
        );
    }

    /// `redis-cli -h IP -p PORT args...`, its stdout; panics when it fails.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", &self.ip, "-p", &self.port.to_string()])
            .args(args);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
        assert!(
            out.status.is_some_and(|s| s.success()),
            "redis-cli {args:?} failed (scripts/install-deps.sh installs it): {out:?}"
        );
        out.stdout
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
