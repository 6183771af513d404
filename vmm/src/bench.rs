//! `lull-vmm bench`: the VMM's own costs, measured from outside the guest.
//!
//! - start → first guest instruction: process spawn → first byte the test guest writes to
//!   COM1 (its first instructions print), and the VMM's own "vCPUs running" instant;
//! - per guest size: snapshot time and size (apparent, written, on disk), restore latency
//!   (process spawn → all vCPUs in KVM_RUN, reported on stderr by `--timing`), and the VMM's
//!   RSS excluding guest RAM, for a booted guest and for a restored one;
//! - idle cost of the guest (KVM halt wakeups and exits per second) with and without
//!   `nohz=off`, when a kernel is given.
//!
//! Every figure is the median of several runs; spawned VMMs are killed afterwards.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::api::client;
use crate::cli::BenchOptions;

const RUNS: usize = 5;
const PROMPT: &str = "lull> ";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Results of one guest size.
#[derive(Debug, Serialize)]
pub struct SizeResult {
    pub memory_mib: u64,
    pub snapshot_ms_vmm: f64,
    pub snapshot_ms_client: f64,
    pub state_bytes: u64,
    pub memory_file_bytes: u64,
    pub memory_written_bytes: u64,
    pub snapshot_disk_bytes: u64,
    pub restore_to_vcpus_running_ms: f64,
    pub restore_in_process_ms: f64,
    /// Fastest of the runs: the figure least disturbed by other load on a shared host.
    pub restore_in_process_min_ms: f64,
    pub vmm_rss_kib_booted: u64,
    pub vmm_rss_kib_restored: u64,
    pub vmm_private_kib_booted: u64,
    pub restore_phases_us: Value,
}

/// Idle guest cost over a window.
#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub cmdline: String,
    pub seconds: f64,
    pub halt_wakeups_per_second: f64,
    pub exits_per_second: f64,
    pub irq_injections_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub guest: String,
    pub start_to_first_guest_output_ms: f64,
    pub start_to_vcpus_running_ms: f64,
    pub sizes: Vec<SizeResult>,
    pub idle: Vec<IdleResult>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Client(#[from] client::ClientError),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected answer: {0}")]
    Answer(String),
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Spawned {
    child: Child,
    spawned_at: Instant,
    stdout_lines: mpsc::Receiver<(Instant, String)>,
    stderr_lines: mpsc::Receiver<(Instant, String)>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards chunks (stdout: raw, so a prompt without newline is seen) with arrival times.
fn reader(source: impl Read + Send + 'static, by_line: bool) -> mpsc::Receiver<(Instant, String)> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        if by_line {
            for line in BufReader::new(source).lines() {
                let Ok(line) = line else { return };
                if sender.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        } else {
            let mut source = source;
            let mut chunk = [0u8; 4096];
            while let Ok(read) = source.read(&mut chunk) {
                if read == 0
                    || sender
                        .send((
                            Instant::now(),
                            String::from_utf8_lossy(&chunk[..read]).into_owned(),
                        ))
                        .is_err()
                {
                    return;
                }
            }
        }
    });
    receiver
}

fn spawn(args: &[&str]) -> Result<Spawned, BenchError> {
    let spawned_at = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout_lines = reader(child.stdout.take().expect("piped stdout"), false);
    let stderr_lines = reader(child.stderr.take().expect("piped stderr"), true);
    Ok(Spawned {
        child,
        spawned_at,
        stdout_lines,
        stderr_lines,
    })
}

fn wait_for(
    lines: &mpsc::Receiver<(Instant, String)>,
    needle: &str,
    what: &'static str,
) -> Result<Instant, BenchError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, text) = lines
            .recv_timeout(left)
            .map_err(|_| BenchError::Timeout(what))?;
        seen.push_str(&text);
        if seen.contains(needle) {
            return Ok(at);
        }
        // Keep only a tail long enough to hold a needle split across chunks.
        if seen.len() > 4096 {
            seen.drain(..seen.len() - 1024);
        }
    }
}

fn since_main_ms(line: &str) -> Option<f64> {
    let value: Value = serde_json::from_str(line).ok()?;
    Some(value["since_main_us"].as_f64()? / 1e3)
}

/// (spawn → line, in-process since main, phases) for the `--timing` line.
fn wait_for_vcpus_running(spawned: &Spawned) -> Result<(f64, f64, Value), BenchError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = spawned
            .stderr_lines
            .recv_timeout(left)
            .map_err(|_| BenchError::Timeout("vcpus_running"))?;
        if line.contains("vcpus_running") {
            let outside = at.duration_since(spawned.spawned_at).as_secs_f64() * 1e3;
            let phases = serde_json::from_str::<Value>(&line)
                .map(|v| v["phases_us"].clone())
                .unwrap_or_default();
            return Ok((outside, since_main_ms(&line).unwrap_or(f64::NAN), phases));
        }
    }
}

fn wait_for_socket(path: &Path) -> Result<(), BenchError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout("API socket"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn get_json(socket: &Path, path: &str) -> Result<Value, BenchError> {
    let body = client::request(socket, "GET", path, b"")?;
    serde_json::from_slice(&body).map_err(|e| BenchError::Answer(e.to_string()))
}

/// (RSS excluding guest RAM, private part of it) in KiB.
fn vmm_rss_kib(socket: &Path) -> Result<(u64, u64), BenchError> {
    let metrics = get_json(socket, "/vm/metrics")?;
    let host = &metrics["host"];
    match (
        host["vmm_rss_kib"].as_u64(),
        host["vmm_private_kib"].as_u64(),
    ) {
        (Some(rss), Some(private)) => Ok((rss, private)),
        _ => Err(BenchError::Answer(metrics.to_string())),
    }
}

fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Boots `guest`, waits until it is ready (`ready` on the console).
fn boot(
    guest: &Path,
    memory_mib: u64,
    cmdline: &str,
    socket: &Path,
    ready: &str,
) -> Result<Spawned, BenchError> {
    let memory = memory_mib.to_string();
    let spawned = spawn(&[
        "run",
        "--kernel",
        &guest.to_string_lossy(),
        "--memory",
        &memory,
        "--cmdline",
        cmdline,
        "--api-sock",
        &socket.to_string_lossy(),
    ])?;
    wait_for(&spawned.stdout_lines, ready, "the guest to be ready")?;
    wait_for_socket(socket)?;
    Ok(spawned)
}

fn start_latency(test_guest: &Path) -> Result<(f64, f64), BenchError> {
    let mut first_output = Vec::new();
    let mut running = Vec::new();
    for _ in 0..RUNS {
        let spawned = spawn(&[
            "run",
            "--kernel",
            &test_guest.to_string_lossy(),
            "--cmdline",
            "halt",
            "--timing",
        ])?;
        let (_, since_main, _) = wait_for_vcpus_running(&spawned)?;
        let (at, _) = spawned
            .stdout_lines
            .recv_timeout(BOOT_TIMEOUT)
            .map_err(|_| BenchError::Timeout("guest output"))?;
        first_output.push(at.duration_since(spawned.spawned_at).as_secs_f64() * 1e3);
        running.push(since_main);
    }
    Ok((median(first_output), median(running)))
}

fn size_result(
    guest: &Path,
    cmdline: &str,
    ready: &str,
    memory_mib: u64,
    work: &Path,
) -> Result<SizeResult, BenchError> {
    let socket = work.join(format!("bench-{memory_mib}.sock"));
    let snapshot = work.join(format!("snapshot-{memory_mib}"));
    let _ = std::fs::remove_dir_all(&snapshot);
    let booted = boot(guest, memory_mib, cmdline, &socket, ready)?;
    std::thread::sleep(Duration::from_millis(300));
    let (vmm_rss_kib_booted, vmm_private_kib_booted) = vmm_rss_kib(&socket)?;
    client::request(&socket, "PUT", "/vm/pause", b"")?;
    let body = serde_json::json!({ "path": snapshot }).to_string();
    let begin = Instant::now();
    let report: Value = serde_json::from_slice(&client::request(
        &socket,
        "PUT",
        "/vm/snapshot",
        body.as_bytes(),
    )?)
    .map_err(|e| BenchError::Answer(e.to_string()))?;
    let snapshot_ms_client = begin.elapsed().as_secs_f64() * 1e3;
    drop(booted);

    let mut outside = Vec::new();
    let mut inside = Vec::new();
    let mut vmm_rss_kib_restored = 0;
    let mut restore_phases_us = Value::Null;
    for run in 0..RUNS {
        let restore_socket = work.join(format!("restore-{memory_mib}.sock"));
        let spawned = spawn(&[
            "restore",
            "--snapshot",
            &snapshot.to_string_lossy(),
            "--timing",
            "--api-sock",
            &restore_socket.to_string_lossy(),
        ])?;
        let (total, since_main, phases) = wait_for_vcpus_running(&spawned)?;
        outside.push(total);
        inside.push(since_main);
        if since_main <= inside.iter().copied().fold(f64::INFINITY, f64::min) {
            restore_phases_us = phases; // phases of the fastest run: the least disturbed by load
        }
        if run == 0 {
            wait_for_socket(&restore_socket)?;
            std::thread::sleep(Duration::from_millis(300));
            vmm_rss_kib_restored = vmm_rss_kib(&restore_socket)?.0;
        }
    }
    let number = |key: &str| report[key].as_u64().unwrap_or(0);
    Ok(SizeResult {
        memory_mib,
        snapshot_ms_vmm: report["duration_ms"].as_f64().unwrap_or(f64::NAN),
        snapshot_ms_client,
        state_bytes: number("state_bytes"),
        memory_file_bytes: number("memory_file_bytes"),
        memory_written_bytes: number("memory_written_bytes"),
        snapshot_disk_bytes: disk_bytes(&snapshot),
        restore_to_vcpus_running_ms: median(outside),
        restore_in_process_min_ms: inside.iter().copied().fold(f64::INFINITY, f64::min),
        restore_in_process_ms: median(inside),
        vmm_rss_kib_booted,
        vmm_rss_kib_restored,
        vmm_private_kib_booted,
        restore_phases_us,
    })
}

fn idle_cost(kernel: &Path, cmdline: &str, work: &Path) -> Result<IdleResult, BenchError> {
    let socket = work.join("idle.sock");
    let _booted = boot(kernel, 128, cmdline, &socket, PROMPT)?;
    // Let boot-time work settle, then measure a quiet window.
    std::thread::sleep(Duration::from_secs(1));
    get_json(&socket, "/vm/metrics")?;
    std::thread::sleep(Duration::from_secs(3));
    let metrics = get_json(&socket, "/vm/metrics")?;
    let sum = |name: &str| {
        metrics["rates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["kvm_per_second"][name].as_f64().unwrap_or(0.0))
            .sum()
    };
    Ok(IdleResult {
        cmdline: cmdline.to_string(),
        seconds: metrics["interval_seconds"].as_f64().unwrap_or(0.0),
        halt_wakeups_per_second: sum("halt_wakeup"),
        exits_per_second: sum("exits"),
        irq_injections_per_second: sum("irq_injections"),
    })
}

fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let work = std::env::temp_dir().join(format!("lull-vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let test_guest = work.join("test-guest.elf");
    std::fs::write(&test_guest, crate::test_guest::pvh_elf())?;
    let (start_to_first_guest_output_ms, start_to_vcpus_running_ms) = start_latency(&test_guest)?;
    let (guest, cmdline, ready): (PathBuf, &str, &str) = match &options.kernel {
        Some(kernel) => (kernel.clone(), "", PROMPT),
        None => (test_guest.clone(), "halt", crate::test_guest::READY_BANNER),
    };
    let mut sizes = Vec::new();
    for &memory_mib in &options.sizes_mib {
        sizes.push(size_result(&guest, cmdline, ready, memory_mib, &work)?);
    }
    let mut idle = Vec::new();
    if let Some(kernel) = &options.kernel {
        for cmdline in ["", "nohz=off"] {
            idle.push(idle_cost(kernel, cmdline, &work)?);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(BenchReport {
        guest: options
            .kernel
            .as_ref()
            .map_or("built-in test guest".into(), |k| k.display().to_string()),
        start_to_first_guest_output_ms,
        start_to_vcpus_running_ms,
        sizes,
        idle,
    })
}

/// Human-readable report.
pub fn format_report(report: &BenchReport) -> String {
    let mut out = format!(
        "lull-vmm bench (guest: {}; medians of {RUNS} runs)\n",
        report.guest
    );
    out += &format!(
        "  VMM start -> vCPUs running: {:.2} ms (in process); -> first guest output: {:.2} ms (from spawn)\n",
        report.start_to_vcpus_running_ms, report.start_to_first_guest_output_ms
    );
    for size in &report.sizes {
        out += &format!(
            "  {} MiB: snapshot {:.1} ms (client {:.1} ms), memory file {} MiB apparent / {} KiB written / {} KiB on disk, state {} KiB\n",
            size.memory_mib,
            size.snapshot_ms_vmm,
            size.snapshot_ms_client,
            size.memory_file_bytes >> 20,
            size.memory_written_bytes >> 10,
            size.snapshot_disk_bytes >> 10,
            size.state_bytes >> 10,
        );
        out += &format!(
            "  {} MiB: restore spawn -> vCPUs running {:.2} ms (in process {:.2} ms, fastest {:.2} ms); VMM RSS excl. guest RAM {} KiB booted ({} KiB private), {} KiB restored\n",
            size.memory_mib,
            size.restore_to_vcpus_running_ms,
            size.restore_in_process_ms,
            size.restore_in_process_min_ms,
            size.vmm_rss_kib_booted,
            size.vmm_private_kib_booted,
            size.vmm_rss_kib_restored,
        );
        out += &format!(
            "  {} MiB: restore phases (fastest run, µs): {}\n",
            size.memory_mib, size.restore_phases_us
        );
    }
    for idle in &report.idle {
        out += &format!(
            "  idle guest, cmdline '{}': {:.2} wakeups/s, {:.2} exits/s, {:.2} irq injections/s (over {:.1} s)\n",
            idle.cmdline, idle.halt_wakeups_per_second, idle.exits_per_second, idle.irq_injections_per_second, idle.seconds
        );
    }
    out
}

/// Entry point of `lull-vmm bench`.
pub fn main(options: &BenchOptions) -> i32 {
    match run(options) {
        Ok(report) => {
            if options.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", format_report(&report));
            }
            0
        }
        Err(error) => {
            eprintln!("lull-vmm bench: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn timing_line_parses() {
        assert_eq!(
            since_main_ms("{\"event\":\"vcpus_running\",\"since_main_us\":1500}"),
            Some(1.5)
        );
        assert_eq!(since_main_ms("garbage"), None);
    }
}
