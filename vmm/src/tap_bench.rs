//! `lull-vmm bench --tap --kernel ELF [--bytes N]`: the Lull guest's TCP over lull-vmm's
//! virtio-net on a TAP device, against host sockets, in a network namespace the bench makes
//! (`ip netns add`, a TAP `lt0` at 10.99.2.1/24; the guest is 10.99.2.2 by `ip=`).
//!
//! Measured from the host: guest → host from the host sink's first byte to its last, host →
//! guest from the host's connect until the guest's console says it has everything; each way
//! once with the guest's `nc` hashing (SHA-256 compared with the host's) and once with
//! `--no-hash`; then 10 pings to the host, as the guest's `ping` reports them. The namespace
//! (and the TAP in it) is deleted when the bench ends, however it ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bench::{spawn_with_stdin, wait_for, BenchError, Spawned};
use crate::cli::BenchOptions;

const HOST: &str = "10.99.2.1";
const GUEST: &str = "10.99.2.2";
/// How long one transfer may take (the guest runs in KVM's instruction emulator here).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// `ip ARGS`, its stderr as the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// The bench's network namespace, deleted on drop.
struct Namespace(String);

impl Namespace {
    /// Makes the namespace with a TAP `lt0` at 10.99.2.1/24, up, and moves this thread into it
    /// (the VMM it spawns and the sockets it opens live there).
    fn create() -> Result<Namespace, String> {
        let name = format!("lullbench{}", std::process::id());
        ip(&["netns", "add", &name])
            .map_err(|e| format!("cannot create a network namespace (root needed): {e}"))?;
        let namespace = Namespace(name.clone());
        ip(&["-n", &name, "tuntap", "add", "dev", "lt0", "mode", "tap"])
            .map_err(|e| format!("cannot create a TAP device: {e}"))?;
        for args in [
            &["-n", &name, "addr", "add", "10.99.2.1/24", "dev", "lt0"][..],
            &["-n", &name, "link", "set", "lt0", "up"],
            &["-n", &name, "link", "set", "lo", "up"],
        ] {
            ip(args)?;
        }
        let file = std::fs::File::open(format!("/var/run/netns/{name}"))
            .map_err(|e| format!("open /var/run/netns/{name}: {e}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns: {e}"))?;
        Ok(namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.0]);
    }
}

/// `nc`'s pattern: byte i is i mod 251.
fn pattern(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i % 251) as u8).collect()
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn kib_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / 1024.0 / seconds.max(1e-9)
}

/// Types `command` at the guest's console.
fn type_line(guest: &mut Spawned, command: &str) -> Result<(), BenchError> {
    let stdin = guest
        .child
        .stdin
        .as_mut()
        .ok_or_else(|| BenchError::Answer("the guest's console is closed".into()))?;
    stdin.write_all(format!("{command}\r").as_bytes())?;
    stdin.flush()?;
    Ok(())
}

/// Everything the console prints until `needle` (inclusive).
fn read_until(guest: &Spawned, needle: &str, timeout: Duration) -> Result<String, BenchError> {
    let deadline = Instant::now() + timeout;
    let mut seen = String::new();
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, text) = guest
            .stdout_lines
            .recv_timeout(left)
            .map_err(|_| BenchError::Answer(format!("no {needle:?} from the guest: {seen}")))?;
        seen.push_str(&text);
    }
    Ok(seen)
}

/// One transfer each way: (guest → host KiB/s, host → guest KiB/s).
fn transfers(guest: &mut Spawned, bytes: usize, hash: bool) -> Result<(f64, f64), BenchError> {
    let flag = if hash { "" } else { " --no-hash" };
    let expected = hex(&Sha256::digest(pattern(bytes)));
    // Guest to host.
    let listener = TcpListener::bind((HOST, 5001))?;
    listener.set_nonblocking(true)?;
    type_line(guest, &format!("nc{flag} -s {bytes} {HOST} 5001"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let said = read_until(guest, "lull> ", Duration::from_secs(5)).unwrap_or_default();
                return Err(BenchError::Answer(format!(
                    "the guest's nc never connected ({e}): {said}"
                )));
            }
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TRANSFER_TIMEOUT))?;
    let mut data = Vec::with_capacity(bytes);
    let mut chunk = vec![0u8; 1 << 16];
    let mut first = None;
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        data.extend_from_slice(&chunk[..n]);
    }
    let out_s = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let said = read_until(guest, "lull> ", TRANSFER_TIMEOUT)?;
    if data.len() != bytes || data != pattern(bytes) {
        return Err(BenchError::Answer(format!(
            "the host got {} of {bytes} bytes, or other bytes than the pattern",
            data.len()
        )));
    }
    if hash && !said.contains(&format!("sha256 {expected}")) {
        return Err(BenchError::Answer(format!(
            "the guest's SHA-256 differs from the host's {expected}: {said}"
        )));
    }
    // Host to guest.
    type_line(guest, &format!("nc{flag} -l 5002"))?;
    read_until(guest, "listening on port 5002", Duration::from_secs(60))?;
    let started = Instant::now();
    let mut stream = TcpStream::connect((GUEST, 5002))?;
    stream.write_all(&pattern(bytes))?;
    drop(stream);
    let said = read_until(guest, "lull> ", TRANSFER_TIMEOUT)?;
    let in_s = started.elapsed().as_secs_f64();
    if !said.contains(&format!("received {bytes} bytes")) {
        return Err(BenchError::Answer(format!(
            "the guest did not receive {bytes} bytes: {said}"
        )));
    }
    if hash && !said.contains(&format!("sha256 {expected}")) {
        return Err(BenchError::Answer(format!(
            "the guest's SHA-256 differs from the host's {expected}: {said}"
        )));
    }
    Ok((kib_s(bytes, out_s), kib_s(bytes, in_s)))
}

/// The `rtt min/avg/max = a/b/c ms` figures of a ping summary.
fn ping_rtt(text: &str) -> Option<(f64, f64, f64)> {
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let figures = line.split('=').nth(1)?.trim().trim_end_matches("ms").trim();
    let mut parts = figures.split('/').map(|f| f.trim().parse::<f64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn run(kernel: &Path, bytes: usize) -> Result<Vec<String>, BenchError> {
    let _namespace = Namespace::create().map_err(BenchError::Answer)?;
    let kernel = kernel.to_string_lossy();
    let cmdline = format!("ip={GUEST}::{HOST}:255.255.255.0");
    let mut guest = spawn_with_stdin(
        &[
            "run",
            "--kernel",
            &kernel,
            "--memory",
            "128",
            "--cmdline",
            &cmdline,
            "--net",
            "tap=lt0,mac=02:00:00:00:00:2c",
        ],
        Stdio::piped(),
    )?;
    wait_for(&guest.stdout_lines, "lull> ", "the guest's prompt")?;
    let mut rows = Vec::new();
    for hash in [true, false] {
        let (out, into) = transfers(&mut guest, bytes, hash)?;
        rows.push(format!(
            "tap lull-vmm ({}): guest -> host {out:.1} KiB/s, host -> guest {into:.1} KiB/s ({} KiB each way, host-timed)",
            if hash { "hashing" } else { "not hashing" },
            bytes / 1024
        ));
    }
    type_line(&mut guest, &format!("ping -c 10 {HOST}"))?;
    let said = read_until(&guest, "lull> ", Duration::from_secs(120))?;
    let (min, avg, max) =
        ping_rtt(&said).ok_or_else(|| BenchError::Answer(format!("no ping summary: {said}")))?;
    rows.push(format!(
        "tap lull-vmm ping {HOST}, 10 echoes: rtt min/avg/max {min:.3}/{avg:.3}/{max:.3} ms"
    ));
    type_line(&mut guest, "poweroff")?;
    let _ = guest.child.wait();
    Ok(rows)
}

/// Runs the bench and prints one line per figure; the exit status says whether it ran.
pub fn main(options: &BenchOptions) -> i32 {
    let Some(kernel) = options.kernel.as_deref() else {
        eprintln!("lull-vmm bench --tap: --kernel ELF (a Lull shell kernel) is required");
        return 2;
    };
    match run(kernel, options.tap_bytes) {
        Ok(rows) => {
            for row in rows {
                println!("{row}");
            }
            0
        }
        Err(error) => {
            eprintln!("lull-vmm bench --tap: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_parse() {
        assert_eq!(
            ping_rtt("x\nrtt min/avg/max = 0.695/2.829/5.116 ms\n"),
            Some((0.695, 2.829, 5.116))
        );
        assert_eq!(ping_rtt("rtt min/avg/max = a/b/c ms"), None);
        assert_eq!(ping_rtt("no summary"), None);
    }
}
