//! Helpers shared by the integration tests: the back-end as a child process, its control
//! socket, skips reported as xtask expects.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BACKEND: &str = env!("CARGO_BIN_EXE_lull-gpio-backend");

/// Reports a test that cannot run here, as vmm/tests/common does: a `SKIPPED` line, and a
/// `TEST\tREASON` line appended to `LULL_SKIP_LOG` when xtask set it.
pub fn skip(test: &str, reason: &str) {
    let reason = reason.replace(['\n', '\t'], " ");
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("LULL_SKIP_LOG") {
        let line = format!("{test}\t{reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            panic!("{test}: cannot record the skip in LULL_SKIP_LOG: {error}");
        }
    }
}

/// A fresh directory for one test's sockets and log (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "lull-gpio-{test}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child if the test fails before it exits.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Guard {
    pub fn wait_timeout(&mut self, what: &str, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "{what} did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < end, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to a socket the back-end serves. The socket's file appears at bind(2), a moment
/// before listen(2), and a connection in between is refused: so a refusal is retried for up to
/// ten seconds. A refused connection was never accepted, so retrying takes nothing from the
/// back-end (a back-end without --keep-listening serves one front-end only).
pub fn connect(path: &Path) -> UnixStream {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("connecting to {}: {e}", path.display()),
        }
    }
}

pub fn backend(dir: &TempDir, extra: &[&str]) -> Guard {
    let child = Command::new(BACKEND)
        .arg("--socket")
        .arg(dir.join("gpio.sock"))
        .arg("--log")
        .arg(dir.join("backend.log"))
        .arg("--control")
        .arg(dir.join("control.sock"))
        .arg("--no-stdin")
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting lull-gpio-backend");
    let guard = Guard(child);
    let socket = dir.join("gpio.sock");
    let control = dir.join("control.sock");
    wait_for("the back-end's sockets", Duration::from_secs(10), || {
        socket.exists() && control.exists()
    });
    guard
}

pub fn log_of(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.join("backend.log")).unwrap_or_default()
}

/// One control connection: a command, its one-line reply.
pub struct Control(pub BufReader<UnixStream>);

impl Control {
    pub fn connect(path: &Path) -> Self {
        let stream = connect(path);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self(BufReader::new(stream))
    }

    pub fn send(&mut self, command: &str) -> String {
        writeln!(self.0.get_mut(), "{command}").unwrap();
        let mut reply = String::new();
        self.0.read_line(&mut reply).expect("control reply");
        reply.trim_end().to_string()
    }
}
