//! `lull-vmm bench`: the VMM's own costs, measured from outside the guest.
//!
//! - start → first guest instruction: process spawn → first byte the test guest writes to
//!   COM1 (its first instructions print), and the VMM's own "vCPUs running" instant;
//! - per guest size: snapshot time and size (apparent, written, on disk), restore latency
//!   (process spawn → all vCPUs about to enter KVM_RUN: the child's `--timing` line carries
//!   that instant as a CLOCK_MONOTONIC timestamp, so the pipe and the reader's wake-up are
//!   not counted), and the VMM's RSS excluding guest RAM, for a booted and a restored guest;
//! - idle cost of the guest (KVM halt wakeups and exits per second) with and without
//!   `nohz=off`, when a kernel is given.
//!
//! The host is shared (two cores, other builds running), so single runs are noisy by
//! milliseconds: latencies are reported as the median with quartiles and extremes of many
//! runs, and the restores of different sizes are interleaved (run 1 of every size, then run
//! 2, …) so that a busy spell of the host hits every size alike. Spawned VMMs are killed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::api::client;
use crate::cli::BenchOptions;

/// Boots measured for start latency.
const START_RUNS: usize = 11;
/// Restores measured per guest size.
const RESTORE_RUNS: usize = 21;
/// Pause after killing a measured VMM before the next run. Tearing a VM down costs the host
/// ~15 ms of kernel work here (KVM frees its MMU and memory-slot metadata), part of it
/// after the process is reaped; without the pause that work competes with the next run.
const SETTLE: Duration = Duration::from_millis(100);
pub(crate) const PROMPT: &str = "lull> ";
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// Process spawn → all vCPUs running.
    pub restore_spawn_to_vcpus_running_ms: Spread,
    /// `main` entered → all vCPUs running (the part the VMM's code controls).
    pub restore_in_process_ms: Spread,
    pub vmm_rss_kib_booted: u64,
    pub vmm_rss_kib_restored: u64,
    pub vmm_private_kib_booted: u64,
    /// Median of each restore phase over the runs, in µs.
    pub restore_phases_us: serde_json::Map<String, Value>,
}

/// Distribution of a latency over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub runs: usize,
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub(crate) fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |fraction: f64| {
            values
                .get(((values.len().saturating_sub(1)) as f64 * fraction).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        Self {
            runs: values.len(),
            median: median(values.clone()),
            p25: at(0.25),
            p75: at(0.75),
            min: at(0.0),
            max: at(1.0),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} ms (quartiles {:.2}-{:.2}, range {:.2}-{:.2}, {} runs)",
            self.median, self.p25, self.p75, self.min, self.max, self.runs
        )
    }
}

/// CLOCK_MONOTONIC at `instant`, in ns: comparable across processes on one host (Rust's
/// `Instant` is CLOCK_MONOTONIC on Linux but exposes no absolute value).
pub fn clock_monotonic_ns(instant: Instant) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    now_ns.saturating_sub(instant.elapsed().as_nanos() as u64)
}

/// Minor page faults of this process so far (each costs several µs on a shadow-paging host).
pub fn minor_faults() -> i64 {
    // SAFETY: all-zero bytes are a valid `rusage` (integers and timevals).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF always exists.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return -1;
    }
    usage.ru_minflt
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
    /// Spawn → first byte the test guest writes to COM1, as the parent reads it.
    pub start_to_first_guest_output_ms: Spread,
    /// Spawn → vCPUs running, for a boot.
    pub start_to_vcpus_running_ms: Spread,
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

pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) spawned_at: Instant,
    pub(crate) spawned_monotonic_ns: u64,
    pub(crate) stdout_lines: mpsc::Receiver<(Instant, String)>,
    pub(crate) stderr_lines: mpsc::Receiver<(Instant, String)>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(SETTLE);
    }
}

/// Forwards chunks (stdout: raw, so a prompt without newline is seen) with arrival times.
pub(crate) fn reader(
    source: impl Read + Send + 'static,
    by_line: bool,
) -> mpsc::Receiver<(Instant, String)> {
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
    spawn_with_stdin(args, Stdio::null())
}

/// `lull-vmm ARGS` with stdout and stderr read line by line, and `stdin` as given.
pub(crate) fn spawn_with_stdin(args: &[&str], stdin: Stdio) -> Result<Spawned, BenchError> {
    let spawned_at = Instant::now();
    let spawned_monotonic_ns = clock_monotonic_ns(spawned_at);
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout_lines = reader(child.stdout.take().expect("piped stdout"), false);
    let stderr_lines = reader(child.stderr.take().expect("piped stderr"), true);
    Ok(Spawned {
        child,
        spawned_at,
        spawned_monotonic_ns,
        stdout_lines,
        stderr_lines,
    })
}

pub(crate) fn wait_for(
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

/// What a `--timing` line says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimingLine {
    pub(crate) since_main_ms: f64,
    clock_monotonic_ns: u64,
    pub(crate) phases_us: serde_json::Map<String, Value>,
}

fn parse_timing_line(line: &str) -> Option<TimingLine> {
    let value: Value = serde_json::from_str(line).ok()?;
    if value["event"] != "vcpus_running" {
        return None;
    }
    Some(TimingLine {
        since_main_ms: value["since_main_us"].as_f64()? / 1e3,
        clock_monotonic_ns: value["clock_monotonic_ns"].as_u64()?,
        phases_us: value["phases_us"].as_object().cloned().unwrap_or_default(),
    })
}

/// (spawn → vCPUs running in ms, the timing line).
pub(crate) fn wait_for_vcpus_running(spawned: &Spawned) -> Result<(f64, TimingLine), BenchError> {
    wait_for_vcpus_running_keeping(spawned, &mut Vec::new())
}

/// [`wait_for_vcpus_running`], keeping the other stderr lines that came first in `earlier`:
/// another thread of lull-vmm (a lazy restore's loader) may print its own event before the
/// timing line.
pub(crate) fn wait_for_vcpus_running_keeping(
    spawned: &Spawned,
    earlier: &mut Vec<String>,
) -> Result<(f64, TimingLine), BenchError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, line) = spawned
            .stderr_lines
            .recv_timeout(left)
            .map_err(|_| BenchError::Timeout("vcpus_running"))?;
        let Some(timing) = parse_timing_line(&line) else {
            earlier.push(line);
            continue;
        };
        let spawn_to_running = timing
            .clock_monotonic_ns
            .saturating_sub(spawned.spawned_monotonic_ns) as f64
            / 1e6;
        return Ok((spawn_to_running, timing));
    }
}

pub(crate) fn wait_for_socket(path: &Path) -> Result<(), BenchError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout("API socket"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub(crate) fn get_json(socket: &Path, path: &str) -> Result<Value, BenchError> {
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
pub(crate) fn boot(
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

fn start_latency(test_guest: &Path) -> Result<(Spread, Spread), BenchError> {
    let mut first_output = Vec::new();
    let mut running = Vec::new();
    for _ in 0..START_RUNS {
        let spawned = spawn(&[
            "run",
            "--kernel",
            &test_guest.to_string_lossy(),
            "--cmdline",
            "halt",
            "--timing",
        ])?;
        let (spawn_to_running, _) = wait_for_vcpus_running(&spawned)?;
        let (at, _) = spawned
            .stdout_lines
            .recv_timeout(BOOT_TIMEOUT)
            .map_err(|_| BenchError::Timeout("guest output"))?;
        first_output.push(at.duration_since(spawned.spawned_at).as_secs_f64() * 1e3);
        running.push(spawn_to_running);
    }
    Ok((Spread::of(first_output), Spread::of(running)))
}

/// A snapshot taken for one guest size, and what was measured while taking it.
pub(crate) struct SizeSnapshot {
    memory_mib: u64,
    pub(crate) directory: PathBuf,
    report: Value,
    snapshot_ms_client: f64,
    vmm_rss_kib_booted: u64,
    vmm_private_kib_booted: u64,
}

pub(crate) fn take_snapshot(
    guest: &Path,
    cmdline: &str,
    ready: &str,
    memory_mib: u64,
    work: &Path,
) -> Result<SizeSnapshot, BenchError> {
    let socket = work.join(format!("bench-{memory_mib}.sock"));
    let directory = work.join(format!("snapshot-{memory_mib}"));
    let _ = std::fs::remove_dir_all(&directory);
    let booted = boot(guest, memory_mib, cmdline, &socket, ready)?;
    std::thread::sleep(Duration::from_millis(300));
    let (vmm_rss_kib_booted, vmm_private_kib_booted) = vmm_rss_kib(&socket)?;
    client::request(&socket, "PUT", "/vm/pause", b"")?;
    let body = serde_json::json!({ "path": directory }).to_string();
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
    Ok(SizeSnapshot {
        memory_mib,
        directory,
        report,
        snapshot_ms_client,
        vmm_rss_kib_booted,
        vmm_private_kib_booted,
    })
}

/// Restore measurements of one size, accumulated over interleaved runs.
#[derive(Default)]
struct RestoreRuns {
    spawn_to_running_ms: Vec<f64>,
    in_process_ms: Vec<f64>,
    phases_us: Vec<serde_json::Map<String, Value>>,
    vmm_rss_kib_restored: u64,
}

fn restore_once(
    snapshot: &SizeSnapshot,
    work: &Path,
    runs: &mut RestoreRuns,
) -> Result<(), BenchError> {
    let restore_socket = work.join(format!("restore-{}.sock", snapshot.memory_mib));
    let spawned = spawn(&[
        "restore",
        "--snapshot",
        &snapshot.directory.to_string_lossy(),
        "--timing",
        "--api-sock",
        &restore_socket.to_string_lossy(),
    ])?;
    let (spawn_to_running, timing) = wait_for_vcpus_running(&spawned)?;
    runs.spawn_to_running_ms.push(spawn_to_running);
    runs.in_process_ms.push(timing.since_main_ms);
    runs.phases_us.push(timing.phases_us);
    if runs.vmm_rss_kib_restored == 0 {
        wait_for_socket(&restore_socket)?;
        std::thread::sleep(Duration::from_millis(300));
        runs.vmm_rss_kib_restored = vmm_rss_kib(&restore_socket)?.0;
    }
    Ok(())
}

/// Median of every phase that appears in the runs.
pub(crate) fn median_phases(
    runs: &[serde_json::Map<String, Value>],
) -> serde_json::Map<String, Value> {
    let mut names: Vec<&String> = runs.iter().flat_map(|run| run.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let values = runs
                .iter()
                .filter_map(|run| run.get(name).and_then(Value::as_f64))
                .collect();
            (name.clone(), serde_json::json!(median(values)))
        })
        .collect()
}

fn size_result(snapshot: SizeSnapshot, runs: RestoreRuns) -> SizeResult {
    let report = &snapshot.report;
    let number = |key: &str| report[key].as_u64().unwrap_or(0);
    SizeResult {
        memory_mib: snapshot.memory_mib,
        snapshot_ms_vmm: report["duration_ms"].as_f64().unwrap_or(f64::NAN),
        snapshot_ms_client: snapshot.snapshot_ms_client,
        state_bytes: number("state_bytes"),
        memory_file_bytes: number("memory_file_bytes"),
        memory_written_bytes: number("memory_written_bytes"),
        snapshot_disk_bytes: disk_bytes(&snapshot.directory),
        restore_spawn_to_vcpus_running_ms: Spread::of(runs.spawn_to_running_ms),
        restore_in_process_ms: Spread::of(runs.in_process_ms),
        vmm_rss_kib_booted: snapshot.vmm_rss_kib_booted,
        vmm_rss_kib_restored: runs.vmm_rss_kib_restored,
        vmm_private_kib_booted: snapshot.vmm_private_kib_booted,
        restore_phases_us: median_phases(&runs.phases_us),
    }
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
    let mut snapshots = Vec::new();
    for &memory_mib in &options.sizes_mib {
        snapshots.push(take_snapshot(&guest, cmdline, ready, memory_mib, &work)?);
    }
    let mut runs: Vec<RestoreRuns> = snapshots.iter().map(|_| RestoreRuns::default()).collect();
    for _ in 0..RESTORE_RUNS {
        for (snapshot, runs) in snapshots.iter().zip(&mut runs) {
            restore_once(snapshot, &work, runs)?;
        }
    }
    let sizes = snapshots
        .into_iter()
        .zip(runs)
        .map(|(s, r)| size_result(s, r))
        .collect();
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
    let mut out = format!("lull-vmm bench (guest: {})\n", report.guest);
    out += &format!(
        "  boot: spawn -> vCPUs running {}\n  boot: spawn -> first guest output {}\n",
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
            "  {} MiB: restore spawn -> vCPUs running {}\n  {} MiB: restore main -> vCPUs running {}\n",
            size.memory_mib,
            size.restore_spawn_to_vcpus_running_ms,
            size.memory_mib,
            size.restore_in_process_ms,
        );
        out += &format!(
            "  {} MiB: restore phases (medians, µs): {}\n",
            size.memory_mib,
            Value::Object(size.restore_phases_us.clone())
        );
        out += &format!(
            "  {} MiB: VMM RSS excl. guest RAM {} KiB booted ({} KiB private), {} KiB restored\n",
            size.memory_mib,
            size.vmm_rss_kib_booted,
            size.vmm_private_kib_booted,
            size.vmm_rss_kib_restored,
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

/// One guest size's migrations (`lull-vmm bench --migrate`).
#[derive(Debug, Serialize)]
pub struct MigrationResult {
    pub memory_mib: u64,
    /// Source vCPUs paused → destination vCPUs running.
    pub downtime_ms: Spread,
    /// Connect → destination confirmed.
    pub total_ms: Spread,
    pub sent_mib: Spread,
    pub rounds: Spread,
    /// Medians over the runs: the source's stop-and-copy phases.
    pub source_phases_us: serde_json::Map<String, Value>,
    /// Medians over the runs: the destination's restore phases after the last frame.
    pub destination_phases_us: serde_json::Map<String, Value>,
}

#[derive(Default)]
struct MigrationRuns {
    downtime_ms: Vec<f64>,
    total_ms: Vec<f64>,
    sent_mib: Vec<f64>,
    rounds: Vec<f64>,
    source_phases: Vec<serde_json::Map<String, Value>>,
    destination_phases: Vec<serde_json::Map<String, Value>>,
}

/// Boots an idle guest of `memory_mib`, migrates it over a Unix socket to a fresh
/// `lull-vmm receive`, and records what the source reports.
fn migrate_once(
    guest: &Path,
    cmdline: &str,
    ready: &str,
    memory_mib: u64,
    work: &Path,
    runs: &mut MigrationRuns,
) -> Result<(), BenchError> {
    let socket = work.join(format!("migrate-source-{memory_mib}.sock"));
    let url = format!(
        "unix:{}",
        work.join(format!("migrate-{memory_mib}.sock")).display()
    );
    let source = boot(guest, memory_mib, cmdline, &socket, ready)?;
    // Let boot-time work settle: the guest is measured idle.
    std::thread::sleep(Duration::from_millis(500));
    let destination = spawn(&["receive", "--listen", &url, "--timing"])?;
    wait_for(
        &destination.stderr_lines,
        "waiting for a migration",
        "the destination to listen",
    )?;
    let body = serde_json::json!({ "url": url }).to_string();
    client::request(&socket, "PUT", "/vm/migrate", body.as_bytes())?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        let status = get_json(&socket, "/vm/migration")?;
        match status["state"].as_str() {
            Some("completed") => break status,
            Some("failed" | "cancelled") => {
                return Err(BenchError::Answer(format!("migration failed: {status}")))
            }
            _ if Instant::now() > deadline => return Err(BenchError::Timeout("the migration")),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let (_, timing) = wait_for_vcpus_running(&destination)?;
    let summary = &status["summary"];
    let number = |key: &str| summary[key].as_f64().unwrap_or(f64::NAN);
    runs.downtime_ms.push(number("downtime_ms"));
    runs.total_ms.push(number("total_ms"));
    runs.sent_mib.push(number("bytes_sent") / (1024.0 * 1024.0));
    runs.rounds.push(number("rounds"));
    runs.source_phases.push(
        summary["source_phases_us"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    runs.destination_phases.push(timing.phases_us);
    drop(source);
    drop(destination);
    Ok(())
}

fn run_migration(options: &BenchOptions) -> Result<(String, Vec<MigrationResult>), BenchError> {
    let work = std::env::temp_dir().join(format!("lull-vmm-bench-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let test_guest = work.join("test-guest.elf");
    std::fs::write(&test_guest, crate::test_guest::pvh_elf())?;
    let (guest, cmdline, ready): (PathBuf, &str, &str) = match &options.kernel {
        Some(kernel) => (kernel.clone(), "", PROMPT),
        None => (test_guest.clone(), "halt", crate::test_guest::READY_BANNER),
    };
    let mut runs: Vec<MigrationRuns> = options
        .sizes_mib
        .iter()
        .map(|_| MigrationRuns::default())
        .collect();
    // Interleaved, so a busy spell of the host hits every size alike.
    for _ in 0..options.runs {
        for (&memory_mib, runs) in options.sizes_mib.iter().zip(&mut runs) {
            migrate_once(&guest, cmdline, ready, memory_mib, &work, runs)?;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let results = options
        .sizes_mib
        .iter()
        .zip(runs)
        .map(|(&memory_mib, runs)| MigrationResult {
            memory_mib,
            downtime_ms: Spread::of(runs.downtime_ms),
            total_ms: Spread::of(runs.total_ms),
            sent_mib: Spread::of(runs.sent_mib),
            rounds: Spread::of(runs.rounds),
            source_phases_us: median_phases(&runs.source_phases),
            destination_phases_us: median_phases(&runs.destination_phases),
        })
        .collect();
    let guest = options
        .kernel
        .as_ref()
        .map_or("built-in test guest".into(), |k| k.display().to_string());
    Ok((guest, results))
}

/// Human-readable migration report: one line per figure and size.
pub fn format_migration_report(guest: &str, results: &[MigrationResult]) -> String {
    let mut out = format!("lull-vmm bench --migrate (guest: {guest}, idle, unix: loopback)\n");
    for result in results {
        let size = result.memory_mib;
        out += &format!("  migrate {size} MiB: downtime {}\n", result.downtime_ms);
        out += &format!("  migrate {size} MiB: total {}\n", result.total_ms);
        let sent = &result.sent_mib;
        out += &format!(
            "  migrate {size} MiB: sent {:.2} MiB (range {:.2}-{:.2}) in {} rounds (median)\n",
            sent.median, sent.min, sent.max, result.rounds.median
        );
        out += &format!(
            "  migrate {size} MiB: source stop-and-copy phases (medians, µs): {}\n",
            Value::Object(result.source_phases_us.clone())
        );
        out += &format!(
            "  migrate {size} MiB: destination restore phases (medians, µs): {}\n",
            Value::Object(result.destination_phases_us.clone())
        );
    }
    out
}

/// Entry point of `lull-vmm bench`.
pub fn main(options: &BenchOptions) -> i32 {
    if options.lazy || options.postcopy {
        return crate::lazy_bench::main(options);
    }
    if options.tap {
        return crate::tap_bench::main(options);
    }
    if options.migrate {
        return match run_migration(options) {
            Ok((guest, results)) => {
                if options.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&results).unwrap_or_default()
                    );
                } else {
                    print!("{}", format_migration_report(&guest, &results));
                }
                0
            }
            Err(error) => {
                eprintln!("lull-vmm bench --migrate: {error}");
                1
            }
        };
    }
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
        let timing = parse_timing_line(
            "{\"event\":\"vcpus_running\",\"since_main_us\":1500,\"clock_monotonic_ns\":42,\"phases_us\":{\"a\":1.0}}",
        )
        .unwrap();
        assert_eq!(timing.since_main_ms, 1.5);
        assert_eq!(timing.clock_monotonic_ns, 42);
        assert_eq!(timing.phases_us["a"], 1.0);
        assert_eq!(parse_timing_line("garbage"), None);
        assert_eq!(parse_timing_line("{\"event\":\"other\"}"), None);
    }

    #[test]
    fn spread_reports_quartiles_and_extremes() {
        let spread = Spread::of(vec![5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!(
            (spread.runs, spread.median, spread.min, spread.max),
            (5, 3.0, 1.0, 5.0)
        );
        assert_eq!((spread.p25, spread.p75), (2.0, 4.0));
    }

    #[test]
    fn monotonic_timestamps_agree_with_instants() {
        let earlier = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let later = Instant::now();
        let gap = clock_monotonic_ns(later) as i64 - clock_monotonic_ns(earlier) as i64;
        let expected = later.duration_since(earlier).as_nanos() as i64;
        assert!((gap - expected).abs() < 200_000, "{gap} vs {expected}");
    }
}
