//! Running the kernel under QEMU and talking to its serial console from the host.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Which QEMU machine model to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Q35,
    Microvm,
}

impl Machine {
    pub fn parse(name: &str) -> Result<Machine, String> {
        match name {
            "q35" => Ok(Machine::Q35),
            "microvm" => Ok(Machine::Microvm),
            other => Err(format!(
                "unknown machine {other:?} (expected q35 or microvm)"
            )),
        }
    }

    /// The `-M` argument. microvm's ACPI is `auto` by default; Lull asks for it explicitly,
    /// since its power button is the ACPI Generic Event Device (more `-machine` options, as
    /// `rtc=off`, add to this).
    fn qemu_name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm,acpi=on",
        }
    }
}

/// A modern virtio-rng on a virtio-mmio transport (microvm; QEMU 7.2 makes legacy version-1
/// transports unless told otherwise, and Lull refuses those).
pub const VIRTIO_RNG_MMIO: &[&str] = &[
    "-global",
    "virtio-mmio.force-legacy=false",
    "-device",
    "virtio-rng-device",
];

/// A virtio-rng on virtio-pci (q35): QEMU's 1af4:1005 transitional function with the modern
/// capabilities and MSI-X, bound by Lull's `virtio-pci`.
pub const VIRTIO_RNG_PCI: &[&str] = &["-device", "virtio-rng-pci"];

/// The in-kernel suites' devices on q35: an AC'97 card and an HD Audio controller with an
/// `hda-duplex` codec (both on the `none` audio back-end), the
/// virtio-rng and a 16 MiB virtio-blk disk on QEMU's
/// `null-co` driver (reads give zeros, writes are dropped: no file to manage; data integrity
/// against real files is the end-to-end tests' job).
pub const KTEST_DEVICES_PCI: &[&str] = &[
    "-audiodev",
    "none,id=snd0",
    "-device",
    "AC97,audiodev=snd0",
    "-device",
    "ich9-intel-hda",
    "-device",
    "hda-duplex,audiodev=snd0",
    "-device",
    "virtio-rng-pci",
    "-drive",
    "driver=null-co,size=16M,read-zeroes=on,if=none,id=kd0",
    "-device",
    "virtio-blk-pci,drive=kd0",
];

/// Every virtio device Lull drives, on microvm: an idle guest with these bound (the NIC up with
/// its DHCP lease, a disk attached) must still take no timer interrupts.
pub const IDLE_DEVICES_MMIO: &[&str] = &[
    "-global",
    "virtio-mmio.force-legacy=false",
    "-device",
    "virtio-rng-device",
    "-netdev",
    "user,id=n0",
    "-device",
    "virtio-net-device,netdev=n0",
    "-drive",
    "driver=null-co,size=16M,read-zeroes=on,if=none,id=kd0",
    "-device",
    "virtio-blk-device,drive=kd0",
];

/// The same on microvm's virtio-mmio (the rng first: QEMU gives it the last transport slot,
/// which one suite also names on the command line).
pub const KTEST_DEVICES_MMIO: &[&str] = &[
    "-global",
    "virtio-mmio.force-legacy=false",
    "-device",
    "virtio-rng-device",
    "-drive",
    "driver=null-co,size=16M,read-zeroes=on,if=none,id=kd0",
    "-device",
    "virtio-blk-device,drive=kd0",
];

/// How to start QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub kernel: PathBuf,
    pub machine: Machine,
    pub memory_mib: u32,
    pub cpus: u32,
    pub append: String,
    pub extra: Vec<String>,
    /// `-accel tcg,thread=single`: one host thread runs every vCPU in turn (needed for exact
    /// instruction counts from a plugin's inline counter).
    pub single_thread: bool,
    /// QEMU's stderr (trace events, device debug prints) kept apart from the console, each
    /// line stamped with the host's wall clock when it was read ([`Guest::stderr_lines`]).
    pub separate_stderr: bool,
}

impl QemuConfig {
    pub fn new(kernel: &Path) -> Self {
        QemuConfig {
            kernel: kernel.to_path_buf(),
            machine: Machine::Q35,
            memory_mib: 256,
            cpus: 1,
            append: String::new(),
            extra: Vec::new(),
            single_thread: false,
            separate_stderr: false,
        }
    }

    /// The QEMU command line: TCG, serial on stdio, no display, isa-debug-exit for statuses,
    /// and `-no-reboot` so a triple fault ends QEMU instead of looping.
    pub fn command(&self) -> Command {
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-M", self.machine.qemu_name(), "-accel"])
            .arg(if self.single_thread {
                "tcg,thread=single"
            } else {
                "tcg"
            })
            .args([
                "-m",
                &self.memory_mib.to_string(),
                "-smp",
                &self.cpus.to_string(),
            ])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-kernel")
            .arg(&self.kernel);
        if !self.append.is_empty() {
            command.arg("-append").arg(&self.append);
        }
        command.args(&self.extra);
        command
    }
}

/// What QEMU's exit status means for a Lull guest.
pub fn describe_exit(code: i32) -> &'static str {
    match code {
        0 => "powered off",
        3 => "kernel panic",
        5 => "CPU exception",
        33 => "in-kernel tests passed",
        35 => "in-kernel tests failed",
        _ => "unexpected status",
    }
}

struct Shared {
    output: Mutex<Vec<u8>>,
    changed: Condvar,
    /// With `separate_stderr`: QEMU's stderr lines and when the host read each.
    stderr: Mutex<Vec<(std::time::SystemTime, String)>>,
    /// When the host read the guest's first output byte.
    first_output: Mutex<Option<Instant>>,
}

/// A running guest whose serial console the host reads and writes.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    /// Bytes of output already matched by `expect`.
    consumed: usize,
}

impl Guest {
    /// Starts QEMU with piped stdin/stdout.
    pub fn spawn(config: &QemuConfig) -> Result<Guest, String> {
        let mut child = config
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let shared = Arc::new(Shared {
            output: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            stderr: Mutex::new(Vec::new()),
            first_output: Mutex::new(None),
        });
        if config.separate_stderr {
            if let Some(stderr) = child.stderr.take() {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || pump_lines(stderr, &shared));
            }
        }
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || pump(stream, &shared));
        }
        Ok(Guest {
            stdin: child.stdin.take(),
            child,
            shared,
            consumed: 0,
        })
    }

    /// When the host read the guest's first output byte (`None` before any).
    pub fn first_output_at(&self) -> Option<Instant> {
        *self
            .shared
            .first_output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// QEMU's process id (to read its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// QEMU's stderr lines so far, with the host's wall-clock time each was read (only with
    /// [`QemuConfig::separate_stderr`]).
    pub fn stderr_lines(&self) -> Vec<(std::time::SystemTime, String)> {
        self.shared
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything the guest printed so far, with `\r` removed.
    pub fn output(&self) -> String {
        let output = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&output).replace('\r', "")
    }

    /// Waits until `needle` appears after the last match; returns the text up to and including
    /// it (from the previous match on).
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut output = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let text = String::from_utf8_lossy(&output[self.consumed..]).replace('\r', "");
            if let Some(position) = text.find(needle) {
                // Advance `consumed` by the raw bytes that produced `text[..end]`.
                let end = position + needle.len();
                let mut raw = 0;
                let mut cooked = 0;
                let bytes = &output[self.consumed..];
                while cooked < end && raw < bytes.len() {
                    if bytes[raw] != b'\r' {
                        cooked += 1;
                    }
                    raw += 1;
                }
                self.consumed += raw;
                return Ok(text[..end].to_string());
            }
            let now = Instant::now();
            if now >= deadline {
                let tail: String = text
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(format!(
                    "timed out after {timeout:?} waiting for {needle:?}; output was:\n{tail}"
                ));
            }
            output = self
                .shared
                .changed
                .wait_timeout(output, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends raw bytes to the serial port.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(bytes)
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("write to guest: {e}"))
    }

    /// Types a command at the prompt and returns what it printed before the next prompt.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<String, String> {
        self.send(format!("{command}\n").as_bytes())?;
        let text = self.expect("lull> ", timeout)?;
        // Drop the echoed command line and the trailing prompt.
        let body = text.strip_suffix("lull> ").unwrap_or(&text);
        let body = match body.find('\n') {
            Some(newline) if body[..newline].trim_end() == command => &body[newline + 1..],
            _ => body,
        };
        Ok(body.to_string())
    }

    /// Waits for QEMU to exit; returns its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status.code().unwrap_or(-1)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    return Err(format!(
                        "QEMU did not exit within {timeout:?}; output:\n{}",
                        self.output()
                    ));
                }
                Err(e) => return Err(format!("waiting for QEMU: {e}")),
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Reads QEMU's stderr line by line, stamping each with the wall clock as it arrives.
fn pump_lines(stream: impl Read, shared: &Shared) {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                shared
                    .stderr
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((std::time::SystemTime::now(), text));
            }
        }
    }
}

fn pump(mut stream: Box<dyn Read + Send>, shared: &Shared) {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let now = Instant::now();
                let mut output = shared.output.lock().unwrap_or_else(|e| e.into_inner());
                if output.is_empty() {
                    let mut first = shared
                        .first_output
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert(now);
                }
                output.extend_from_slice(&buffer[..n]);
                shared.changed.notify_all();
            }
        }
    }
    shared.changed.notify_all();
}
