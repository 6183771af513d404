//! xtask: build, run, test and benchmark Lull (`cargo xtask help`).

mod bench;
mod e2e;
mod kernel;
mod linuxref;
mod qemu;
mod tools;
mod trace;
mod vmm;

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
  run [--vmm] [--debug] [--machine q35|microvm] [--memory MiB] [--cpus N] [--features F,...] [--disk IMG]... [--gpio SPEC] [--trace EVENT]... [-- KERNEL ARGS...]
                                       boot the kernel in QEMU (TCG) with the console on this terminal
                                       (--vmm: on /dev/kvm with lull-vmm instead; --gpio: lull-vmm's
                                       --gpio, with --vmm; --trace: a QEMU trace event, on stderr)
  test [--tier host|kernel|e2e] [--filter TEXT]
                                       run every test tier (host, in-kernel, end-to-end)
  bench [--runs N] [--filter boot,idle,latency,linux,scale,smp,vmm,migrate,lazy,pvops,blk,tcp,tap,sound]
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
            // `test` has already said why in its closing line, which must stay the last one.
            if !message.is_empty() {
                eprintln!("xtask: {message}");
            }
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
    /// Raw disk images for `run` (virtio-blk).
    disks: Vec<String>,
    /// QEMU trace events for `run` (`-trace enable=EVENT`, to stderr).
    traces: Vec<String>,
    /// `--gpio SPEC` for `run --vmm` (lull-vmm's virtio-gpio device).
    gpio: Option<String>,
}

const KNOWN_FEATURES: &[&str] = &["zone-dma", "ktest", "boot-baseline", "heap-trace"];

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
        disks: Vec::new(),
        traces: Vec::new(),
        gpio: None,
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
            "--disk" => {
                let path = value("--disk")?;
                if !std::path::Path::new(&path).is_file() {
                    return Err(format!(
                        "--disk {path}: no such file (a raw image: e.g. truncate -s 64M disk.img)"
                    ));
                }
                options.disks.push(path);
            }
            "--trace" => options.traces.push(value("--trace")?),
            "--gpio" => options.gpio = Some(value("--gpio")?),
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
    let mut command = Command::new(vmm::build_release()?);
    command.arg("run").arg("--kernel").arg(elf).args([
        "--memory",
        &options.memory_mib.to_string(),
        "--vcpus",
        &options.cpus.to_string(),
    ]);
    if let Some(gpio) = &options.gpio {
        command.arg("--gpio").arg(gpio);
    }
    for disk in &options.disks {
        command.arg("--disk").arg(format!("path={disk}"));
    }
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
        if !options.traces.is_empty() {
            return Err("--trace names QEMU trace events; it does not apply to --vmm".into());
        }
        return run_on_vmm(&elf, &options);
    }
    if options.gpio.is_some() {
        return Err(
            "--gpio is lull-vmm's virtio-gpio device (run --vmm); under QEMU, start \
                    lull-gpio-backend and add vhost-user-gpio-pci (README: GPIO)"
                .into(),
        );
    }
    tools::ensure_qemu()?;
    let mut config = QemuConfig::new(&elf);
    config.machine = options.machine;
    config.memory_mib = options.memory_mib;
    config.cpus = options.cpus;
    config.append = options.kernel_args.join(" ");
    if options.machine == Machine::Microvm {
        // A device for the virtio-mmio transport and the virtio-rng driver (`hwrng`).
        config.extra = qemu::VIRTIO_RNG_MMIO
            .iter()
            .map(|a| a.to_string())
            .collect();
    } else {
        // The same device behind the virtio-pci transport.
        config.extra = qemu::VIRTIO_RNG_PCI.iter().map(|a| a.to_string()).collect();
    }
    // Each disk as a virtio-blk device on the machine's virtio transport (vda, vdb, ...).
    for (index, disk) in options.disks.iter().enumerate() {
        let device = match options.machine {
            Machine::Microvm => "virtio-blk-device",
            Machine::Q35 => "virtio-blk-pci",
        };
        config.extra.extend([
            "-drive".to_string(),
            format!("file={disk},if=none,id=disk{index},format=raw"),
            "-device".to_string(),
            format!("{device},drive=disk{index}"),
        ]);
    }
    for event in &options.traces {
        config
            .extra
            .extend(["-trace".to_string(), format!("enable={event}")]);
    }
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

/// Tally of the test tiers: every test passed, failed or was skipped (with a reason).
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<String>,
    /// `(test, reason)` of each skipped test.
    skipped: Vec<(String, String)>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        self.failures.push(what);
    }

    fn skip(&mut self, test: String, reason: String) {
        self.skipped.push((test, reason));
    }
}

/// Set to anything but empty or `0`, hides /dev/kvm from the host tests (and from xtask): the
/// tests that need it are then reported as skipped, as on a machine without KVM.
const NO_KVM_ENV: &str = "LULL_NO_KVM";

/// `Ok` when /dev/kvm opens read-write and is not hidden by [`NO_KVM_ENV`]; else why not.
fn kvm_usable() -> Result<(), String> {
    if std::env::var_os(NO_KVM_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(format!("{NO_KVM_ENV} is set"));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/kvm read-write: {e}"))
}

/// What one `cargo test` run printed: libtest's per-test lines and its summary lines.
#[derive(Debug, Default, PartialEq)]
struct LibtestRun {
    /// Sums of the `test result:` lines.
    passed: usize,
    failed: usize,
    ignored: usize,
    /// Tests reported `ok` or `FAILED` by name.
    ran: Vec<String>,
    /// `(test, reason)` of each `ignored` line (reason "no reason given" when bare).
    ignored_tests: Vec<(String, String)>,
    /// `(test, reason)` of each test that ran but reported itself skipped (libtest counted it
    /// as passed).
    skipped_at_run_time: Vec<(String, String)>,
}

impl LibtestRun {
    /// Moves the tests that skipped themselves at run time from passed to skipped.
    fn tally_into(&self, tally: &mut Tally) {
        tally.passed += self.passed.saturating_sub(self.skipped_at_run_time.len());
        tally.failed += self.failed;
        for (name, reason) in &self.skipped_at_run_time {
            tally.skip(format!("host: {name}"), reason.clone());
        }
    }

    /// Takes in one line of libtest's output.
    fn line(&mut self, line: &str) {
        // "test result: ok. 29 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            let number = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        let part = part.trim();
                        let part = part.rsplit(". ").next().unwrap_or(part);
                        part.strip_suffix(word)?.trim().parse::<usize>().ok()
                    })
                    .unwrap_or(0)
            };
            self.passed += number("passed");
            self.failed += number("failed");
            self.ignored += number("ignored");
            return;
        }
        // "test NAME ... ok", "test NAME ... FAILED", "test NAME ... ignored, REASON"
        let Some((name, outcome)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.rsplit_once(" ... "))
        else {
            return;
        };
        if outcome == "ok" || outcome == "FAILED" {
            self.ran.push(name.to_string());
        } else if let Some(rest) = outcome.strip_prefix("ignored") {
            let reason = rest.trim_start_matches(',').trim();
            let reason = if reason.is_empty() {
                "no reason given"
            } else {
                reason
            };
            self.ignored_tests
                .push((name.to_string(), reason.to_string()));
        }
    }
}

/// Runs `cargo test --workspace` with `extra` libtest arguments, streaming its output; returns
/// what libtest reported and whether cargo succeeded.
fn cargo_test(
    kernel: &std::path::Path,
    bzimage: Option<&std::path::Path>,
    extra: &[String],
) -> Result<(LibtestRun, bool), String> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if let Some(path) = bzimage {
        command.env("LULL_BZIMAGE", path);
    }
    command
        .current_dir(kernel::repo_root())
        .env("LULL_KERNEL", kernel)
        .args(["test", "--workspace", "--no-fail-fast", "--color", "never"]);
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    // Tests that find at run time that they cannot check anything say so here (see
    // `vmm/tests/common::skip`); libtest alone would count them as passed.
    let skip_log = std::env::temp_dir().join(format!("lull-skips-{}", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    command.env("LULL_SKIP_LOG", &skip_log);
    let (mut run, success) = stream_libtest(&mut command)?;
    let text = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let _ = std::fs::remove_file(&skip_log);
    for line in text.lines() {
        let (name, reason) = line.split_once('\t').unwrap_or((line, "no reason given"));
        run.skipped_at_run_time
            .push((name.to_string(), reason.to_string()));
    }
    Ok((run, success))
}

/// Runs a `cargo test` command, streaming its output and reading libtest's lines; returns what
/// libtest reported and whether cargo succeeded.
fn stream_libtest(command: &mut Command) -> Result<(LibtestRun, bool), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut run = LibtestRun::default();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        run.line(&line);
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    Ok((run, status.success()))
}

/// Why xtask cannot run an ignored test whose `#[ignore = REASON]` names what it needs, or
/// `None` when it can (KVM usable, `LULL_BZIMAGE` found; `LULL_KERNEL` is always set).
fn cannot_run(reason: &str, kvm: &Result<(), String>, bzimage: bool) -> Option<String> {
    let needs_kvm = reason.contains("/dev/kvm");
    let needs_bzimage = reason.contains("LULL_BZIMAGE");
    if !needs_kvm && !needs_bzimage {
        return Some(reason.to_string());
    }
    if let (true, Err(why)) = (needs_kvm, kvm) {
        return Some(format!("{reason}: {why}"));
    }
    if needs_bzimage && !bzimage {
        return Some(format!(
            "{reason}: no Linux image (`cargo xtask bench --filter linux` fetches one)"
        ));
    }
    None
}

/// Model-checks the wait/wake protocol of the sleeping locks (`lull-waitqueue`) with loom: every
/// interleaving of its tests' threads within the preemption bound, including the regression case
/// that shows the old join-then-prepare order losing a wake-up. Its own target directory keeps
/// `--cfg loom` from rebuilding the normal one.
fn loom_pass(tally: &mut Tally) -> Result<(), String> {
    println!("== tier 1, loom: RUSTFLAGS=\"--cfg loom\" cargo test -p lull-waitqueue --release --test loom");
    let root = kernel::repo_root();
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(&root)
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", root.join("target/loom"))
        .args([
            "test",
            "-p",
            "lull-waitqueue",
            "--release",
            "--test",
            "loom",
        ])
        .args(["--color", "never"]);
    let (run, success) = stream_libtest(&mut command)?;
    tally.passed += run.passed;
    tally.failed += run.failed;
    if run.failed > 0 {
        tally
            .failures
            .push(format!("host: {} loom test(s) failed", run.failed));
    } else if !success || run.passed == 0 {
        tally.fail("host: the loom tests did not run (build error?)".into());
    }
    Ok(())
}

/// Runs `cargo test` on the host workspace twice: every test not ignored, then (with
/// `--ignored`) the ignored tests whose needs this machine meets (KVM, a bzImage). Ignored tests
/// left out are counted as skipped, with their reason.
fn host_tier(tally: &mut Tally) -> Result<(), String> {
    println!("== tier 1: host tests (cargo test --workspace), VMM integration tests on /dev/kvm");
    // The VMM's integration tests boot the real kernel (ignored, so skipped, without KVM).
    let kernel = kernel::build(&Variant::shell(true))?;
    let kvm = kvm_usable();
    match &kvm {
        Ok(()) => println!(
            "KVM tests: /dev/kvm usable; they run in a second pass (-- --ignored), booting {} (LULL_KERNEL)",
            kernel.display()
        ),
        Err(why) => println!("KVM tests: SKIPPED ({why})"),
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
    let (first, success) = cargo_test(&kernel, bzimage.as_deref(), &[])?;
    first.tally_into(tally);
    if !success && first.failed == 0 {
        tally.fail("host: cargo test failed without a failing test (build error?)".into());
    } else if first.failed > 0 {
        tally
            .failures
            .push(format!("host: {} test(s) failed", first.failed));
    }
    if first.ignored != first.ignored_tests.len() {
        tally.fail(format!(
            "host: libtest counted {} ignored tests but named {}",
            first.ignored,
            first.ignored_tests.len()
        ));
    }
    loom_pass(tally)?;
    let mut runnable = Vec::new();
    for (name, reason) in &first.ignored_tests {
        match cannot_run(reason, &kvm, bzimage.is_some()) {
            Some(why) => tally.skip(format!("host: {name}"), why),
            None => runnable.push(name.clone()),
        }
    }
    if runnable.is_empty() {
        return Ok(());
    }
    println!(
        "== tier 1, second pass: {} ignored test(s) this machine can run",
        runnable.len()
    );
    let mut extra = vec!["--ignored".to_string(), "--exact".to_string()];
    extra.extend(runnable.iter().cloned());
    let (second, success) = cargo_test(&kernel, bzimage.as_deref(), &extra)?;
    second.tally_into(tally);
    if !success && second.failed == 0 {
        tally.fail("host: cargo test --ignored failed without a failing test".into());
    } else if second.failed > 0 {
        tally.failures.push(format!(
            "host: {} KVM test(s) failed (second pass)",
            second.failed
        ));
    }
    for name in runnable.iter().filter(|name| !second.ran.contains(name)) {
        tally.fail(format!("host: {name} did not run in the --ignored pass"));
    }
    Ok(())
}

/// One in-kernel test suite: a build booted on a machine, and the tests it is expected to
/// skip there (the kernel prints `ktest NAME ... skipped: WHY` for those).
struct KernelSuite {
    label: &'static str,
    features: &'static [&'static str],
    machine: Machine,
    cpus: u32,
    /// Kernel command line (`nopv`: the native path forced even where KVM is present).
    append: &'static str,
    /// More QEMU arguments (devices).
    extra: &'static [&'static str],
}

impl KernelSuite {
    /// The tests this suite's machine cannot run: the groups below that microvm lacks, and
    /// those needing more CPUs than the suite has.
    fn skipped_tests(&self) -> Vec<&'static str> {
        let mut groups: Vec<&[&str]> = Vec::new();
        if self.machine == Machine::Microvm {
            groups.extend([
                &HPET_TESTS[..],
                &PCI_TESTS,
                &SMBUS_TESTS,
                &PARPORT_TESTS,
                &AC97_TESTS,
                &HDA_TESTS,
            ]);
        }
        if self.cpus < 2 {
            groups.push(&NEEDS_2_CPUS);
        }
        if self.cpus < 3 {
            groups.push(&NEEDS_3_CPUS);
        }
        groups.into_iter().flatten().copied().collect()
    }
}

use qemu::{KTEST_DEVICES_MMIO, KTEST_DEVICES_PCI};

/// microvm has no HPET (nor an ACPI PM timer): the tests that fire the HPET comparator, that
/// expect the HPET among the clock devices, or that time the TSC against a fixed-rate clock
/// cannot run there.
const HPET_TESTS: [&str; 7] = [
    "clocksources_count_at_their_rate",
    "q35_has_lapic_hpet_and_pit",
    "threaded_irq_handles_the_hpet_comparator",
    "shared_line_runs_every_action_and_free_irq_takes_one",
    "free_irq_waits_for_the_thread_and_stops_it",
    "level_oneshot_line_stays_masked_until_its_thread_ran",
    "irq_affinity_moves_the_hpet_line",
];
/// microvm (as the suites start it) has no PCI bus: no MCFG, no `_PRT`, no MSI-capable function.
const PCI_TESTS: [&str; 6] = [
    "ecam_and_conf1_read_the_same_config_space",
    "intx_routes_through_prt",
    "msix_vectors_allocate_move_and_free",
    "msi_vectors_allocate_and_free",
    "pci_functions_are_devices_of_the_pci_bus",
    "pci_driver_binds_unbinds_and_leaks_nothing",
];
/// microvm has no PCI, hence no ICH9 SMBus controller and no EEPROMs behind it.
const SMBUS_TESTS: [&str; 4] = [
    "smbus_binds_with_eight_eeprom_clients",
    "eeprom_write_read_back_completes_by_interrupt",
    "smbus_unbind_bind_1000_times_leaks_nothing",
    "smbus_probe_fails_cleanly_at_every_acquisition",
];
/// microvm has no ISA parallel port (`PNP0400`), hence no parport GPIO chip.
const PARPORT_TESTS: [&str; 3] = [
    "parport_lines_have_one_owner_and_outlive_no_unbind",
    "parport_unbind_bind_200_times_leaks_nothing",
    "parport_probe_fails_cleanly_at_every_acquisition",
];
/// microvm has no PCI, hence no AC'97 card.
const AC97_TESTS: [&str; 3] = [
    "ac97_plays_a_short_stream_by_interrupts",
    "ac97_unbind_bind_100_times_leaks_nothing",
    "ac97_probe_fails_cleanly_at_every_acquisition",
];
/// microvm has no PCI, hence no HD Audio controller (`hda_format_word_is_the_spec_encoding`
/// needs no device and runs everywhere).
const HDA_TESTS: [&str; 5] = [
    "hda_codec_answers_vendor_id",
    "hda_plays_and_captures_by_interrupts",
    "hda_late_refill_counts_underruns",
    "hda_unbind_bind_100_times_leaks_nothing",
    "hda_probe_fails_cleanly_at_every_acquisition",
];
/// Tests with nothing to check on one CPU (they act on the other CPUs).
const NEEDS_2_CPUS: [&str; 3] = [
    "reschedule_ipi_is_delivered",
    "secondary_cpus_idle_with_tick_stopped",
    "tsc_is_synchronized_across_cpus",
];
/// Two CPUs queue behind a lock held by a third.
const NEEDS_3_CPUS: [&str; 1] = ["ticket_spinlock_serves_cpus_in_arrival_order"];

/// Every kernel suite with the skips it declares. A skip that is not declared, and a declared
/// skip that did not happen (the test ran, or no longer exists), fail the suite: edit the
/// `skips` here when a test gains or loses what it needs.
const KERNEL_SUITES: &[KernelSuite] = &[
    KernelSuite {
        label: "q35",
        features: &["ktest"],
        machine: Machine::Q35,
        cpus: 1,
        append: "",
        extra: KTEST_DEVICES_PCI,
    },
    KernelSuite {
        label: "microvm",
        features: &["ktest"],
        machine: Machine::Microvm,
        cpus: 1,
        append: "",
        extra: KTEST_DEVICES_MMIO,
    },
    KernelSuite {
        label: "q35 zone-dma",
        features: &["ktest", "zone-dma"],
        machine: Machine::Q35,
        cpus: 1,
        append: "",
        extra: KTEST_DEVICES_PCI,
    },
    KernelSuite {
        label: "q35 smp4",
        features: &["ktest"],
        machine: Machine::Q35,
        cpus: 4,
        append: "",
        extra: KTEST_DEVICES_PCI,
    },
    KernelSuite {
        label: "microvm smp2 nopv",
        features: &["ktest"],
        machine: Machine::Microvm,
        cpus: 2,
        // The transport given on the command line as well as in ACPI (microvm's last slot).
        append: "nopv virtio_mmio.device=512@0xfeb02e00:47",
        extra: KTEST_DEVICES_MMIO,
    },
];

/// What one kernel suite's console said, checked against its declared skips.
#[derive(Debug, Default, PartialEq)]
struct KtestReport {
    passed: usize,
    failed: usize,
    /// `(test, reason)` for each `ktest NAME ... skipped: REASON` line.
    skipped: Vec<(String, String)>,
    /// Whether the summary line carried a skipped count (kernels before skip reporting print
    /// only `N passed, N failed`).
    reports_skips: bool,
    /// What is wrong beyond failed tests: no summary, undeclared or stale skips.
    problems: Vec<String>,
}

/// `N passed, N failed` or `N passed, N failed, N skipped` (after an optional log prefix
/// ending in `] `).
fn parse_ktest_summary(line: &str) -> Option<(usize, usize, Option<usize>)> {
    let text = line.rsplit("] ").next().unwrap_or(line).trim();
    let parts: Vec<&str> = text.split(", ").collect();
    let count = |part: &str, word: &str| -> Option<usize> {
        let (number, rest) = part.split_once(' ')?;
        if rest != word {
            return None;
        }
        number.parse().ok()
    };
    match parts.as_slice() {
        [p, f] => Some((count(p, "passed")?, count(f, "failed")?, None)),
        [p, f, s] => Some((
            count(p, "passed")?,
            count(f, "failed")?,
            Some(count(s, "skipped")?),
        )),
        _ => None,
    }
}

/// Reads a kernel suite's output (`ktest NAME ... ok`, `... FAILED: WHY`, `... skipped: WHY`,
/// then the summary) and checks its skips against `declared`.
fn check_ktest_output(output: &str, declared: &[&str]) -> KtestReport {
    let mut report = KtestReport::default();
    let mut ran = Vec::new();
    for line in output.lines() {
        let Some((name, outcome)) = line
            .split_once("ktest ")
            .and_then(|(_, rest)| rest.split_once(" ... "))
        else {
            continue;
        };
        if let Some(reason) = outcome.strip_prefix("skipped") {
            let reason = reason.trim_start_matches(':').trim();
            report.skipped.push((name.to_string(), reason.to_string()));
        } else if outcome == "ok" || outcome.starts_with("FAILED") {
            ran.push(name.to_string());
        }
    }
    let summary = output.lines().rev().find_map(parse_ktest_summary);
    let Some((passed, failed, skipped)) = summary else {
        report
            .problems
            .push("no summary line `N passed, N failed, N skipped`".into());
        return report;
    };
    report.passed = passed;
    report.failed = failed;
    report.reports_skips = skipped.is_some();
    if skipped.is_none() {
        report
            .problems
            .push("the summary line has no skipped count (`N passed, N failed, N skipped`)".into());
    }
    if let Some(skipped) = skipped {
        if skipped != report.skipped.len() {
            report.problems.push(format!(
                "the summary counts {skipped} skipped but {} skip lines were printed",
                report.skipped.len()
            ));
        }
    }
    for (name, reason) in &report.skipped {
        if !declared.contains(&name.as_str()) {
            report.problems.push(format!(
                "{name} skipped ({reason}) but the suite does not declare it (KERNEL_SUITES in xtask/src/main.rs)"
            ));
        }
    }
    if report.reports_skips {
        for name in declared {
            if ran.iter().any(|r| r == name) {
                report.problems.push(format!(
                    "{name} is declared skipped but ran: remove it from the suite's skips (KERNEL_SUITES in xtask/src/main.rs)"
                ));
            } else if !report.skipped.iter().any(|(s, _)| s == name) {
                report.problems.push(format!(
                    "{name} is declared skipped but the kernel printed no line for it (renamed or removed?)"
                ));
            }
        }
    }
    report
}

/// Boots test builds of the kernel and reads their per-test lines, their
/// `N passed, N failed, N skipped` line and exit status.
fn kernel_tier(tally: &mut Tally) -> Result<(), String> {
    println!("== tier 2: in-kernel tests (QEMU TCG)");
    for suite in KERNEL_SUITES {
        let (label, cpus) = (suite.label, suite.cpus);
        let elf = kernel::build(&Variant {
            features: suite.features.to_vec(),
            release: true,
        })?;
        let mut config = QemuConfig::new(&elf);
        config.machine = suite.machine;
        config.memory_mib = 512;
        config.cpus = cpus;
        config.append = suite.append.to_string();
        config.extra = suite.extra.iter().map(|a| a.to_string()).collect();
        let mut guest = Guest::spawn(&config)?;
        let code = guest.wait_exit(Duration::from_secs(120))?;
        let output = guest.output();
        for line in output.lines().filter(|l| l.contains("ktest ")) {
            println!("  [{label}] {}", line.split("] ").nth(1).unwrap_or(line));
        }
        let report = check_ktest_output(&output, &suite.skipped_tests());
        tally.passed += report.passed;
        tally.failed += report.failed;
        for (name, reason) in &report.skipped {
            tally.skip(format!("kernel [{label}]: {name}"), reason.clone());
        }
        for problem in &report.problems {
            tally.fail(format!("kernel [{label}]: {problem}"));
        }
        let all_online = format!("ktest smp: {cpus} CPUs online of {cpus} possible");
        if !output.contains(&all_online) {
            tally.fail(format!("kernel [{label}]: no line {all_online:?}"));
        }
        let (passed, failed) = (report.passed, report.failed);
        if code != 33 || failed > 0 || passed == 0 {
            tally.fail(format!(
                "kernel [{label}]: exit status {code}, {passed} passed, {failed} failed"
            ));
            println!("{output}");
        }
        println!(
            "  [{label}] {passed} passed, {failed} failed, {} skipped (QEMU status {code})",
            report.skipped.len()
        );
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
            Err(e2e::NotPassed::Skipped(why)) => {
                println!("test e2e::{} ... skipped: {why}", test.name);
                tally.skip(format!("e2e::{}", test.name), why);
            }
            Err(e2e::NotPassed::Failed(why)) => {
                println!("test e2e::{} ... FAILED\n{why}", test.name);
                tally.fail(format!("e2e::{}", test.name));
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
    for (test, reason) in &tally.skipped {
        println!("SKIPPED: {test}: {reason}");
    }
    for failure in &tally.failures {
        println!("FAILED: {failure}");
    }
    println!("{}", closing_line(&tally));
    if tally.failed == 0 && tally.passed > 0 {
        Ok(())
    } else {
        Err(String::new())
    }
}

/// The line `cargo xtask test` ends with.
fn closing_line(tally: &Tally) -> String {
    format!(
        "xtask: {} passed, {} failed, {} skipped",
        tally.passed,
        tally.failed,
        tally.skipped.len()
    )
}

const BENCH_PARTS: &[&str] = &[
    "boot", "idle", "latency", "linux", "scale", "smp", "vmm", "migrate", "lazy", "pvops", "blk",
    "tcp", "tap", "sound",
];

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
    if wants("blk") {
        for row in bench::block_throughput()? {
            record(row);
        }
    }
    if wants("tcp") {
        for row in bench::tcp_throughput()? {
            record(row);
        }
    }
    if wants("sound") {
        for row in bench::sound_playback()? {
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
    if wants("migrate") {
        for row in bench::migrate(&shell, options.runs)? {
            record(row);
        }
    }
    if wants("lazy") {
        for row in bench::lazy(&shell, options.runs)? {
            record(row);
        }
    }
    if wants("tap") {
        for row in bench::tap(&shell)? {
            record(row);
        }
    }
    if wants("pvops") {
        for row in bench::pvops(&out_dir, options.runs.max(1))? {
            record(row);
        }
    }
    let path = out_dir.join("results.txt");
    std::fs::write(&path, rows.join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("xtask: results written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libtest(text: &str) -> LibtestRun {
        let mut run = LibtestRun::default();
        for line in text.lines() {
            run.line(line);
        }
        run
    }

    #[test]
    fn libtest_output_gives_counts_and_ignored_reasons() {
        let run = libtest(
            "running 4 tests
test a::works ... ok
test vstate::vm::tests::round_trip ... ignored, needs /dev/kvm
test bare ... ignored
test b::breaks ... FAILED
test src/lib.rs - f (line 3) ... ok
test result: FAILED. 2 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.1s
test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 7 filtered out; finished in 0.0s
",
        );
        assert_eq!((run.passed, run.failed, run.ignored), (2, 1, 2));
        assert_eq!(
            run.ran,
            ["a::works", "b::breaks", "src/lib.rs - f (line 3)"]
        );
        assert_eq!(
            run.ignored_tests,
            [
                (
                    "vstate::vm::tests::round_trip".to_string(),
                    "needs /dev/kvm".to_string()
                ),
                ("bare".to_string(), "no reason given".to_string()),
            ]
        );
    }

    #[test]
    fn tests_that_skip_themselves_count_as_skipped_not_passed() {
        let mut run = libtest(
            "test a ... ok
test b ... ok
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s
",
        );
        run.skipped_at_run_time
            .push(("b".to_string(), "no TAP device".to_string()));
        let mut tally = Tally::default();
        run.tally_into(&mut tally);
        assert_eq!((tally.passed, tally.failed), (1, 0));
        assert_eq!(
            tally.skipped,
            [("host: b".to_string(), "no TAP device".to_string())]
        );
    }

    #[test]
    fn ignored_tests_run_only_when_their_needs_are_met() {
        let kvm: Result<(), String> = Ok(());
        let no_kvm: Result<(), String> = Err("LULL_NO_KVM is set".into());
        assert_eq!(cannot_run("needs /dev/kvm", &kvm, false), None);
        assert_eq!(
            cannot_run("needs /dev/kvm", &no_kvm, true).as_deref(),
            Some("needs /dev/kvm: LULL_NO_KVM is set")
        );
        assert_eq!(
            cannot_run("needs /dev/kvm and LULL_KERNEL", &kvm, false),
            None
        );
        assert!(cannot_run("needs /dev/kvm and LULL_BZIMAGE", &kvm, false)
            .is_some_and(|why| why.contains("no Linux image")));
        assert_eq!(
            cannot_run("needs /dev/kvm and LULL_BZIMAGE", &kvm, true),
            None
        );
        assert_eq!(
            cannot_run("slow", &kvm, true).as_deref(),
            Some("slow"),
            "other ignored tests stay skipped"
        );
    }

    #[test]
    fn kernel_summary_lines_old_and_new() {
        assert_eq!(
            parse_ktest_summary("[    2.5] 40 passed, 1 failed"),
            Some((40, 1, None))
        );
        assert_eq!(
            parse_ktest_summary("38 passed, 0 failed, 3 skipped"),
            Some((38, 0, Some(3)))
        );
        assert_eq!(parse_ktest_summary("ktest smp: 1 passed, 2 failed"), None);
        assert_eq!(parse_ktest_summary("3 passed"), None);
    }

    const NEW_KERNEL: &str = "\
[ 1.0] ktest heap ... ok
[ 1.1] ktest smp: 1 CPUs online of 1 possible (1 in the MADT)
[ 1.2] ktest hpet_a ... skipped: no HPET
[ 1.3] ktest ticket ... skipped: needs 3 CPUs; 1 online
[ 1.4] ktest broken ... FAILED: went wrong
2 passed, 1 failed, 2 skipped
";

    #[test]
    fn declared_skips_are_counted() {
        let report = check_ktest_output(NEW_KERNEL, &["hpet_a", "ticket"]);
        assert_eq!((report.passed, report.failed), (2, 1));
        assert!(report.reports_skips);
        assert_eq!(
            report.skipped,
            [
                ("hpet_a".to_string(), "no HPET".to_string()),
                ("ticket".to_string(), "needs 3 CPUs; 1 online".to_string()),
            ]
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn an_undeclared_skip_is_a_problem() {
        let report = check_ktest_output(NEW_KERNEL, &["hpet_a"]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0]
            .contains("ticket skipped (needs 3 CPUs; 1 online) but the suite does not declare it"));
    }

    #[test]
    fn a_declared_skip_that_ran_or_vanished_is_a_problem() {
        let report = check_ktest_output(NEW_KERNEL, &["hpet_a", "ticket", "heap", "gone"]);
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(report.problems[0].contains("heap is declared skipped but ran"));
        assert!(
            report.problems[1].contains("gone is declared skipped but the kernel printed no line")
        );
    }

    #[test]
    fn a_wrong_skip_count_or_no_summary_is_a_problem() {
        let text = NEW_KERNEL.replace("2 skipped", "3 skipped");
        let report = check_ktest_output(&text, &["hpet_a", "ticket"]);
        assert!(report.problems[0].contains("counts 3 skipped but 2 skip lines"));
        let report = check_ktest_output("[ 1.0] ktest heap ... ok\n", &[]);
        assert!(report.problems[0].contains("no summary line"));
    }

    #[test]
    fn a_summary_without_a_skipped_count_is_a_problem() {
        let report = check_ktest_output("ktest hpet_a ... ok\n1 passed, 0 failed\n", &["hpet_a"]);
        assert_eq!((report.passed, report.failed), (1, 0));
        assert!(!report.reports_skips);
        assert!(
            report.problems[0].contains("no skipped count"),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn every_suite_declares_known_tests_once() {
        for suite in KERNEL_SUITES {
            let skips = suite.skipped_tests();
            for (index, name) in skips.iter().enumerate() {
                assert!(
                    !skips[..index].contains(name),
                    "{}: {name} twice",
                    suite.label
                );
            }
        }
    }

    #[test]
    fn closing_line_names_all_three_counts() {
        let mut tally = Tally {
            passed: 5,
            ..Tally::default()
        };
        tally.fail("x".into());
        tally.skip("y".into(), "why".into());
        assert_eq!(closing_line(&tally), "xtask: 5 passed, 1 failed, 1 skipped");
    }
}
