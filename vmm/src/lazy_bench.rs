//! `lull-vmm bench --lazy --kernel ELF`: lazy restore and post-copy migration of an idle Lull
//! guest, per guest size.
//!
//! Restore, in four modes, runs interleaved: eager (the snapshot file mapped copy-on-write),
//! `--lazy` with async PF off and on, and `--lazy` with a recorded working set. Each run
//! writes a workload (`meminfo` at the shell) to the console as the process starts and
//! measures spawn → vCPUs running, spawn → the workload's answer (the prompt after it) and,
//! lazily, vCPUs running → every page in. The working set is recorded once per size, by a
//! `--record-ws 1500` restore running the same workload.
//!
//! Working-set workload (issue 12's "lazy restore with and without prefetch"): a second
//! snapshot per size is taken after `memtouch fill` (the guest keeps [`FILL`] of pages written
//! with a pattern) and each run types `memtouch sum`, which reads every one of those pages
//! back and checks it: eager, lazy without prefetch, lazy with the working set recorded by a
//! `--record-ws` restore running `memtouch sum`.
//!
//! Async PF (Natapov's experiment): the filled snapshot restored lazily with async PF off and
//! on, running `apfbench` (a spinner thread's iterations per second while a second thread
//! reads [`APF_READ`] of the area for the first time, then again, then the spinner alone),
//! both with the background loading and in a fault-only window (`--record-ws`, which serves
//! faults only for its window; the recorded set is thrown away).
//!
//! Post-copy: a guest booted fresh is migrated with `--postcopy` over a Unix socket to a
//! `lull-vmm receive`: downtime (source paused → destination vCPUs running), switch → every
//! page at the destination, pages asked for by faults.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::client;
use crate::bench::{
    boot, get_json, take_snapshot, wait_for, wait_for_vcpus_running,
    wait_for_vcpus_running_keeping, BenchError, Spawned, Spread, BOOT_TIMEOUT, PROMPT,
};
use crate::cli::BenchOptions;
use crate::lazy::WORKING_SET_FILE_NAME;

/// What each restore run types at the shell as soon as the process starts.
const WORKLOAD: &[u8] = b"meminfo\r";
/// The recording window of the working-set run.
const RECORD_MS: u64 = 1500;
/// What `memtouch fill` keeps before the working-set snapshot is taken.
const FILL: &str = "16M";
/// Pages of [`FILL`].
const FILL_PAGES: u64 = 16 * 256;
/// The working-set workload.
const MEMTOUCH_WORKLOAD: &[u8] = b"memtouch sum\r";
/// Its recording window: long enough for every page of [`FILL`] to be faulted in one by one.
const MEMTOUCH_RECORD_MS: u64 = 8000;
/// What `apfbench` reads of the filled area.
const APF_READ: &str = "8M";
/// The fault-only window (longer than the whole `apfbench` or `memtouch sum`).
const APF_FAULT_ONLY_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Eager,
    Lazy { async_pf: bool },
    WorkingSet,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Eager,
        Mode::Lazy { async_pf: false },
        Mode::Lazy { async_pf: true },
        Mode::WorkingSet,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Eager => "eager (file mapped copy-on-write)",
            Mode::Lazy { async_pf: false } => "lazy, async pf off",
            Mode::Lazy { async_pf: true } => "lazy, async pf on",
            Mode::WorkingSet => "lazy + working set, async pf off",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Eager => &[],
            Mode::Lazy { async_pf: false } | Mode::WorkingSet => &["--lazy", "--async-pf", "off"],
            Mode::Lazy { async_pf: true } => &["--lazy", "--async-pf", "on"],
        }
    }
}

/// `lull-vmm ARGS` with its console input piped (for the workload).
fn spawn_interactive(args: &[&str]) -> Result<Spawned, BenchError> {
    crate::bench::spawn_with_stdin(args, Stdio::piped())
}

/// The first stderr JSON line whose event is `event`, among the `earlier` lines (read while
/// waiting for the timing line: the loader thread may print before the main thread) or the
/// next ones. If lull-vmm ends first, the error says so, with what it wrote on stderr.
fn wait_for_event(
    spawned: &Spawned,
    event: &str,
    earlier: Vec<String>,
) -> Result<Value, BenchError> {
    let is_event = |line: &str| {
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(|value| value["event"] == event)
    };
    if let Some(value) = earlier.iter().find_map(|line| is_event(line)) {
        return Ok(value);
    }
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut seen = earlier;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match spawned.stderr_lines.recv_timeout(left) {
            Ok((_, line)) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(BenchError::Answer(format!(
                    "no {event} line on lull-vmm's stderr within {BOOT_TIMEOUT:?}; it wrote: {}",
                    seen.join(" | ")
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(BenchError::Answer(format!(
                    "lull-vmm closed its stderr before its {event} line; it wrote: {}",
                    seen.join(" | ")
                )))
            }
        };
        if let Some(value) = is_event(&line) {
            return Ok(value);
        }
        seen.push(line);
    }
}

#[derive(Default)]
struct ModeRuns {
    spawn_to_running_ms: Vec<f64>,
    in_process_ms: Vec<f64>,
    workload_ms: Vec<f64>,
    all_pages_ms: Vec<f64>,
    prefetch_us: Vec<f64>,
}

fn restore_once(directory: &Path, mode: Mode, runs: &mut ModeRuns) -> Result<(), BenchError> {
    let mut args = vec![
        "restore",
        "--snapshot",
        directory.to_str().unwrap_or_default(),
        "--timing",
    ];
    args.extend_from_slice(mode.args());
    let mut spawned = spawn_interactive(&args)?;
    if let Some(stdin) = spawned.child.stdin.as_mut() {
        stdin.write_all(WORKLOAD)?;
        stdin.flush()?;
    }
    let mut earlier = Vec::new();
    let (spawn_to_running, timing) = wait_for_vcpus_running_keeping(&spawned, &mut earlier)?;
    let done = wait_for(&spawned.stdout_lines, PROMPT, "the workload's answer")?;
    runs.spawn_to_running_ms.push(spawn_to_running);
    runs.in_process_ms.push(timing.since_main_ms);
    runs.workload_ms
        .push(done.duration_since(spawned.spawned_at).as_secs_f64() * 1e3);
    if mode != Mode::Eager {
        let loaded = wait_for_event(&spawned, "all_pages_loaded", earlier)?;
        runs.all_pages_ms
            .push(loaded["since_vcpus_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        if let Some(prefetch) = timing.phases_us["uffd_and_prefetch"].as_f64() {
            runs.prefetch_us.push(prefetch);
        }
    }
    Ok(())
}

/// Records the working set of `workload` into the snapshot; returns its page count.
fn record_working_set(
    directory: &Path,
    memory_mib: u64,
    workload: &[u8],
    record_ms: u64,
) -> Result<u64, BenchError> {
    let record = record_ms.to_string();
    let mut spawned = spawn_interactive(&[
        "restore",
        "--snapshot",
        directory.to_str().unwrap_or_default(),
        "--lazy",
        "--async-pf",
        "off",
        "--record-ws",
        &record,
    ])?;
    if let Some(stdin) = spawned.child.stdin.as_mut() {
        stdin.write_all(workload)?;
        stdin.flush()?;
    }
    wait_for(
        &spawned.stderr_lines,
        "working set of the first",
        "the working set",
    )?;
    let set = std::fs::read(directory.join(WORKING_SET_FILE_NAME))?;
    let set =
        crate::lazy::WorkingSet::decode(&set, memory_mib * 256).map_err(BenchError::Answer)?;
    Ok(set.pages())
}

/// Reads stdout until a whole line contains one of `needles`; its arrival, that line and
/// everything up to it.
fn wait_for_line(
    spawned: &Spawned,
    needles: &[&str],
    what: &'static str,
) -> Result<(Instant, String, String), BenchError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, text) = spawned
            .stdout_lines
            .recv_timeout(left)
            .map_err(|_| BenchError::Timeout(what))?;
        seen.push_str(&text);
        for needle in needles {
            if let Some(start) = seen.find(needle) {
                if let Some(end) = seen[start..].find('\n') {
                    let line = seen[start..start + end].trim_end().to_string();
                    seen.truncate(start + end);
                    return Ok((at, line, seen));
                }
            }
        }
    }
}

/// A spread of a count or rate (no unit): median (quartiles, range, runs).
fn plain(values: Vec<f64>) -> String {
    let spread = Spread::of(values);
    format!(
        "{:.0} (quartiles {:.0}-{:.0}, range {:.0}-{:.0}, {} runs)",
        spread.median, spread.p25, spread.p75, spread.min, spread.max, spread.runs
    )
}

/// The line of `text` that starts with `prefix`.
fn line_with<'a>(text: &'a str, prefix: &str) -> Result<&'a str, BenchError> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .ok_or_else(|| BenchError::Answer(format!("no '{prefix}' line in: {text}")))
}

/// The number after `key=` in a `key=value` line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
}

/// Restores of the filled snapshot running `memtouch sum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TouchMode {
    Eager,
    Lazy,
    Prefetch,
    /// Lazy without prefetch and without background loading (a `--record-ws` window, its
    /// set thrown away): every page comes in by a fault, as from a source slower than the
    /// guest.
    FaultOnly,
}

impl TouchMode {
    const ALL: [TouchMode; 4] = [
        TouchMode::Lazy,
        TouchMode::Prefetch,
        TouchMode::FaultOnly,
        TouchMode::Eager,
    ];

    fn name(self) -> &'static str {
        match self {
            TouchMode::Eager => "eager (file mapped copy-on-write)",
            TouchMode::Lazy => "lazy, no prefetch (async pf off)",
            TouchMode::Prefetch => "lazy, working set prefetched (async pf off)",
            TouchMode::FaultOnly => "lazy, no prefetch, fault-only window (async pf off)",
        }
    }
}

#[derive(Default)]
struct TouchRuns {
    /// Spawn → `memtouch sum` answered.
    answered_ms: Vec<f64>,
    /// The guest's own time for the sum.
    guest_ms: Vec<f64>,
    prefetch_ms: Vec<f64>,
}

fn memtouch_once(
    directory: &Path,
    mode: TouchMode,
    runs: &mut TouchRuns,
) -> Result<(), BenchError> {
    let mut args = vec![
        "restore",
        "--snapshot",
        directory.to_str().unwrap_or_default(),
        "--timing",
    ];
    let window = APF_FAULT_ONLY_MS.to_string();
    if mode != TouchMode::Eager {
        args.extend_from_slice(&["--lazy", "--async-pf", "off"]);
    }
    if mode == TouchMode::FaultOnly {
        args.extend_from_slice(&["--record-ws", &window]);
    }
    let mut spawned = spawn_interactive(&args)?;
    if let Some(stdin) = spawned.child.stdin.as_mut() {
        stdin.write_all(MEMTOUCH_WORKLOAD)?;
        stdin.flush()?;
    }
    let (_, timing) = wait_for_vcpus_running(&spawned)?;
    let (at, line, _) = wait_for_line(&spawned, &["memtouch: "], "`memtouch sum`")?;
    if !line.ends_with(" ok") || field(&line, "pages") != Some(FILL_PAGES as f64) {
        return Err(BenchError::Answer(format!("memtouch sum: {line}")));
    }
    runs.answered_ms
        .push(at.duration_since(spawned.spawned_at).as_secs_f64() * 1e3);
    runs.guest_ms
        .push(field(&line, "us").unwrap_or(f64::NAN) / 1e3);
    if mode == TouchMode::Prefetch {
        if let Some(prefetch) = timing.phases_us["uffd_and_prefetch"].as_f64() {
            runs.prefetch_ms.push(prefetch / 1e3);
        }
    }
    if mode == TouchMode::FaultOnly {
        drop(spawned);
        let _ = std::fs::remove_file(directory.join(WORKING_SET_FILE_NAME));
    }
    Ok(())
}

/// One async-PF variant: async PF on or off, background loading or a fault-only window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ApfMode {
    async_pf: bool,
    fault_only: bool,
}

impl ApfMode {
    const ALL: [ApfMode; 4] = [
        ApfMode {
            async_pf: false,
            fault_only: false,
        },
        ApfMode {
            async_pf: true,
            fault_only: false,
        },
        ApfMode {
            async_pf: false,
            fault_only: true,
        },
        ApfMode {
            async_pf: true,
            fault_only: true,
        },
    ];

    fn name(self) -> String {
        format!(
            "async pf {}, {}",
            if self.async_pf { "on" } else { "off" },
            if self.fault_only {
                "fault-only window"
            } else {
                "background loading"
            }
        )
    }
}

#[derive(Default)]
struct ApfRuns {
    cold_per_s: Vec<f64>,
    warm_per_s: Vec<f64>,
    alone_per_s: Vec<f64>,
    cold_ms: Vec<f64>,
    warm_ms: Vec<f64>,
    not_present: Vec<f64>,
    /// Runs in which lull-vmm said it stopped offering async page faults.
    gave_up: usize,
}

fn apf_once(directory: &Path, mode: ApfMode, runs: &mut ApfRuns) -> Result<(), BenchError> {
    let window = APF_FAULT_ONLY_MS.to_string();
    let mut args = vec![
        "restore",
        "--snapshot",
        directory.to_str().unwrap_or_default(),
        "--timing",
        "--lazy",
        "--async-pf",
        if mode.async_pf { "on" } else { "off" },
    ];
    if mode.fault_only {
        args.extend_from_slice(&["--record-ws", &window]);
    }
    let mut spawned = spawn_interactive(&args)?;
    if let Some(stdin) = spawned.child.stdin.as_mut() {
        stdin.write_all(format!("apfbench {APF_READ}\r").as_bytes())?;
        stdin.flush()?;
    }
    wait_for_vcpus_running(&spawned)?;
    let (_, done, text) = wait_for_line(
        &spawned,
        &[
            "apfbench: done",
            "apfbench: failed",
            "apfbench: invalid",
            "apfbench: nothing",
        ],
        "apfbench's verdict",
    )?;
    if !done.ends_with(" ok") {
        return Err(BenchError::Answer(done));
    }
    let cold = line_with(&text, "apfbench: phase=cold")?;
    let warm = line_with(&text, "apfbench: phase=warm")?;
    let alone = line_with(&text, "apfbench: phase=alone")?;
    let number = |line: &str, key: &str| field(line, key).unwrap_or(f64::NAN);
    runs.cold_per_s.push(number(cold, "spinner_per_s"));
    runs.warm_per_s.push(number(warm, "spinner_per_s"));
    runs.alone_per_s.push(number(alone, "spinner_per_s"));
    runs.cold_ms.push(number(cold, "us") / 1e3);
    runs.warm_ms.push(number(warm, "us") / 1e3);
    runs.not_present
        .push(field(cold, "apf_not_present").unwrap_or(0.0));
    if spawned
        .stderr_lines
        .try_iter()
        .any(|(_, line)| line.contains("no longer turned into async page faults"))
    {
        runs.gave_up += 1;
    }
    drop(spawned);
    // A fault-only run is a recording that never finished: nothing to keep.
    let _ = std::fs::remove_file(directory.join(WORKING_SET_FILE_NAME));
    Ok(())
}

/// The working-set and async-PF rows of one size.
fn filled_rows(
    kernel: &Path,
    memory_mib: u64,
    runs: usize,
    work: &Path,
) -> Result<String, BenchError> {
    let mut out = String::new();
    let cmdline = format!("-- memtouch fill {FILL}");
    let snapshot = take_snapshot(kernel, &cmdline, "memtouch: filled", memory_mib, work)?;
    let directory: PathBuf = snapshot.directory.clone();
    let working_set = directory.join(WORKING_SET_FILE_NAME);
    let aside = directory.join("working-set.aside");
    let pages = record_working_set(
        &directory,
        memory_mib,
        MEMTOUCH_WORKLOAD,
        MEMTOUCH_RECORD_MS,
    )?;
    std::fs::rename(&working_set, &aside)?;
    let mut touch: Vec<TouchRuns> = TouchMode::ALL
        .iter()
        .map(|_| TouchRuns::default())
        .collect();
    let mut apf: Vec<ApfRuns> = ApfMode::ALL.iter().map(|_| ApfRuns::default()).collect();
    for _ in 0..runs {
        for (mode, runs) in TouchMode::ALL.iter().zip(&mut touch) {
            if *mode == TouchMode::Prefetch {
                std::fs::rename(&aside, &working_set)?;
            }
            let result = memtouch_once(&directory, *mode, runs);
            if *mode == TouchMode::Prefetch {
                std::fs::rename(&working_set, &aside)?;
            }
            result?;
        }
        for (mode, runs) in ApfMode::ALL.iter().zip(&mut apf) {
            apf_once(&directory, *mode, runs)?;
        }
    }
    for (mode, runs) in TouchMode::ALL.iter().zip(touch) {
        let label = match mode {
            TouchMode::Prefetch => format!("{} ({pages} pages)", mode.name()),
            _ => mode.name().to_string(),
        };
        out += &format!(
            "  memtouch sum {memory_mib} MiB ({FILL} filled) {label}: spawn → answered {}; guest's own sum time {}\n",
            Spread::of(runs.answered_ms),
            Spread::of(runs.guest_ms)
        );
        if !runs.prefetch_ms.is_empty() {
            out += &format!(
                "  memtouch sum {memory_mib} MiB {label}: userfaultfd set-up + prefetch {}\n",
                Spread::of(runs.prefetch_ms)
            );
        }
    }
    for (mode, runs) in ApfMode::ALL.iter().zip(apf) {
        let label = mode.name();
        let count = runs.cold_per_s.len();
        out += &format!(
            "  apfbench {APF_READ} {memory_mib} MiB {label}: spinner iterations/s cold {}; warm {}; alone {}\n",
            plain(runs.cold_per_s),
            plain(runs.warm_per_s),
            plain(runs.alone_per_s)
        );
        out += &format!(
            "  apfbench {APF_READ} {memory_mib} MiB {label}: reader pass cold {}; warm {}; guest async PF not-present in the cold pass {}; lull-vmm stopped offering in {} of {count} runs\n",
            Spread::of(runs.cold_ms),
            Spread::of(runs.warm_ms),
            plain(runs.not_present),
            runs.gave_up
        );
    }
    let _ = std::fs::remove_dir_all(&directory);
    Ok(out)
}

#[derive(Default)]
struct PostcopyRuns {
    downtime_ms: Vec<f64>,
    vcpus_after_switch_ms: Vec<f64>,
    all_pages_ms: Vec<f64>,
    requested: Vec<f64>,
    pages: Vec<f64>,
    mean_wait_ms: Vec<f64>,
    source_phases: Vec<serde_json::Map<String, Value>>,
}

fn postcopy_once(
    kernel: &Path,
    memory_mib: u64,
    work: &Path,
    runs: &mut PostcopyRuns,
) -> Result<(), BenchError> {
    let socket = work.join(format!("postcopy-source-{memory_mib}.sock"));
    let url = format!(
        "unix:{}",
        work.join(format!("postcopy-{memory_mib}.sock")).display()
    );
    let source = boot(kernel, memory_mib, "", &socket, PROMPT)?;
    std::thread::sleep(Duration::from_millis(500));
    let destination =
        spawn_interactive(&["receive", "--listen", &url, "--timing", "--async-pf", "off"])?;
    wait_for(
        &destination.stderr_lines,
        "waiting for a migration",
        "the destination to listen",
    )?;
    let body = serde_json::json!({ "url": url, "postcopy": true }).to_string();
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
    let complete = wait_for_event(&destination, "postcopy_complete", Vec::new())?;
    let summary = &status["summary"];
    let number = |value: &Value| value.as_f64().unwrap_or(f64::NAN);
    runs.downtime_ms.push(number(&summary["downtime_ms"]));
    runs.all_pages_ms
        .push(number(&summary["postcopy"]["all_pages_ms"]));
    runs.requested
        .push(number(&summary["postcopy"]["requested_pages"]));
    runs.pages.push(number(&summary["postcopy"]["pages"]));
    runs.source_phases.push(
        summary["source_phases_us"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    runs.vcpus_after_switch_ms
        .push(number(&complete["vcpus_after_switch_us"]) / 1e3);
    runs.mean_wait_ms
        .push(number(&complete["mean_wait_us"]) / 1e3);
    drop(source);
    drop(destination);
    Ok(())
}

/// Post-copy's goal: destination vCPUs running within this of the source pausing them.
const POSTCOPY_GOAL_MS: f64 = 5.0;

/// The post-copy rows: `options.runs` migrations per size of a freshly booted idle guest.
fn postcopy_rows(kernel: &Path, options: &BenchOptions, work: &Path) -> Result<String, BenchError> {
    let mut out = String::new();
    for &memory_mib in &options.sizes_mib {
        let mut runs = PostcopyRuns::default();
        for _ in 0..options.runs {
            postcopy_once(kernel, memory_mib, work, &mut runs)?;
        }
        // Each run over the goal, with its source phases: a median hides what made it slow.
        for (run, (downtime, phases)) in
            runs.downtime_ms.iter().zip(&runs.source_phases).enumerate()
        {
            if *downtime > POSTCOPY_GOAL_MS {
                out += &format!(
                    "  postcopy {memory_mib} MiB: run {} of {}: downtime {downtime:.2} ms, over the {POSTCOPY_GOAL_MS} ms goal; source phases (µs): {}\n",
                    run + 1,
                    options.runs,
                    Value::Object(phases.clone())
                );
            }
        }
        let pages = Spread::of(runs.pages).median;
        let requested = Spread::of(runs.requested).median;
        out += &format!(
            "  postcopy {memory_mib} MiB: downtime (source paused → destination vCPUs running) {}\n",
            Spread::of(runs.downtime_ms)
        );
        out += &format!(
            "  postcopy {memory_mib} MiB: switch received → destination vCPUs running {}\n",
            Spread::of(runs.vcpus_after_switch_ms)
        );
        out += &format!(
            "  postcopy {memory_mib} MiB: switch → every page at the destination {} ({pages} pages after the switch, {requested} of them on request; median)\n",
            Spread::of(runs.all_pages_ms)
        );
        out += &format!(
            "  postcopy {memory_mib} MiB: mean wait of a requested page {}\n",
            Spread::of(runs.mean_wait_ms)
        );
        out += &format!(
            "  postcopy {memory_mib} MiB: source phases up to the switch (medians, µs): {}\n",
            Value::Object(crate::bench::median_phases(&runs.source_phases))
        );
    }
    Ok(out)
}

fn run(options: &BenchOptions, kernel: &Path) -> Result<String, BenchError> {
    let work = std::env::temp_dir().join(format!("lull-vmm-bench-lazy-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    if options.postcopy && !options.lazy {
        let mut out = format!(
            "lull-vmm bench --postcopy (guest: {}, idle at its shell; {} runs per size)\n",
            kernel.display(),
            options.runs
        );
        out += &postcopy_rows(kernel, options, &work)?;
        let _ = std::fs::remove_dir_all(&work);
        return Ok(out);
    }
    let mut out = format!(
        "lull-vmm bench --lazy (guest: {}, idle at its shell; workloads typed at spawn: `meminfo`, \
         and `memtouch sum` / `apfbench {APF_READ}` after `memtouch fill {FILL}`; {} runs per size \
         and mode, interleaved)\n",
        kernel.display(),
        options.runs
    );
    for &memory_mib in &options.sizes_mib {
        let snapshot = take_snapshot(kernel, "", PROMPT, memory_mib, &work)?;
        let directory: PathBuf = snapshot.directory.clone();
        let working_set = directory.join(WORKING_SET_FILE_NAME);
        let aside = directory.join("working-set.aside");
        let pages = record_working_set(&directory, memory_mib, WORKLOAD, RECORD_MS)?;
        std::fs::rename(&working_set, &aside)?;
        let mut runs: Vec<ModeRuns> = Mode::ALL.iter().map(|_| ModeRuns::default()).collect();
        for _ in 0..options.runs {
            for (mode, runs) in Mode::ALL.iter().zip(&mut runs) {
                if *mode == Mode::WorkingSet {
                    std::fs::rename(&aside, &working_set)?;
                }
                let result = restore_once(&directory, *mode, runs);
                if *mode == Mode::WorkingSet {
                    std::fs::rename(&working_set, &aside)?;
                }
                result?;
            }
        }
        for (mode, runs) in Mode::ALL.iter().zip(runs) {
            let label = match mode {
                Mode::WorkingSet => format!("{} ({pages} pages)", mode.name()),
                _ => mode.name().to_string(),
            };
            out += &format!(
                "  restore {memory_mib} MiB {label}: spawn → vCPUs running {}\n",
                Spread::of(runs.spawn_to_running_ms)
            );
            out += &format!(
                "  restore {memory_mib} MiB {label}: in-process → vCPUs running {}\n",
                Spread::of(runs.in_process_ms)
            );
            out += &format!(
                "  restore {memory_mib} MiB {label}: spawn → workload answered {}\n",
                Spread::of(runs.workload_ms)
            );
            if !runs.all_pages_ms.is_empty() {
                out += &format!(
                    "  restore {memory_mib} MiB {label}: vCPUs running → every page in {}\n",
                    Spread::of(runs.all_pages_ms)
                );
            }
            if *mode == Mode::WorkingSet && !runs.prefetch_us.is_empty() {
                out += &format!(
                    "  restore {memory_mib} MiB {label}: userfaultfd set-up + prefetch {}\n",
                    Spread::of(runs.prefetch_us.iter().map(|us| us / 1e3).collect())
                );
            }
        }
        let _ = std::fs::remove_dir_all(&directory);
        out += &filled_rows(kernel, memory_mib, options.runs, &work)?;
    }
    out += &postcopy_rows(kernel, options, &work)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(out)
}

/// Entry point of `lull-vmm bench --lazy`.
pub fn main(options: &BenchOptions) -> i32 {
    let Some(kernel) = &options.kernel else {
        eprintln!("lull-vmm bench --lazy: give --kernel ELF (the Lull kernel)");
        return 2;
    };
    match run(options, kernel) {
        Ok(report) => {
            print!("{report}");
            0
        }
        Err(error) => {
            eprintln!("lull-vmm bench --lazy: {error}");
            1
        }
    }
}
