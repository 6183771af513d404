//! Harness for integration tests: spawn `lull-vmm`, talk to its console, wait for its exit.
//! Tests that need /dev/kvm are `#[ignore = "needs /dev/kvm..."]` (reported as skipped); run
//! with `--ignored` they fail, saying why, when KVM is unusable or hidden (`LULL_NO_KVM=1`), or,
//! for real-kernel tests, when `LULL_KERNEL` is missing.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use lull_vmm::testing::require_kvm;

pub const BINARY: &str = env!("CARGO_BIN_EXE_lull-vmm");

/// The real kernel's ELF from `LULL_KERNEL` (set by `cargo xtask test`); panics, saying why,
/// without it or without KVM.
pub fn lull_kernel(test: &str) -> PathBuf {
    require_kvm(test);
    match std::env::var_os("LULL_KERNEL") {
        Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
        Some(path) => panic!(
            "{test}: LULL_KERNEL={} is not a file",
            Path::new(&path).display()
        ),
        None => panic!("{test}: LULL_KERNEL is not set (cargo xtask test sets it)"),
    }
}

/// A fresh scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lull-vmm-it-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the built-in test guest into `dir`.
pub fn test_guest(dir: &Path) -> PathBuf {
    let path = dir.join("test-guest.elf");
    std::fs::write(&path, lull_vmm::test_guest::pvh_elf()).unwrap();
    path
}

/// A running lull-vmm with its console captured.
pub struct Vmm {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    errors: Arc<Mutex<Vec<u8>>>,
}

fn capture(mut source: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = source.read(&mut chunk) {
            if read == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..read]);
        }
    });
    buffer
}

impl Vmm {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BINARY)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning lull-vmm");
        let stdin = child.stdin.take();
        let output = capture(child.stdout.take().unwrap());
        let errors = capture(child.stderr.take().unwrap());
        Self {
            child,
            stdin,
            output,
            errors,
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    pub fn errors(&self) -> String {
        String::from_utf8_lossy(&self.errors.lock().unwrap()).into_owned()
    }

    /// Waits until the console output (from `from` on) contains `needle`; returns the offset
    /// just past it. Panics with the output so far on timeout.
    pub fn wait_for_from(&self, from: usize, needle: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if let Some(at) = output.get(from..).and_then(|tail| tail.find(needle)) {
                return from + at + needle.len();
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {needle:?}\n--- console ---\n{output}\n--- stderr ---\n{}", self.errors());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> usize {
        self.wait_for_from(0, needle, timeout)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "lull-vmm did not exit\n--- console ---\n{}\n--- stderr ---\n{}",
                    self.output(),
                    self.errors()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a `lull-vmm` client subcommand; returns (success, stdout, stderr).
pub fn client(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .output()
        .expect("running lull-vmm client");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until the API socket accepts connections.
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "API socket {} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends raw bytes to the API socket and returns the raw answer.
pub fn raw_api(path: &Path, request: &[u8]) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
    stream.write_all(request).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
