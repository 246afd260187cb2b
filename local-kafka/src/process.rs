//! Child processes the xtask starts (broker, registry, services): logs to files, health waits,
//! and a stop that is graceful first (SIGTERM), forceful after a grace period, and happens even
//! when the xtask unwinds from an error.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[derive(Debug)]
pub struct Service {
    pub name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Service {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("could not start {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The operating system's id of the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(&self.log) else {
            return String::new();
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails with the log's tail if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited() {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.tail(40)
            );
        }
        Ok(())
    }

    /// Waits until `GET http://{address}{path}` answers 200.
    pub fn wait_http_ok(
        &mut self,
        address: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if http_status(address, path) == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer GET {path} on {address} within {timeout:?}; last lines of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, waits up to `grace`, then kills.
    pub fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

/// The status code of a plain HTTP/1.0 GET, or None when nothing answers.
pub fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Fails clearly when something already listens on `port`.
pub fn ensure_port_free(port: u16, what: &str) -> anyhow::Result<()> {
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!("port {port} (for {what}) is already in use; is another stack running?");
    }
    Ok(())
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
