//! xtask: build, run, test and benchmark Lull (`cargo xtask help`).

mod bench;
mod e2e;
mod kernel;
mod linuxref;
mod qemu;
mod tools;
mod trace;

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use kernel::Variant;
use qemu::{Guest, Machine, QemuConfig};

const HELP: &str = "\
cargo xtask <command> [options]

  setup                                add what building and testing need: the kernel target and
                                       rust-src for the pinned toolchain, QEMU (every command does
                                       this itself; .ci/run calls it before clippy)
  build [--debug] [--features F,...]   build the kernel; prints the ELF path as the last line
  run [--vmm] [--debug] [--machine q35|microvm] [--memory MiB] [--cpus N] [--features F,...] [-- KERNEL ARGS...]
                                       boot the kernel in QEMU (TCG) with the console on this terminal
                                       (--vmm: on /dev/kvm with lull-vmm instead)
  test [--tier host|kernel|e2e] [--filter TEXT]
                                       run every test tier (host, in-kernel, end-to-end)
  bench [--runs N] [--filter boot,idle,latency,linux,scale,smp,vmm]
                                       run the benchmarks (results go in BENCHMARKS.md)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => cmd_setup(),
        Some("build") => cmd_build(&args[1..]),
        Some("run") => cmd_run(&args[1..]),
        Some("test") => cmd_test(&args[1..]),
        Some("bench") => cmd_bench(&args[1..]),
        Some("help") | Some("--help") | Some("-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Options shared by build and run.
struct Options {
    release: bool,
    features: Vec<&'static str>,
    machine: Machine,
    memory_mib: u32,
    cpus: u32,
    kernel_args: Vec<String>,
    tier: Option<String>,
    filter: Option<String>,
    runs: usize,
    vmm: bool,
}

const KNOWN_FEATURES: &[&str] = &["zone-dma", "ktest", "boot-baseline"];

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        release: true,
        features: Vec::new(),
        machine: Machine::Q35,
        memory_mib: 256,
        cpus: 1,
        kernel_args: Vec::new(),
        tier: None,
        filter: None,
        runs: 5,
        vmm: false,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--debug" => options.release = false,
            "--vmm" => options.vmm = true,
            "--release" => options.release = true,
            "--features" => {
                for feature in value("--features")?.split(',').filter(|f| !f.is_empty()) {
                    let known = KNOWN_FEATURES
                        .iter()
                        .find(|k| **k == feature)
                        .ok_or(format!(
                            "unknown kernel feature {feature:?} (known: {KNOWN_FEATURES:?})"
                        ))?;
                    options.features.push(known);
                }
            }
            "--machine" => options.machine = Machine::parse(&value("--machine")?)?,
            "--memory" => {
                options.memory_mib = value("--memory")?
                    .parse()
                    .map_err(|_| "--memory takes MiB")?
            }
            "--cpus" => {
                options.cpus = value("--cpus")?
                    .parse()
                    .map_err(|_| "--cpus takes a number")?
            }
            "--tier" => options.tier = Some(value("--tier")?),
            "--filter" => options.filter = Some(value("--filter")?),
            "--runs" => {
                options.runs = value("--runs")?
                    .parse()
                    .map_err(|_| "--runs takes a number")?
            }
            "--" => {
                options.kernel_args = iter.by_ref().cloned().collect();
            }
            other => return Err(format!("unknown option {other:?}\n\n{HELP}")),
        }
    }
    Ok(options)
}

fn cmd_setup() -> Result<(), String> {
    tools::ensure_kernel_toolchain()?;
    tools::ensure_qemu()?;
    println!("xtask: toolchain (with x86_64-unknown-none, rust-src) and QEMU are ready");
    Ok(())
}

fn cmd_build(args: &[String]) -> Result<(), String> {
    let options = parse_options(args)?;
    let elf = kernel::build(&Variant {
        features: options.features,
        release: options.release,
    })?;
    println!("{}", elf.display());
    Ok(())
}

/// Boots the kernel on /dev/kvm with lull-vmm instead of QEMU.
fn run_on_vmm(elf: &std::path::Path, options: &Options) -> Result<(), String> {
    let root = kernel::repo_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--quiet", "--release", "-p", "lull-vmm"])
        .status()
        .map_err(|e| format!("cannot build lull-vmm: {e}"))?;
    if !status.success() {
        return Err("building lull-vmm failed".into());
    }
    let mut command = Command::new(root.join("target/release/lull-vmm"));
    command.arg("run").arg("--kernel").arg(elf).args([
        "--memory",
        &options.memory_mib.to_string(),
        "--vcpus",
        &options.cpus.to_string(),
    ]);
    if !options.kernel_args.is_empty() {
        command.arg("--cmdline").arg(options.kernel_args.join(" "));
    }
    eprintln!(
        "xtask: booting {} on /dev/kvm with lull-vmm (type 'poweroff' to leave)",
        elf.display()
    );
    let status = command
        .status()
        .map_err(|e| format!("cannot start lull-vmm: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        code => Err(format!("lull-vmm exited with {code:?}")),
    }
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let options = parse_options(args)?;
    let elf = kernel::build(&Variant {
        features: options.features.clone(),
        release: options.release,
    })?;
    if options.vmm {
        return run_on_vmm(&elf, &options);
    }
    tools::ensure_qemu()?;
    let mut config = QemuConfig::new(&elf);
    config.machine = options.machine;
    config.memory_mib = options.memory_mib;
    config.cpus = options.cpus;
    config.append = options.kernel_args.join(" ");
    eprintln!(
        "xtask: booting {} (QEMU TCG; type 'poweroff' to leave)",
        elf.display()
    );
    let status = config
        .command()
        .status()
        .map_err(|e| format!("cannot start QEMU: {e}"))?;
    let code = status.code().unwrap_or(-1);
    if code == 0 {
        Ok(())
    } else {
        Err(format!(
            "QEMU exited with status {code} ({})",
            qemu::describe_exit(code)
        ))
    }
}

/// Tally of one test tier.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<String>,
}

/// Runs `cargo test` on the host workspace, streaming its output and counting its results.
fn host_tier(tally: &mut Tally) -> Result<(), String> {
    println!("== tier 1: host tests (cargo test --workspace), VMM integration tests on /dev/kvm");
    // The VMM's integration tests boot the real kernel (they skip, saying why, without KVM).
    let kernel = kernel::build(&Variant::shell(true))?;
    if std::path::Path::new("/dev/kvm").exists() {
        println!(
            "VMM integration tests: /dev/kvm present; booting {} (LULL_KERNEL)",
            kernel.display()
        );
    } else {
        println!(
            "VMM integration tests: SKIPPED (no /dev/kvm on this machine); each says so itself"
        );
    }
    // A Linux bzImage for the VMM's loader test, if the Linux reference was fetched (bench).
    let bzimage = std::fs::read_dir(kernel::repo_root().join("target/linuxref/kernel/boot"))
        .ok()
        .and_then(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| {
                    path.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
        });
    match &bzimage {
        Some(path) => println!("VMM bzImage test: {} (LULL_BZIMAGE)", path.display()),
        None => println!("VMM bzImage test: SKIPPED (no Linux image; `cargo xtask bench --filter linux` fetches one)"),
    }
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if let Some(path) = &bzimage {
        child.env("LULL_BZIMAGE", path);
    }
    let mut child = child
        .current_dir(kernel::repo_root())
        .env("LULL_KERNEL", &kernel)
        .args(["test", "--workspace", "--color", "never"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        // "test result: ok. 29 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            let number = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .to_string()
                        })
                    })
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            tally.passed += number("passed");
            tally.failed += number("failed");
        }
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    if !status.success() {
        tally.failed += 1;
        tally.failures.push("host: cargo test failed".into());
    }
    Ok(())
}

/// Boots test builds of the kernel and reads their `N passed, N failed` line and exit status.
fn kernel_tier(tally: &mut Tally) -> Result<(), String> {
    println!("== tier 2: in-kernel tests (QEMU TCG)");
    // (label, features, machine, vCPUs): the SMP suite must see every vCPU come online.
    let suites: [(&str, Vec<&'static str>, Machine, u32); 5] = [
        ("q35", vec!["ktest"], Machine::Q35, 1),
        ("microvm", vec!["ktest"], Machine::Microvm, 1),
        ("q35 zone-dma", vec!["ktest", "zone-dma"], Machine::Q35, 1),
        ("q35 smp4", vec!["ktest"], Machine::Q35, 4),
        ("microvm smp2", vec!["ktest"], Machine::Microvm, 2),
    ];
    for (label, features, machine, cpus) in suites {
        let elf = kernel::build(&Variant {
            features,
            release: true,
        })?;
        let mut config = QemuConfig::new(&elf);
        config.machine = machine;
        config.memory_mib = 512;
        config.cpus = cpus;
        let mut guest = Guest::spawn(&config)?;
        let code = guest.wait_exit(Duration::from_secs(120))?;
        let output = guest.output();
        for line in output.lines().filter(|l| l.contains("ktest ")) {
            println!("  [{label}] {}", line.split("] ").nth(1).unwrap_or(line));
        }
        let summary = output
            .lines()
            .rev()
            .find(|l| l.ends_with(" failed") && l.contains(" passed, "));
        let (passed, failed) = summary
            .and_then(|line| {
                let mut words = line.split_whitespace();
                let passed = words.next()?.parse::<usize>().ok()?;
                let failed = words.nth(1)?.parse::<usize>().ok()?;
                Some((passed, failed))
            })
            .unwrap_or((0, 0));
        tally.passed += passed;
        tally.failed += failed;
        let all_online = format!("ktest smp: {cpus} CPUs online of {cpus} possible");
        if !output.contains(&all_online) {
            tally.failed += 1;
            tally
                .failures
                .push(format!("kernel [{label}]: no line {all_online:?}"));
        }
        if code != 33 || failed > 0 || passed == 0 {
            tally.failed += 1;
            tally.failures.push(format!(
                "kernel [{label}]: exit status {code}, {passed} passed, {failed} failed"
            ));
            println!("{output}");
        }
        println!("  [{label}] {passed} passed, {failed} failed (QEMU status {code})");
    }
    Ok(())
}

fn e2e_tier(tally: &mut Tally, filter: Option<&str>) -> Result<(), String> {
    println!("== tier 3: end-to-end tests (real kernel in QEMU TCG, driven over the serial port)");
    for test in e2e::TESTS {
        if filter.is_some_and(|f| !test.name.contains(f)) {
            continue;
        }
        let started = Instant::now();
        match (test.run)() {
            Ok(()) => {
                tally.passed += 1;
                println!(
                    "test e2e::{} ... ok ({:.1} s)",
                    test.name,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(why) => {
                tally.failed += 1;
                println!("test e2e::{} ... FAILED\n{why}", test.name);
                tally.failures.push(format!("e2e::{}", test.name));
            }
        }
    }
    Ok(())
}

fn cmd_test(args: &[String]) -> Result<(), String> {
    let options = parse_options(args)?;
    tools::ensure_qemu()?;
    let started = Instant::now();
    let mut tally = Tally::default();
    let tier = options.tier.as_deref();
    if tier.is_none() || tier == Some("host") {
        host_tier(&mut tally)?;
    }
    if tier.is_none() || tier == Some("kernel") {
        kernel_tier(&mut tally)?;
    }
    if tier.is_none() || tier == Some("e2e") {
        e2e_tier(&mut tally, options.filter.as_deref())?;
    }
    if let Some(other) = tier.filter(|t| !["host", "kernel", "e2e"].contains(t)) {
        return Err(format!("unknown tier {other:?} (host, kernel, e2e)"));
    }
    println!("== {:.0} s", started.elapsed().as_secs_f64());
    for failure in &tally.failures {
        println!("FAILED: {failure}");
    }
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    if tally.failed == 0 && tally.passed > 0 {
        Ok(())
    } else {
        Err(format!("{} failed", tally.failed))
    }
}

const BENCH_PARTS: &[&str] = &["boot", "idle", "latency", "linux", "scale", "smp", "vmm"];

fn cmd_bench(args: &[String]) -> Result<(), String> {
    let options = parse_options(args)?;
    tools::ensure_qemu()?;
    let parts: Vec<String> = match &options.filter {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None => BENCH_PARTS.iter().map(|p| p.to_string()).collect(),
    };
    if let Some(unknown) = parts.iter().find(|p| !BENCH_PARTS.contains(&p.as_str())) {
        return Err(format!(
            "unknown benchmark {unknown:?} (known: {BENCH_PARTS:?})"
        ));
    }
    let wants = |part: &str| parts.iter().any(|p| p == part);
    let out_dir = kernel::repo_root().join("bench-out");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut rows = Vec::new();
    let mut record = |row: String| {
        println!("{row}");
        rows.push(row);
    };
    if wants("boot") {
        for row in bench::boot_time(options.runs.max(1))? {
            record(row);
        }
    }
    let shell = kernel::build(&Variant::shell(true))?;
    if wants("idle") {
        let cases: [(Machine, u32, &str); 5] = [
            (Machine::Q35, 1, ""),
            (Machine::Q35, 1, "nohz=off"),
            (Machine::Q35, 4, ""),
            (Machine::Q35, 8, ""),
            (Machine::Microvm, 1, ""),
        ];
        for (machine, cpus, append) in cases {
            let idle = bench::measure_lull_idle_on(machine, &shell, append, 10, cpus)?;
            record(format!(
                "idle wakeups Lull ({}, {machine:?} TCG {cpus} vCPU 256 MiB): LAPIC timer {:.2}/s summed over CPUs, \
                 other interrupts {:.2}/s (counted from the QEMU trace over {})",
                if append.is_empty() { "NO_HZ" } else { append },
                idle.lapic_timer_per_s,
                idle.other_per_s,
                idle.counts.describe()
            ));
        }
    }
    let mut lull_histogram = None;
    if wants("latency") {
        // Three runs; report the one with the median p99 (the tail follows host load).
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(bench::measure_lull_latency(&shell, 10)?);
        }
        runs.sort_by_key(|r| r.p99_us);
        let p99s: Vec<String> = runs.iter().map(|r| r.p99_us.to_string()).collect();
        let median = runs.swap_remove(1);
        record(format!(
            "timer latency Lull `latency 10` 1 kHz absolute hrtimer ({} samples; run with the median p99 of 3, \
             p99s {}): p50 {} us, p99 {} us, max {} us",
            median.samples,
            p99s.join("/"),
            median.p50_us,
            median.p99_us,
            median.max_us
        ));
        let text: String = median
            .histogram
            .iter()
            .map(|(us, n)| format!("{us} {n}\n"))
            .collect();
        let path = out_dir.join("lull-latency-histogram.txt");
        std::fs::write(&path, format!("# latency_us count\n{text}"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        lull_histogram = Some(path);
    }
    let mut linux_histogram = None;
    if wants("linux") {
        let linux = linuxref::measure_linux(&linuxref::LinuxRefOptions::default())?;
        for row in linux.rows() {
            record(row);
        }
        let path = out_dir.join("linux-latency-histogram.txt");
        std::fs::write(&path, linux.latency.histogram_text())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        linux_histogram = Some(path);
    }
    if let (Some(lull), Some(linux)) = (&lull_histogram, &linux_histogram) {
        match bench::plot_latency(lull, linux, &out_dir.join("latency.png")) {
            Ok(path) => record(format!("latency histogram plot: {}", path.display())),
            Err(why) => eprintln!("xtask: no latency plot: {why}"),
        }
    }
    if wants("scale") {
        for row in bench::timer_scale()? {
            record(row);
        }
    }
    if wants("smp") {
        for row in bench::smp(&shell)? {
            record(row);
        }
    }
    if wants("vmm") {
        for row in bench::vmm(&shell)? {
            record(row);
        }
    }
    let path = out_dir.join("results.txt");
    std::fs::write(&path, rows.join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("xtask: results written to {}", path.display());
    Ok(())
}
