//! A real `mosquitto` broker for tests, on a free 127.0.0.1 port, killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the broker.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Keep retained messages and sessions across restarts (saved on SIGTERM).
    pub persistence: bool,
    /// Extra lines appended to mosquitto.conf.
    pub extra_config: Vec<String>,
}

/// A running mosquitto. `stop()` / `restart()` keep the same port.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("mosquitto");
            if p.exists() {
                return p;
            }
        }
    }
    panic!("mosquitto is not installed: run scripts/setup.sh (Debian packages mosquitto, mosquitto-clients)");
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl Mosquitto {
    /// Starts a broker with anonymous access and no persistence.
    pub fn start() -> Self {
        Self::start_with(MosquittoOptions::default())
    }

    pub fn start_with(opts: MosquittoOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut conf = vec![
            format!("listener {port} 127.0.0.1"),
            "allow_anonymous true".into(),
            // Stay root when started as root, so the temp dir stays writable.
            "user root".into(),
            "log_dest stderr".into(),
            "log_type error".into(),
            "log_type warning".into(),
            "max_queued_messages 100000".into(),
            // Without it mosquitto's sockets keep Nagle's algorithm, and a
            // small message (a PUBACK, a value) can wait ~40 ms for the
            // peer's delayed ACK: the latency benchmark's p99 swung between
            // 3 and 35 ms on that alone. Recommended for production too
            // (README, "MQTT").
            "set_tcp_nodelay true".into(),
        ];
        if opts.persistence {
            conf.push("persistence true".into());
            conf.push(format!("persistence_location {}/", dir.path().display()));
        } else {
            conf.push("persistence false".into());
        }
        conf.extend(opts.extra_config.iter().cloned());
        std::fs::write(dir.path().join("mosquitto.conf"), conf.join("\n") + "\n")
            .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({e}): run scripts/setup.sh"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "mosquitto exited ({status}) on port {}: {}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGTERM, so a persistent broker saves its state).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(c.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the broker (SIGKILL): nothing is saved, connections just die.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// What mosquitto logged (errors and warnings).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

/// SIGTERM without libc: `kill -TERM pid`.
fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
