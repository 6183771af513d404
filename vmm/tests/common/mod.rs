//! Harness for integration tests: spawn `lull-vmm`, talk to its console, wait for its exit.
//! Tests that need /dev/kvm are `#[ignore = "needs /dev/kvm..."]` (reported as skipped); run
//! with `--ignored` they fail, saying why, when KVM is unusable or hidden (`LULL_NO_KVM=1`), or,
//! for real-kernel tests, when `LULL_KERNEL` is missing.
//!
//! Nothing here waits on a guest forever: every wait has a timeout, every spawned `lull-vmm`
//! has a watchdog that kills it at its deadline ([`DEFAULT_DEADLINE`], or
//! [`Vmm::spawn_with_deadline`]; `LULL_TEST_DEADLINE_S` overrides the default), client
//! commands are killed after [`CLIENT_TIMEOUT`], and API sockets have read/write timeouts. A
//! test whose VMM was killed so fails with the console and stderr so far.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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

/// Reports `test` as skipped for `reason` (see [`lull_vmm::testing::skip`]). The caller returns.
pub fn skip(test: &str, reason: &str) {
    lull_vmm::testing::skip(test, reason);
}

/// Runs `command` at the Lull shell on `vmm`'s console and returns what it printed, up to and
/// including the next prompt.
pub fn shell(vmm: &mut Vmm, command: &str, timeout: Duration) -> String {
    let from = vmm.output().len();
    vmm.send(format!("{command}\r").as_bytes());
    let end = vmm.wait_for_from(from, "lull> ", timeout);
    vmm.output()[from..end].to_string()
}

/// SHA-256 of `data` in lower-case hex, as the guest's `blk sum` and `nc` print it.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A fresh scratch directory for one test, removed when the test ends, unless it failed:
/// then it stays for a look, and its path is printed.
pub fn scratch(test: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(&format!("lull-vmm-it-{test}-"))
            .tempdir()
            .unwrap(),
    )
}

/// See [`scratch`].
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("scratch directory kept: {}", self.0.path().display());
        }
    }
}

/// Writes the VMCALL test guest into `dir`.
pub fn vmcall_guest(dir: &Path) -> PathBuf {
    let path = dir.join("vmcall-guest.elf");
    std::fs::write(&path, lull_vmm::test_guest::vmcall_guest_elf()).unwrap();
    path
}

/// Writes the virtio-blk test guest into `dir`.
pub fn virtio_blk_guest(dir: &Path) -> PathBuf {
    let path = dir.join("virtio-blk-guest.elf");
    std::fs::write(&path, lull_vmm::test_guest::virtio_blk_guest_elf()).unwrap();
    path
}

/// Writes the built-in test guest into `dir`.
pub fn test_guest(dir: &Path) -> PathBuf {
    let path = dir.join("test-guest.elf");
    std::fs::write(&path, lull_vmm::test_guest::pvh_elf()).unwrap();
    path
}

/// How long a spawned lull-vmm may live before the watchdog kills it, unless the test says
/// otherwise: longer than any test's own steps (the slowest, the Lull kernel's megabyte command
/// line, takes ~200-400 s here), so it only ends runs that would otherwise hang.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(900);
/// How long a client command (`lull-vmm snapshot|pause|…`, or a `restore` expected to fail)
/// may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Read/write timeout on raw API sockets.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// [`DEFAULT_DEADLINE`], or `LULL_TEST_DEADLINE_S` seconds.
pub fn default_deadline() -> Duration {
    std::env::var("LULL_TEST_DEADLINE_S")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .map_or(DEFAULT_DEADLINE, Duration::from_secs)
}

/// A running lull-vmm with its console captured.
pub struct Vmm {
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    errors: Arc<Mutex<Vec<u8>>>,
    /// Set when the watchdog killed the process at its deadline.
    killed_by_watchdog: Arc<AtomicBool>,
    deadline: Duration,
    watchdog: Option<(Sender<()>, JoinHandle<()>)>,
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

/// Kills `child` when `deadline` passes, unless told to stop first (a message or a hang-up).
fn watchdog(
    child: Arc<Mutex<Child>>,
    deadline: Duration,
    fired: Arc<AtomicBool>,
) -> (Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        if stopped.recv_timeout(deadline) == Err(RecvTimeoutError::Timeout) {
            let mut child = child.lock().unwrap();
            if matches!(child.try_wait(), Ok(None)) {
                fired.store(true, Ordering::SeqCst);
                let _ = child.kill();
            }
        }
    });
    (stop, thread)
}

impl Vmm {
    /// Spawns lull-vmm with the default deadline.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_deadline(args, default_deadline())
    }

    /// Spawns lull-vmm; a watchdog kills it if it still runs after `deadline`.
    pub fn spawn_with_deadline(args: &[&str], deadline: Duration) -> Self {
        Self::spawn_with(args, &[], deadline)
    }

    /// Spawns lull-vmm with extra environment variables `env`; a watchdog kills it if it still
    /// runs after `deadline`.
    pub fn spawn_with(args: &[&str], env: &[(&str, &Path)], deadline: Duration) -> Self {
        let mut child = Command::new(BINARY)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning lull-vmm");
        let stdin = child.stdin.take();
        let output = capture(child.stdout.take().unwrap());
        let errors = capture(child.stderr.take().unwrap());
        let child = Arc::new(Mutex::new(child));
        let killed_by_watchdog = Arc::new(AtomicBool::new(false));
        let watchdog = watchdog(child.clone(), deadline, killed_by_watchdog.clone());
        Self {
            child,
            stdin,
            output,
            errors,
            killed_by_watchdog,
            deadline,
            watchdog: Some(watchdog),
        }
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    pub fn errors(&self) -> String {
        String::from_utf8_lossy(&self.errors.lock().unwrap()).into_owned()
    }

    /// Whether the watchdog killed the process at its deadline.
    pub fn killed_by_watchdog(&self) -> bool {
        self.killed_by_watchdog.load(Ordering::SeqCst)
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().unwrap()
    }

    /// Panics with `what`, the console and stderr so far, and why the process is gone if it
    /// is.
    fn fail(&self, what: &str) -> ! {
        let gone = match self.try_exit() {
            Some(_) if self.killed_by_watchdog() => format!(
                "\nlull-vmm was killed by the test watchdog after {:?}",
                self.deadline
            ),
            Some(status) => format!("\nlull-vmm exited: {status}"),
            None => String::new(),
        };
        panic!(
            "{what}{gone}\n--- console ---\n{}\n--- stderr ---\n{}",
            self.output(),
            self.errors()
        );
    }

    /// Waits until the console output (from `from` on) contains `needle`; returns the offset
    /// just past it. Panics with the output so far on timeout, or as soon as lull-vmm exits.
    pub fn wait_for_from(&self, from: usize, needle: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_exit().is_some();
            // Output read after the exit check: whatever the process wrote is in it (the
            // capture threads may lag by a moment, so look once more after an exit).
            if exited {
                std::thread::sleep(Duration::from_millis(100));
            }
            let output = self.output();
            if let Some(at) = output.get(from..).and_then(|tail| tail.find(needle)) {
                return from + at + needle.len();
            }
            if exited {
                self.fail(&format!("lull-vmm is gone while waiting for {needle:?}"));
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for {needle:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> usize {
        self.wait_for_from(0, needle, timeout)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if stdin.write_all(bytes).and_then(|()| stdin.flush()).is_err() {
            self.fail("cannot write to lull-vmm's console");
        }
    }

    /// Waits for the process to exit; kills it and panics after `timeout`. A kill by the
    /// watchdog is a failure too.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                if self.killed_by_watchdog() {
                    self.fail("lull-vmm did not exit by itself");
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.lock().unwrap().kill();
                self.fail(&format!("lull-vmm did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.kill();
        if let Some((stop, thread)) = self.watchdog.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// `lull-vmm receive --listen URL`, once it says it is waiting for a migration (within
/// `within`; the test fails if it exits or is slower).
pub fn migration_destination(url: &str, within: Duration) -> Vmm {
    let vmm = Vmm::spawn(&["receive", "--listen", url]);
    let deadline = Instant::now() + within;
    while !vmm.errors().contains("waiting for a migration") {
        assert!(
            Instant::now() < deadline && vmm.try_exit().is_none(),
            "the destination did not start listening\n{}",
            vmm.errors()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    vmm
}

/// Runs `lull-vmm migrate --api SOCKET --to URL EXTRA`; returns (success, stdout, stderr).
pub fn migrate(socket: &Path, to: &str, extra: &[&str]) -> (bool, String, String) {
    let socket = socket.to_str().expect("a UTF-8 socket path");
    let mut args = vec!["migrate", "--api", socket, "--to", to];
    args.extend_from_slice(extra);
    client(&args)
}

/// Runs a `lull-vmm` client subcommand; returns (success, stdout, stderr). Panics, with its
/// output so far, if it takes longer than [`CLIENT_TIMEOUT`] (it is killed).
pub fn client(args: &[&str]) -> (bool, String, String) {
    client_with_timeout(args, CLIENT_TIMEOUT)
}

/// [`client`] with its own timeout.
pub fn client_with_timeout(args: &[&str], timeout: Duration) -> (bool, String, String) {
    let mut child = Command::new(BINARY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running lull-vmm client");
    let output = capture(child.stdout.take().unwrap());
    let errors = capture(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "lull-vmm {args:?} did not finish within {timeout:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&output.lock().unwrap()),
                String::from_utf8_lossy(&errors.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes close at exit; give the capture threads a moment to read the rest.
    let settle = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&output) + Arc::strong_count(&errors) > 2 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(2));
    }
    let text = |buffer: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
    };
    (status.success(), text(&output), text(&errors))
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

/// Sends raw bytes to the API socket and returns the raw answer (panics after
/// [`SOCKET_TIMEOUT`] without one).
pub fn raw_api(path: &Path, request: &[u8]) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(SOCKET_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Takes a snapshot through the CLI, leaving the VM paused; returns the report.
pub fn snapshot_paused(socket: &std::path::Path, directory: &std::path::Path) -> serde_json::Value {
    let (ok, report, errors) = client(&[
        "snapshot",
        "--api",
        socket.to_str().unwrap(),
        "--path",
        directory.to_str().unwrap(),
        "--leave-paused",
    ]);
    assert!(ok, "{errors}");
    serde_json::from_str(&report).unwrap()
}

/// Uptime seconds from the first `up N` after `from` in `output` (the shell's `uptime`).
pub fn uptime_seconds(output: &str, from: usize) -> f64 {
    let tail = &output[from..];
    let at = tail.find("up ").expect("uptime answer") + 3;
    tail[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("uptime number")
}

/// Boots Lull (128 MiB) to its shell, reads its uptime, snapshots it into `dir/snap` and
/// stops it. Returns the snapshot directory and the uptime before the snapshot.
pub fn lull_snapshot(kernel: &Path, dir: &Path) -> (PathBuf, f64) {
    let socket = dir.join("api.sock");
    let snapshot = dir.join("snap");
    let mut source = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--api-sock",
        socket.to_str().unwrap(),
    ]);
    let prompt = source.wait_for("lull> ", Duration::from_secs(120));
    source.send(b"uptime\r");
    let answered = source.wait_for_from(prompt, "lull> ", Duration::from_secs(120));
    let before = uptime_seconds(&source.output()[..answered], prompt);
    wait_for_socket(&socket, Duration::from_secs(120));
    snapshot_paused(&socket, &snapshot);
    source.kill();
    (snapshot, before)
}

/// Runs `ip` with `args`; Err with its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Deletes the namespace when the test ends, however it ends.
pub struct Namespace(pub String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.0]);
    }
}

/// Moves the calling thread into network namespace `name` (processes it spawns afterwards
/// start there too).
pub fn enter_namespace(name: &str) -> Result<(), String> {
    let file = std::fs::File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| format!("open /var/run/netns/{name}: {e}"))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))
}

/// `nc`'s pattern: byte i is i mod 251.
pub fn nc_pattern(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i % 251) as u8).collect()
}

/// A disk image whose sector n is filled with byte n+1 (first word of sector 0: 0x01010101).
pub fn disk(dir: &Path, sectors: usize) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    let content: Vec<u8> = (0..sectors * 512)
        .map(|i| ((i / 512) as u8).wrapping_add(1))
        .collect();
    std::fs::write(&path, content).unwrap();
    path
}

/// Sends one control command to a `--gpio ...,control=PATH` socket; returns the reply line.
pub fn gpio_control(path: &Path, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("control socket {}: {e}", path.display()));
    stream.set_read_timeout(Some(SOCKET_TIMEOUT)).unwrap();
    stream.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    reply.trim_end().to_string()
}
