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
    boot, get_json, take_snapshot, wait_for, wait_for_vcpus_running, BenchError, Spawned, Spread,
    BOOT_TIMEOUT, PROMPT,
};
use crate::cli::BenchOptions;
use crate::lazy::WORKING_SET_FILE_NAME;

/// What each restore run types at the shell as soon as the process starts.
const WORKLOAD: &[u8] = b"meminfo\r";
/// The recording window of the working-set run.
const RECORD_MS: u64 = 1500;

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

/// The next stderr JSON line whose event is `event`.
fn wait_for_event(spawned: &Spawned, event: &str) -> Result<Value, BenchError> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, line) = spawned
            .stderr_lines
            .recv_timeout(left)
            .map_err(|_| BenchError::Timeout("a JSON event on stderr"))?;
        if let Ok(value) = serde_json::from_str::<Value>(&line) {
            if value["event"] == event {
                return Ok(value);
            }
        }
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
    let (spawn_to_running, timing) = wait_for_vcpus_running(&spawned)?;
    let done = wait_for(&spawned.stdout_lines, PROMPT, "the workload's answer")?;
    runs.spawn_to_running_ms.push(spawn_to_running);
    runs.in_process_ms.push(timing.since_main_ms);
    runs.workload_ms
        .push(done.duration_since(spawned.spawned_at).as_secs_f64() * 1e3);
    if mode != Mode::Eager {
        let loaded = wait_for_event(&spawned, "all_pages_loaded")?;
        runs.all_pages_ms
            .push(loaded["since_vcpus_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        if let Some(prefetch) = timing.phases_us["uffd_and_prefetch"].as_f64() {
            runs.prefetch_us.push(prefetch);
        }
    }
    Ok(())
}

/// Records the working set of the workload into the snapshot; returns its page count.
fn record_working_set(directory: &Path, memory_mib: u64) -> Result<u64, BenchError> {
    let record = RECORD_MS.to_string();
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
        stdin.write_all(WORKLOAD)?;
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
    let complete = wait_for_event(&destination, "postcopy_complete")?;
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

fn run(options: &BenchOptions, kernel: &Path) -> Result<String, BenchError> {
    let work = std::env::temp_dir().join(format!("lull-vmm-bench-lazy-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut out = format!(
        "lull-vmm bench --lazy (guest: {}, idle at its shell; workload: `meminfo` typed at spawn; \
         {} runs per size and mode, interleaved)\n",
        kernel.display(),
        options.runs
    );
    for &memory_mib in &options.sizes_mib {
        let snapshot = take_snapshot(kernel, "", PROMPT, memory_mib, &work)?;
        let directory: PathBuf = snapshot.directory.clone();
        let working_set = directory.join(WORKING_SET_FILE_NAME);
        let aside = directory.join("working-set.aside");
        let pages = record_working_set(&directory, memory_mib)?;
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
    }
    for &memory_mib in &options.sizes_mib {
        let mut runs = PostcopyRuns::default();
        for _ in 0..options.runs {
            postcopy_once(kernel, memory_mib, &work, &mut runs)?;
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
