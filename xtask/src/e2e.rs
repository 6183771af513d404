//! End-to-end tests: boot the real kernel under QEMU (TCG), drive its serial shell, and assert
//! on what it prints and on how QEMU exits.

use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::kernel::{self, Variant};
use crate::qemu::{Guest, Machine, QemuConfig};
use crate::trace::Counts;

const BOOT: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(15);

/// Why an end-to-end test did not pass.
#[derive(Debug, PartialEq)]
pub enum NotPassed {
    Failed(String),
    /// The test cannot run on this machine (no KVM, no TAP rights, ...): counted as skipped,
    /// with the reason. No test needs to today; one that does returns it with [`skip!`].
    #[allow(dead_code)]
    Skipped(String),
}

impl From<String> for NotPassed {
    fn from(why: String) -> Self {
        NotPassed::Failed(why)
    }
}

impl From<&str> for NotPassed {
    fn from(why: &str) -> Self {
        NotPassed::Failed(why.to_string())
    }
}

type TestResult = Result<(), NotPassed>;

macro_rules! ensure {
    ($condition:expr, $($message:tt)*) => {
        if !$condition {
            return Err(NotPassed::Failed(format!($($message)*)));
        }
    };
}

/// Ends a test that cannot run here as skipped, with the reason.
#[allow(unused_macros)]
macro_rules! skip {
    ($($reason:tt)*) => {
        return Err(NotPassed::Skipped(format!($($reason)*)))
    };
}

/// One end-to-end test.
pub struct Test {
    pub name: &'static str,
    pub run: fn() -> TestResult,
}

pub const TESTS: &[Test] = &[
    Test {
        name: "boot_to_prompt_and_poweroff_q35",
        run: boot_to_prompt_and_poweroff_q35,
    },
    Test {
        name: "boot_to_prompt_and_poweroff_microvm",
        run: boot_to_prompt_and_poweroff_microvm,
    },
    Test {
        name: "hwclock_reads_qemus_rtc_through_rtc_cmos_and_unbind_gives_the_ports_back",
        run: hwclock_reads_qemus_rtc_through_rtc_cmos_and_unbind_gives_the_ports_back,
    },
    Test {
        name: "no_cmos_clock_is_reported_and_boot_continues",
        run: no_cmos_clock_is_reported_and_boot_continues,
    },
    Test {
        name: "piped_commands_meminfo_matches_ram",
        run: piped_commands_meminfo_matches_ram,
    },
    Test {
        name: "hundred_kib_command_line_on_microvm",
        run: hundred_kib_command_line_on_microvm,
    },
    Test {
        name: "malformed_parameters_warn_and_boot_continues",
        run: malformed_parameters_warn_and_boot_continues,
    },
    Test {
        name: "zone_dma_only_when_built",
        run: zone_dma_only_when_built,
    },
    Test {
        name: "line_editing_and_unknown_command",
        run: line_editing_and_unknown_command,
    },
    Test {
        name: "procfs_cat_and_echo",
        run: procfs_cat_and_echo,
    },
    Test {
        name: "dmesg_holds_the_boot_log",
        run: dmesg_holds_the_boot_log,
    },
    Test {
        name: "exception_report_and_nonzero_exit",
        run: exception_report_and_nonzero_exit,
    },
    Test {
        name: "panic_reports_location_and_exits_nonzero",
        run: panic_reports_location_and_exits_nonzero,
    },
    Test {
        name: "power_button_from_qemu_system_powerdown",
        run: power_button_from_qemu_system_powerdown,
    },
    Test {
        name: "microvm_power_button_through_the_ged",
        run: microvm_power_button_through_the_ged,
    },
    Test {
        name: "q35_acpi_namespace_in_procfs",
        run: q35_acpi_namespace_in_procfs,
    },
    Test {
        name: "lspci_matches_qemu_info_pci",
        run: lspci_matches_qemu_info_pci,
    },
    Test {
        name: "microvm_virtio_devices_match_qemu_info_qtree",
        run: microvm_virtio_devices_match_qemu_info_qtree,
    },
    Test {
        name: "smbus_eeprom_write_read_seen_in_qemu_i2c_trace",
        run: smbus_eeprom_write_read_seen_in_qemu_i2c_trace,
    },
    Test {
        name: "parport_gpio_lines_seen_in_qemu_trace",
        run: parport_gpio_lines_seen_in_qemu_trace,
    },
    Test {
        name: "virtio_gpio_lines_seen_in_the_vhost_user_backend_log",
        run: virtio_gpio_lines_seen_in_the_vhost_user_backend_log,
    },
    Test {
        name: "ac97_sine_in_qemu_wav_is_bit_exact_and_mute_is_silence",
        run: ac97_sine_in_qemu_wav_is_bit_exact_and_mute_is_silence,
    },
    Test {
        name: "hda_dapm_seen_in_qemu_verbs_gpio_log_and_wav",
        run: hda_dapm_seen_in_qemu_verbs_gpio_log_and_wav,
    },
    Test {
        name: "hda_pattern_and_volume_in_qemu_wav",
        run: hda_pattern_and_volume_in_qemu_wav,
    },
    Test {
        name: "hda_and_virtio_gpio_unbind_bind_leak_nothing_and_the_amp_switches_again",
        run: hda_and_virtio_gpio_unbind_bind_leak_nothing_and_the_amp_switches_again,
    },
    Test {
        name: "hda_stream_in_qemu_wav_is_bit_exact",
        run: hda_stream_in_qemu_wav_is_bit_exact,
    },
    Test {
        name: "idle_nohz_takes_no_timer_interrupts",
        run: idle_nohz_takes_no_timer_interrupts,
    },
    Test {
        name: "idle_microvm_nohz_takes_no_timer_interrupts",
        run: idle_microvm_nohz_takes_no_timer_interrupts,
    },
    Test {
        name: "virtio_rng_on_microvm",
        run: virtio_rng_on_microvm,
    },
    Test {
        name: "virtio_net_on_microvm_dhcp_ping_and_http",
        run: virtio_net_on_microvm_dhcp_ping_and_http,
    },
    Test {
        name: "virtio_net_pci_on_q35_dhcp_ping_and_http",
        run: virtio_net_pci_on_q35_dhcp_ping_and_http,
    },
    Test {
        name: "virtio_blk_on_q35_and_microvm_hashes_writes_and_flushes",
        run: virtio_blk_on_q35_and_microvm_hashes_writes_and_flushes,
    },
    Test {
        name: "shared_intx_line_serves_smbus_rng_and_blk_through_unbind_bind",
        run: shared_intx_line_serves_smbus_rng_and_blk_through_unbind_bind,
    },
    Test {
        name: "virtio_net_unbind_bind_leaks_nothing_and_traffic_resumes",
        run: virtio_net_unbind_bind_leaks_nothing_and_traffic_resumes,
    },
    Test {
        name: "virtio_net_64mib_each_way_with_equal_sha256",
        run: virtio_net_64mib_each_way_with_equal_sha256,
    },
    Test {
        name: "virtio_rng_on_q35_pci",
        run: virtio_rng_on_q35_pci,
    },
    Test {
        name: "idle_nohz_off_ticks_at_hz",
        run: idle_nohz_off_ticks_at_hz,
    },
    Test {
        name: "timer_list_and_timer_stats_show_a_shell_timer",
        run: timer_list_and_timer_stats_show_a_shell_timer,
    },
    Test {
        name: "clocksource_override_and_bad_name",
        run: clocksource_override_and_bad_name,
    },
    Test {
        name: "sleep_and_latency_commands",
        run: sleep_and_latency_commands,
    },
    Test {
        name: "smp_boots_with_1_2_4_8_cpus",
        run: smp_boots_with_1_2_4_8_cpus,
    },
    Test {
        name: "smp_nr_cpus_and_maxcpus",
        run: smp_nr_cpus_and_maxcpus,
    },
    Test {
        name: "idle_smp4_nohz_takes_no_timer_interrupts",
        run: idle_smp4_nohz_takes_no_timer_interrupts,
    },
    Test {
        name: "bench_commands_report_figures",
        run: bench_commands_report_figures,
    },
    Test {
        name: "threadirqs_serial_and_power_button_with_irq_affinity",
        run: threadirqs_serial_and_power_button_with_irq_affinity,
    },
    Test {
        name: "memtouch_fill_sum_and_apfbench",
        run: memtouch_fill_sum_and_apfbench,
    },
];

fn shell_kernel() -> Result<std::path::PathBuf, String> {
    kernel::build(&Variant::shell(true))
}

/// Boots to the prompt, then waits for the boot-time device probe (`udevadm settle`): the
/// probe runs beside the shell, and its drivers' messages would otherwise land in the output
/// of whichever command a test runs first.
fn boot(config: &QemuConfig) -> Result<Guest, String> {
    let mut guest = boot_unsettled(config)?;
    guest.run("udevadm settle", STEP)?;
    Ok(guest)
}

/// Boots to the prompt and no further (tests of what the shell sees while the probe runs).
fn boot_unsettled(config: &QemuConfig) -> Result<Guest, String> {
    let mut guest = Guest::spawn(config)?;
    guest.expect("lull> ", BOOT)?;
    Ok(guest)
}

fn poweroff_exits_zero(guest: &mut Guest) -> TestResult {
    guest.send(b"poweroff\n")?;
    let code = guest.wait_exit(STEP)?;
    ensure!(code == 0, "poweroff: QEMU exited with {code}, expected 0");
    Ok(())
}

fn boot_and_poweroff(machine: Machine) -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = machine;
    let mut guest = Guest::spawn(&config)?;
    let banner = guest.expect("lull> ", BOOT)?;
    ensure!(
        banner.contains("Lull version 0.1.0"),
        "no banner in:\n{banner}"
    );
    let uname = guest.run("uname -a", STEP)?;
    ensure!(
        uname.contains("Lull version") && uname.contains("x86_64"),
        "uname -a: {uname}"
    );
    let uptime = guest.run("uptime", STEP)?;
    ensure!(
        uptime.starts_with("up ") && uptime.contains(" s"),
        "uptime: {uptime}"
    );
    poweroff_exits_zero(&mut guest)
}

fn boot_to_prompt_and_poweroff_q35() -> TestResult {
    boot_and_poweroff(Machine::Q35)
}

fn boot_to_prompt_and_poweroff_microvm() -> TestResult {
    boot_and_poweroff(Machine::Microvm)
}

/// A machine without a CMOS clock (microvm `rtc=off`; lull-vmm and Firecracker have none
/// either): the kernel says so, realtime starts at the epoch, and the shell works. Before the
/// RTC presence check the probe spun a million port reads there (5-6 s of lull-vmm boot).
fn no_cmos_clock_is_reported_and_boot_continues() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = Machine::Microvm;
    config.extra = vec!["-machine".into(), "rtc=off".into()];
    let mut guest = Guest::spawn(&config)?;
    let banner = guest.expect("lull> ", BOOT)?;
    ensure!(
        banner.contains("rtc: no usable CMOS clock; realtime starts at the epoch"),
        "no RTC message in:\n{banner}"
    );
    let date = guest.run("date", STEP)?;
    ensure!(date.contains("1970-01-01"), "date without a clock: {date}");
    let hwclock = guest.run("hwclock", STEP)?;
    ensure!(
        hwclock.contains("hwclock: Cannot access the Hardware Clock via any known method."),
        "hwclock without a clock: {hwclock}"
    );
    poweroff_exits_zero(&mut guest)
}

/// q35's CMOS clock through the `rtc_cmos` driver: `hwclock` agrees with the host's clock (QEMU
/// keeps its RTC on the host's UTC), the claimed ports are `rtc0` in `/proc/ioports`; unbound,
/// `hwclock` reaches no clock and the ports are free; bound again, it reads the time again.
fn hwclock_reads_qemus_rtc_through_rtc_cmos_and_unbind_gives_the_ports_back() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    let host_now = || -> Result<i64, String> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs() as i64)
    };
    let check = |guest: &mut Guest| -> TestResult {
        let before = host_now()?;
        let reply = guest.run("hwclock", STEP)?;
        let after = host_now()?;
        let seconds = reply
            .lines()
            .find_map(|l| parse_utc(&l.trim().replace("+00:00", " UTC")))
            .ok_or_else(|| format!("hwclock: {reply:?}"))?;
        ensure!(
            (before - 2..=after + 2).contains(&seconds),
            "hwclock {reply:?} against the host's {before}..{after}"
        );
        Ok(())
    };
    check(&mut guest)?;
    let ports = guest.run("cat /proc/ioports", STEP)?;
    ensure!(
        ports.lines().any(|l| l.trim() == "0070-0077 : rtc0"),
        "/proc/ioports bound:\n{ports}"
    );
    guest.run(
        "echo PNP0B00:00 > /sys/bus/acpi/drivers/rtc_cmos/unbind",
        STEP,
    )?;
    let unbound = guest.run("hwclock", STEP)?;
    ensure!(
        unbound.contains("Cannot access the Hardware Clock"),
        "hwclock unbound: {unbound}"
    );
    let ports = guest.run("cat /proc/ioports", STEP)?;
    ensure!(!ports.contains("rtc0"), "/proc/ioports unbound:\n{ports}");
    guest.run(
        "echo PNP0B00:00 > /sys/bus/acpi/drivers/rtc_cmos/bind",
        STEP,
    )?;
    check(&mut guest)?;
    poweroff_exits_zero(&mut guest)
}

/// The issue's own check: commands piped into stdin before the prompt appears are not lost;
/// meminfo's zone totals match `-m 512`; `cmdline` reports `length=5`; QEMU exits by itself.
fn piped_commands_meminfo_matches_ram() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.memory_mib = 512;
    config.append = "a=1 b".into();
    let mut guest = Guest::spawn(&config)?;
    guest.send(b"meminfo\ncmdline\npoweroff\n")?;
    let code = guest.wait_exit(BOOT)?;
    let output = guest.output();
    ensure!(code == 0, "QEMU exited with {code}; output:\n{output}");
    let expected_hash = hex(&Sha256::digest(b"a=1 b"));
    ensure!(
        output.contains(&format!("length=5 sha256={expected_hash}")),
        "cmdline line missing:\n{output}"
    );
    let total = output
        .lines()
        .find(|line| line.starts_with("Total "))
        .ok_or_else(|| format!("no Total row in meminfo:\n{output}"))?;
    let present: u64 = total
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad Total row: {total}"))?;
    let present_kib = present * 4;
    // Firmware keeps 640 KiB-1 MiB (VGA and BIOS) for itself; everything else is in a zone.
    ensure!(
        (511 * 1024..=512 * 1024).contains(&present_kib),
        "zones hold {present_kib} KiB, expected 512 MiB less at most 1 MiB of firmware holes"
    );
    let zone_sum: u64 = output
        .lines()
        .filter(|line| line.starts_with("DMA") || line.starts_with("Normal"))
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    ensure!(
        zone_sum == present,
        "per-zone present pages sum to {zone_sum}, total says {present}"
    );
    ensure!(
        output.contains("unknown parameters ignored: a=1 b"),
        "no unknown-parameter warning"
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A command line of exactly 100 KiB (QEMU's argv limit is 128 KiB) arrives intact.
fn hundred_kib_command_line_on_microvm() -> TestResult {
    let mut line = String::new();
    let mut index = 0;
    while line.len() < 100 * 1024 {
        line.push_str(&format!("param{index}=\"value {index} with spaces\" "));
        index += 1;
    }
    line.truncate(100 * 1024 - 8);
    line.push_str(" -- init");
    ensure!(
        line.len() == 100 * 1024,
        "test bug: line is {} bytes",
        line.len()
    );
    let expected = format!(
        "length={} sha256={}",
        line.len(),
        hex(&Sha256::digest(line.as_bytes()))
    );
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = Machine::Microvm;
    config.append = line;
    let mut guest = boot(&config)?;
    let reply = guest.run("cmdline", STEP)?;
    ensure!(
        reply.contains(&expected),
        "expected {expected:?}, got {reply:?}"
    );
    let dmesg = guest.run("dmesg", STEP)?;
    ensure!(
        dmesg.contains("in all)"),
        "unknown-parameter warning not summarised:\n{dmesg}"
    );
    poweroff_exits_zero(&mut guest)
}

fn malformed_parameters_warn_and_boot_continues() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.append = "loglevel=abc mem=12Q quiet=1".into();
    let mut guest = Guest::spawn(&config)?;
    let boot_log = guest.expect("lull> ", BOOT)?;
    for expected in [
        "invalid value \"abc\" for loglevel (expected an integer in 0..=8); using default 7",
        "invalid value \"12Q\" for mem",
        "using default 0",
    ] {
        ensure!(
            boot_log.contains(expected),
            "missing {expected:?} in boot log:\n{boot_log}"
        );
    }
    let uptime = guest.run("uptime", STEP)?;
    ensure!(
        uptime.starts_with("up "),
        "shell broken after bad parameters: {uptime}"
    );
    poweroff_exits_zero(&mut guest)
}

fn dma_row(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|line| line.split_whitespace().next() == Some("DMA"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
}

fn zone_dma_only_when_built() -> TestResult {
    for (features, want_dma) in [(vec![], false), (vec!["zone-dma"], true)] {
        let elf = kernel::build(&Variant {
            features: features.clone(),
            release: true,
        })?;
        let mut guest = boot(&QemuConfig::new(&elf))?;
        let meminfo = guest.run("meminfo", STEP)?;
        match (dma_row(&meminfo), want_dma) {
            (None, false) => {}
            (Some(present), true) => ensure!(present > 3000, "DMA zone has only {present} pages"),
            (row, _) => {
                return Err(NotPassed::Failed(format!(
                    "features {features:?}: DMA row {row:?} in:\n{meminfo}"
                )))
            }
        }
        ensure!(meminfo.contains("DMA32"), "no DMA32 zone:\n{meminfo}");
        poweroff_exits_zero(&mut guest)?;
    }
    Ok(())
}

fn line_editing_and_unknown_command() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    guest.send(b"helq\x7fp\n")?;
    let help = guest.expect("lull> ", STEP)?;
    ensure!(
        help.contains("list commands") && help.contains("poweroff"),
        "help after backspace:\n{help}"
    );
    let reply = guest.run("frobnicate now", STEP)?;
    ensure!(
        reply.trim() == "frobnicate: command not found (try 'help')",
        "unknown command: {reply:?}"
    );
    // \r\n (a terminal) must not run an extra empty command or lose the next one.
    guest.send(b"uptime\r\n")?;
    let reply = guest.expect("lull> ", STEP)?;
    ensure!(reply.contains("up "), "CRLF line: {reply:?}");
    poweroff_exits_zero(&mut guest)
}

fn procfs_cat_and_echo() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    let reply = guest.run("echo 3 > /proc/sys/kernel/printk", STEP)?;
    ensure!(reply.trim().is_empty(), "echo printed {reply:?}");
    let reply = guest.run("cat /proc/sys/kernel/printk", STEP)?;
    ensure!(reply.trim() == "3", "printk level reads {reply:?}");
    let reply = guest.run("echo banana > /proc/sys/kernel/printk", STEP)?;
    ensure!(
        reply.contains("Invalid argument"),
        "bad value accepted: {reply:?}"
    );
    let reply = guest.run("cat /proc/nonexistent", STEP)?;
    ensure!(
        reply.contains("No such file or directory"),
        "missing file: {reply:?}"
    );
    let reply = guest.run("echo x > /proc/version", STEP)?;
    ensure!(
        reply.contains("read-only"),
        "read-only file written: {reply:?}"
    );
    let reply = guest.run("ls /proc", STEP)?;
    ensure!(
        reply.contains("meminfo") && reply.contains("cmdline"),
        "ls /proc: {reply:?}"
    );
    let reply = guest.run("cat /proc/version", STEP)?;
    ensure!(
        reply.starts_with("Lull version"),
        "/proc/version: {reply:?}"
    );
    let reply = guest.run("echo hello world", STEP)?;
    ensure!(reply.trim() == "hello world", "echo: {reply:?}");
    poweroff_exits_zero(&mut guest)
}

fn dmesg_holds_the_boot_log() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    let reply = guest.run("dmesg", STEP)?;
    for expected in ["Lull version", "] mm: ", "ACPI: RSDP", "boot: kernel ready"] {
        ensure!(
            reply.contains(expected),
            "dmesg lacks {expected:?}:\n{reply}"
        );
    }
    poweroff_exits_zero(&mut guest)
}

fn exception_report_and_nonzero_exit() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    guest.send(b"echo c > /proc/sysrq-trigger\n")?;
    let code = guest.wait_exit(STEP)?;
    let output = guest.output();
    for expected in [
        "CPU exception 14: page fault (#PF)",
        "CR2: 0x0000000000000000",
        "RIP: 0x",
        "R15 0x",
        "page not present on read in kernel mode",
        "System halted.",
    ] {
        ensure!(
            output.contains(expected),
            "report lacks {expected:?}:\n{output}"
        );
    }
    ensure!(code == 5, "QEMU exited with {code}, expected 5 (exception)");
    Ok(())
}

fn panic_reports_location_and_exits_nonzero() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    guest.send(b"echo p > /proc/sysrq-trigger\n")?;
    let code = guest.wait_exit(STEP)?;
    let output = guest.output();
    ensure!(
        output.contains("Kernel panic at src/main.rs:") && output.contains("panic requested"),
        "panic report missing:\n{output}"
    );
    ensure!(code == 3, "QEMU exited with {code}, expected 3 (panic)");
    Ok(())
}

/// The control for the tickless checks: the same idle measurement with `nohz=off` (q35, one
/// CPU), taken once per run and shared. It must see the periodic tick at about HZ=250; without
/// it "no timer interrupts" could not be told from a trace that counts nothing.
fn control_run() -> Result<Counts, String> {
    static CONTROL: OnceLock<Result<Counts, String>> = OnceLock::new();
    CONTROL
        .get_or_init(|| {
            crate::bench::measure_lull_idle(&shell_kernel()?, "nohz=off", 10, 1)
                .map(|idle| idle.counts)
        })
        .clone()
}

/// The control run (see [`control_run`]) traced events and saw the periodic tick.
fn check_control(control: Option<&Counts>) -> Result<(), String> {
    let control = control.ok_or(
        "no control run (nohz=off): zero counted interrupts cannot be told from a trace that counts nothing",
    )?;
    control
        .ensure_traced()
        .map_err(|e| format!("control run (nohz=off): {e}"))?;
    let rate = control.per_second(control.lapic_timer);
    if !(200.0..=300.0).contains(&rate) {
        return Err(format!(
            "control run (nohz=off): {rate:.1} LAPIC timer interrupts/s, expected about HZ=250: {}",
            control.describe()
        ));
    }
    Ok(())
}

/// At most one LAPIC timer interrupt in the idle window, counted from a trace that worked (it
/// holds events) and backed by a control run that saw the tick.
fn check_tickless(idle: &Counts, control: Option<&Counts>, what: &str) -> Result<(), String> {
    check_control(control)?;
    idle.ensure_traced().map_err(|e| format!("{what}: {e}"))?;
    if idle.lapic_timer > 1 {
        return Err(format!(
            "{what}: {} LAPIC timer interrupts in the idle window (at most 1): {}",
            idle.lapic_timer,
            idle.describe()
        ));
    }
    Ok(())
}

/// Boots an idle shell on `machine` with `cpus` CPUs and asserts, from QEMU's trace, at most
/// one LAPIC timer interrupt (summed over CPUs) in a 10 s idle window: the dynticks claim,
/// measured from outside.
fn assert_tickless_idle(machine: Machine, cpus: u32) -> TestResult {
    let control = control_run().map_err(|e| format!("control run (nohz=off) failed: {e}"))?;
    let idle = crate::bench::measure_lull_idle_on(machine, &shell_kernel()?, "", 10, cpus)?;
    check_tickless(
        &idle.counts,
        Some(&control),
        &format!("{machine:?} -smp {cpus}"),
    )?;
    Ok(())
}

/// q35 with one CPU, idle with its drivers bound: the parallel port's GPIO chip, the AC'97 card
/// and the HD Audio controller with its codec (on the `none` audio back-end), virtio-rng and a virtio-blk disk (the in-kernel suites'
/// devices), the SMBus with its EEPROMs.
fn idle_nohz_takes_no_timer_interrupts() -> TestResult {
    let control = control_run().map_err(|e| format!("control run (nohz=off) failed: {e}"))?;
    let idle = crate::bench::measure_lull_idle_with(
        Machine::Q35,
        &shell_kernel()?,
        "",
        10,
        1,
        crate::qemu::KTEST_DEVICES_PCI,
    )?;
    check_tickless(
        &idle.counts,
        Some(&control),
        "Q35 -smp 1 with parport GPIO, AC'97, HD Audio, virtio-rng, virtio-blk and the SMBus bound",
    )?;
    Ok(())
}

/// The same measurement with `nohz=off` sees the periodic tick, so the check above can fail.
fn idle_nohz_off_ticks_at_hz() -> TestResult {
    let control = control_run()?;
    check_control(Some(&control))?;
    Ok(())
}

fn timer_list_and_timer_stats_show_a_shell_timer() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    let reply = guest.run("echo 1 > /proc/timer_stats", STEP)?;
    ensure!(reply.trim().is_empty(), "starting timer_stats: {reply:?}");
    let reply = guest.run("timer 60000", STEP)?;
    ensure!(reply.contains("fires in 60000 ms"), "timer: {reply:?}");
    let list = guest.run("cat /proc/timer_list", STEP)?;
    for expected in [
        "Timer List Version: v0.9",
        "shell_timer_fn, S:01, shell_timer_command, shell/1",
        "tick_sched_timer",
        "Clock Event Device: ",
        ".tick_stopped   :",
        "jiffies: ",
    ] {
        ensure!(
            list.contains(expected),
            "timer_list lacks {expected:?}:\n{list}"
        );
    }
    let reply = guest.run("timer 20", STEP)?;
    ensure!(reply.contains("fires in 20 ms"), "timer: {reply:?}");
    guest.run("sleep 0.2", STEP)?;
    let stats = guest.run("cat /proc/timer_stats", STEP)?;
    for expected in [
        "Timer Stats Version: v0.2",
        "Sample period:",
        "shell            shell_timer_command (shell_timer_fn)",
        "total events",
    ] {
        ensure!(
            stats.contains(expected),
            "timer_stats lacks {expected:?}:\n{stats}"
        );
    }
    let reply = guest.run("echo 0 > /proc/timer_stats", STEP)?;
    ensure!(reply.trim().is_empty(), "stopping timer_stats: {reply:?}");
    let reply = guest.run("echo maybe > /proc/timer_stats", STEP)?;
    ensure!(
        reply.contains("Invalid argument"),
        "bad control accepted: {reply:?}"
    );
    let interrupts = guest.run("cat /proc/interrupts", STEP)?;
    ensure!(
        interrupts.contains(" LOC: ") && interrupts.contains("ttyS0"),
        "/proc/interrupts:\n{interrupts}"
    );
    poweroff_exits_zero(&mut guest)
}

fn clocksource_override_and_bad_name() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.append = "clocksource=acpi_pm".into();
    let mut guest = boot(&config)?;
    let reply = guest.run("clocksource", STEP)?;
    ensure!(reply.contains("*acpi_pm"), "acpi_pm not selected:\n{reply}");
    poweroff_exits_zero(&mut guest)?;
    config.append = "clocksource=sundial".into();
    let mut guest = Guest::spawn(&config)?;
    let log = guest.expect("lull> ", BOOT)?;
    ensure!(
        log.contains("sundial"),
        "no warning about the unknown clocksource:\n{log}"
    );
    let reply = guest.run("clocksource", STEP)?;
    ensure!(
        reply.contains("*hpet") || reply.contains("*tsc"),
        "default not kept:\n{reply}"
    );
    poweroff_exits_zero(&mut guest)
}

fn seconds_from_uptime(reply: &str) -> Option<f64> {
    reply
        .trim()
        .strip_prefix("up ")?
        .strip_suffix(" s")?
        .parse()
        .ok()
}

fn sleep_and_latency_commands() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    let before = seconds_from_uptime(&guest.run("uptime", STEP)?).ok_or("bad uptime")?;
    guest.run("sleep 0.5", STEP)?;
    let after = seconds_from_uptime(&guest.run("uptime", STEP)?).ok_or("bad uptime")?;
    let slept = after - before;
    ensure!(
        slept.total_cmp(&0.5).is_ge(),
        "sleep 0.5 returned after {slept:.3} s"
    );
    let date = guest.run("date", STEP)?;
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    // A kernel message (e.g. the clocksource watchdog's verdict) may land in the output.
    let guest_seconds = date
        .lines()
        .find_map(|line| parse_utc(line.trim()))
        .ok_or_else(|| format!("bad date output {date:?}"))?;
    ensure!(
        (guest_seconds - host).abs() <= 5,
        "guest date {date:?} is {} s off the host",
        guest_seconds - host
    );
    let reply = guest.run("sleep banana", STEP)?;
    ensure!(
        reply.contains("expected a duration"),
        "bad sleep argument: {reply:?}"
    );
    let output = guest.run("latency 1", Duration::from_secs(60))?;
    let latency = crate::bench::parse_lull_latency(&output)?;
    ensure!(
        latency.samples == 1000,
        "latency took {} samples",
        latency.samples
    );
    ensure!(
        latency.p50_us <= latency.p99_us && latency.p99_us <= latency.max_us,
        "inconsistent: {output}"
    );
    let total: u64 = latency.histogram.iter().map(|(_, c)| c).sum();
    ensure!(total == 1000, "histogram holds {total} samples");
    poweroff_exits_zero(&mut guest)
}

/// Parses `YYYY-MM-DD HH:MM:SS UTC` into Unix seconds.
fn parse_utc(text: &str) -> Option<i64> {
    let text = text.strip_suffix(" UTC")?;
    let (date, time) = text.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (hour, minute, second) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Boots `machine` with a QEMU monitor, checks `ready` was printed (the button's driver is
/// up), presses the power button with `system_powerdown`, and expects an orderly power-off:
/// the PM notifier chain, then S5, with QEMU exiting 0. `before` runs at the prompt first.
fn power_button(
    machine: Machine,
    ready: &str,
    before: impl FnOnce(&mut Guest) -> TestResult,
) -> TestResult {
    let socket = crate::kernel::repo_root().join(format!("target/e2e-monitor-{machine:?}.sock"));
    let _ = std::fs::remove_file(&socket);
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = machine;
    config.extra.push("-monitor".into());
    config
        .extra
        .push(format!("unix:{},server,nowait", socket.display()));
    let mut guest = boot(&config)?;
    // q35's PM1 button is set up at boot; microvm's GED by the device probe after the prompt.
    if !guest.output().contains(ready) {
        guest.expect(ready, STEP)?;
    }
    before(&mut guest)?;
    let mut monitor =
        std::os::unix::net::UnixStream::connect(&socket).map_err(|e| format!("monitor: {e}"))?;
    use std::io::Write as _;
    monitor
        .write_all(b"system_powerdown\n")
        .map_err(|e| format!("monitor: {e}"))?;
    let code = guest.wait_exit(STEP)?;
    let output = guest.output();
    for expected in [
        "ACPI: power button pressed",
        "pm: notifying clockevents (power off)",
        "reboot: Power down",
    ] {
        ensure!(output.contains(expected), "missing {expected:?}:\n{output}");
    }
    ensure!(code == 0, "QEMU exited with {code} after the power button");
    Ok(())
}

/// QEMU's `system_powerdown` presses the ACPI power button: the SCI handler sees it, the PM
/// notifier chain runs, and the guest enters S5 (QEMU exits 0).
fn power_button_from_qemu_system_powerdown() -> TestResult {
    power_button(Machine::Q35, "power button enabled", |_| Ok(()))
}

/// Hardware-reduced ACPI (microvm `acpi=on`) has no PM1 block: `system_powerdown` raises the
/// Generic Event Device's interrupt, its `_EVT` (run by Lull's AML interpreter in the line's
/// thread) notifies the power button device, and the guest powers off through the FADT's sleep
/// control register (QEMU exits 0). `/proc/acpi/devices` lists the GED. The GED is a driver
/// of the model: before the button is pressed it is unbound through sysfs (its IRQ leaves
/// `/proc/interrupts`, its devres list empties) and bound again, so the press also proves the
/// rebind.
fn microvm_power_button_through_the_ged() -> TestResult {
    power_button(Machine::Microvm, "ACPI: GED \\_SB_.GED_ on GSI", |guest| {
        let devices = guest.run("cat /proc/acpi/devices", STEP)?;
        for expected in ["ACPI0013", "PNP0C0C", "PNP0501"] {
            ensure!(
                devices.contains(expected),
                "/proc/acpi/devices lacks {expected}:\n{devices}"
            );
        }
        let bus = guest.run("ls /sys/bus/acpi/devices", STEP)?;
        ensure!(bus.contains("ACPI0013:00"), "acpi bus devices:\n{bus}");
        let link = guest.run("cat /sys/bus/acpi/devices/ACPI0013:00/driver", STEP)?;
        ensure!(
            link.contains("/sys/bus/acpi/drivers/acpi-ged"),
            "driver link: {link}"
        );
        let managed = guest.run("cat /sys/bus/acpi/devices/ACPI0013:00/devres", STEP)?;
        ensure!(managed.contains("irq 9 (acpi-ged)"), "devres: {managed}");
        guest.run(
            "echo ACPI0013:00 > /sys/bus/acpi/drivers/acpi-ged/unbind",
            STEP,
        )?;
        let interrupts = guest.run("cat /proc/interrupts", STEP)?;
        ensure!(
            !interrupts.contains("acpi-ged"),
            "IRQ still requested after unbind:\n{interrupts}"
        );
        let managed = guest.run("cat /sys/bus/acpi/devices/ACPI0013:00/devres", STEP)?;
        ensure!(managed.trim().is_empty(), "devres after unbind: {managed}");
        guest.run(
            "echo ACPI0013:00 > /sys/bus/acpi/drivers/acpi-ged/bind",
            STEP,
        )?;
        let interrupts = guest.run("cat /proc/interrupts", STEP)?;
        ensure!(
            interrupts.contains("acpi-ged"),
            "IRQ not requested after rebind:\n{interrupts}"
        );
        Ok(())
    })
}

/// The namespace as the shell shows it on q35: the PCI Express root and COM1 with its ports
/// in `/proc/acpi/devices`, and the root's `_PRT` in `/proc/acpi/prt` routed to IOAPIC GSIs
/// through the GSIx link devices (APIC mode, `\_PIC(1)`).
fn q35_acpi_namespace_in_procfs() -> TestResult {
    let config = QemuConfig::new(&shell_kernel()?);
    let mut guest = boot(&config)?;
    let devices = guest.run("cat /proc/acpi/devices", STEP)?;
    ensure!(
        devices.lines().any(|l| l.contains("PNP0A08")),
        "no PCI root in:\n{devices}"
    );
    ensure!(
        devices
            .lines()
            .any(|l| l.contains("PNP0501") && l.contains("io 0x3f8-0x3ff")),
        "no COM1 at 0x3f8 in:\n{devices}"
    );
    let prt = guest.run("cat /proc/acpi/prt", STEP)?;
    ensure!(
        prt.contains("INTA -> GSI 1") && prt.contains("(\\_SB_.GSI"),
        "no APIC-mode routing in:\n{prt}"
    );
    poweroff_exits_zero(&mut guest)
}

/// `(bus, device, function, vendor, device id)` of every function QEMU's `info pci` lists.
fn parse_info_pci(text: &str) -> Vec<(u8, u8, u8, u16, u16)> {
    let mut found = Vec::new();
    let mut slot: Option<(u8, u8, u8)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Bus") {
            // "Bus  0, device   2, function 0:"
            let numbers: Vec<u8> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty())
                .filter_map(|n| n.parse().ok())
                .collect();
            slot = (numbers.len() >= 3).then(|| (numbers[0], numbers[1], numbers[2]));
        } else if let (Some((bus, device, function)), Some(at)) = (slot, line.find("PCI device ")) {
            // "... PCI device 8086:10d3"
            let ids = &line[at + "PCI device ".len()..];
            if let Some((vendor, id)) = ids.split_once(':') {
                if let (Ok(vendor), Ok(id)) = (
                    u16::from_str_radix(vendor.trim(), 16),
                    u16::from_str_radix(id.trim().get(..4).unwrap_or(""), 16),
                ) {
                    found.push((bus, device, function, vendor, id));
                    slot = None;
                }
            }
        }
    }
    found.sort_unstable();
    found
}

/// Sends one command to QEMU's human monitor on `socket` and returns what it printed up to the
/// next prompt.
fn monitor_command(socket: &std::path::Path, command: &str) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let mut monitor =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("monitor: {e}"))?;
    monitor
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| format!("monitor: {e}"))?;
    monitor
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("monitor: {e}"))?;
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    // The reply ends with the next prompt after the command's output.
    while text.matches("(qemu)").count() < 2 {
        match monitor.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
    Ok(text)
}

/// `(transport base address, virtio device id)` of every virtio-mmio transport with a device
/// plugged in, from QEMU's `info qtree` (microvm: `dev: virtio-mmio` with `mmio ADDR/SIZE`,
/// its bus, then `dev: virtio-rng-device`).
fn parse_qtree_virtio_mmio(text: &str) -> Vec<(u64, u16)> {
    let mut found = Vec::new();
    let mut transport: Option<u64> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("dev: virtio-mmio,") {
            transport = None;
        } else if let Some(window) = line.strip_prefix("mmio ") {
            let base = window.split('/').next().unwrap_or("");
            transport = u64::from_str_radix(base, 16).ok();
        } else if let Some(device) = line.strip_prefix("dev: virtio-") {
            let kind = device.split(',').next().unwrap_or("");
            let id = match kind {
                "net-device" => 1,
                "blk-device" => 2,
                "serial-device" => 3,
                "rng-device" => 4,
                "balloon-device" => 5,
                "gpio-device" | "vhost-user-gpio-device" => 41,
                _ => 0,
            };
            if let Some(base) = transport.take() {
                found.push((base, id));
            }
        } else if line.starts_with("dev: ") {
            transport = None;
        }
    }
    found.sort_unstable();
    found
}

/// On microvm the guest finds exactly the virtio-mmio devices QEMU's `info qtree` shows: the
/// same transport addresses (its `/proc/iomem`), one ACPI `LNRO0005` device each, and the
/// same device types on its virtio bus.
fn microvm_virtio_devices_match_qemu_info_qtree() -> TestResult {
    let socket = crate::kernel::repo_root().join("target/e2e-qtree-monitor.sock");
    let _ = std::fs::remove_file(&socket);
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = Machine::Microvm;
    config.extra = crate::qemu::VIRTIO_RNG_MMIO
        .iter()
        .map(|a| a.to_string())
        .collect();
    config.extra.extend([
        "-device".to_string(),
        "virtio-net-device,netdev=n0".to_string(),
        "-netdev".to_string(),
        "user,id=n0".to_string(),
        "-monitor".to_string(),
        format!("unix:{},server,nowait", socket.display()),
    ]);
    // /proc/iomem read at once: it must wait for the probe itself.
    let mut guest = boot_unsettled(&config)?;
    let text = monitor_command(&socket, "info qtree")?;
    let qemu = parse_qtree_virtio_mmio(&text);
    ensure!(
        qemu.len() == 2 && qemu.iter().all(|(_, id)| *id != 0),
        "QEMU's info qtree shows {qemu:x?}, not the two devices given:\n{text}"
    );
    let iomem = guest.run("cat /proc/iomem", STEP)?;
    let mut bases: Vec<u64> = iomem
        .lines()
        .filter(|line| line.trim_end().ends_with(": virtio-mmio"))
        .filter_map(|line| u64::from_str_radix(line.trim().split('-').next()?, 16).ok())
        .collect();
    bases.sort_unstable();
    let expected: Vec<u64> = qemu.iter().map(|(base, _)| *base).collect();
    ensure!(
        bases == expected,
        "the guest's virtio-mmio regions {bases:x?} differ from QEMU's transports {expected:x?}:\n{iomem}"
    );
    let acpi = guest.run("ls /sys/bus/acpi/devices", STEP)?;
    let transports = acpi
        .lines()
        .filter(|l| l.trim().starts_with("LNRO0005:"))
        .count();
    ensure!(
        transports == qemu.len(),
        "{transports} LNRO0005 devices on the acpi bus, QEMU has {}:\n{acpi}",
        qemu.len()
    );
    let listing = guest.run("ls /sys/bus/virtio/devices", STEP)?;
    let mut ids = Vec::new();
    for name in listing
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("virtio"))
    {
        let text = guest.run(&format!("cat /sys/bus/virtio/devices/{name}/device"), STEP)?;
        // Kernel messages (the DHCP lease) may share the console with the answer.
        let id = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("0x"))
            .find_map(|hex| u16::from_str_radix(hex, 16).ok())
            .ok_or_else(|| format!("{name}/device: {text:?}"))?;
        ids.push(id);
    }
    ids.sort_unstable();
    let mut expected: Vec<u16> = qemu.iter().map(|(_, id)| *id).collect();
    expected.sort_unstable();
    ensure!(
        ids == expected,
        "the guest's virtio device types {ids:?} differ from QEMU's {expected:?}:\n{listing}"
    );
    poweroff_exits_zero(&mut guest)
}

/// The guest's `lspci -n` lists exactly the functions QEMU's monitor (`info pci`) says the
/// machine has, with the same vendor:device ids (q35 plus a virtio-rng-pci).
fn lspci_matches_qemu_info_pci() -> TestResult {
    let socket = crate::kernel::repo_root().join("target/e2e-lspci-monitor.sock");
    let _ = std::fs::remove_file(&socket);
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.extra.extend([
        "-device".to_string(),
        "virtio-rng-pci".to_string(),
        "-monitor".to_string(),
        format!("unix:{},server,nowait", socket.display()),
    ]);
    let mut guest = boot(&config)?;
    let listing = guest.run("lspci -n", STEP)?;
    let mut lspci: Vec<(u8, u8, u8, u16, u16)> = listing
        .lines()
        .filter_map(|line| {
            // "00:1f.3 0c05: 8086:2930 (rev 02)"
            let (slot, rest) = line.split_once(' ')?;
            let (bus, rest_slot) = slot.split_once(':')?;
            let (device, function) = rest_slot.split_once('.')?;
            let ids = rest.split_whitespace().nth(1)?;
            let (vendor, id) = ids.split_once(':')?;
            Some((
                u8::from_str_radix(bus, 16).ok()?,
                u8::from_str_radix(device, 16).ok()?,
                function.parse().ok()?,
                u16::from_str_radix(vendor, 16).ok()?,
                u16::from_str_radix(id, 16).ok()?,
            ))
        })
        .collect();
    lspci.sort_unstable();
    let text = monitor_command(&socket, "info pci")?;
    let qemu = parse_info_pci(&text);
    ensure!(
        qemu.iter().any(|f| f.3 == 0x1af4),
        "QEMU's info pci shows no virtio device:\n{text}"
    );
    ensure!(
        lspci == qemu,
        "lspci -n:\n{listing}\ndiffers from QEMU's info pci:\n{text}"
    );
    // The driver model has the same functions as devices of its pci bus, with their ids.
    let sys = guest.run("ls /sys/bus/pci/devices", STEP)?;
    let mut names: Vec<String> = sys
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("0000:"))
        .map(String::from)
        .collect();
    names.sort();
    let expected: Vec<String> = qemu
        .iter()
        .map(|f| format!("0000:{:02x}:{:02x}.{}", f.0, f.1, f.2))
        .collect();
    ensure!(
        names == expected,
        "/sys/bus/pci/devices:\n{sys}\ndiffers from QEMU's info pci:\n{text}"
    );
    for function in &qemu {
        let name = format!("0000:{:02x}:{:02x}.{}", function.0, function.1, function.2);
        let vendor = guest.run(&format!("cat /sys/bus/pci/devices/{name}/vendor"), STEP)?;
        let device = guest.run(&format!("cat /sys/bus/pci/devices/{name}/device"), STEP)?;
        ensure!(
            vendor.contains(&format!("0x{:04x}", function.3))
                && device.contains(&format!("0x{:04x}", function.4)),
            "{name}: sysfs vendor {vendor:?} device {device:?}, QEMU {:04x}:{:04x}",
            function.3,
            function.4
        );
    }
    poweroff_exits_zero(&mut guest)
}

/// The header of `/proc/interrupts`: `CPU0 CPU1 ...`, one per online CPU (kernel messages
/// printed while the command ran, such as a driver's probe line, may come before it).
fn interrupt_columns(interrupts: &str) -> Vec<String> {
    interrupts
        .lines()
        .find(|line| line.trim_start().starts_with("CPU0"))
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Every CPU QEMU gives comes online on q35 (1, 2, 4, 8 vCPUs) and on microvm (2), each with
/// its own LAPIC tick device, listed by `cpus` and as a column of `/proc/interrupts`.
fn smp_boots_with_1_2_4_8_cpus() -> TestResult {
    let kernel = shell_kernel()?;
    for (machine, cpus) in [
        (Machine::Q35, 1u32),
        (Machine::Q35, 2),
        (Machine::Q35, 4),
        (Machine::Q35, 8),
        (Machine::Microvm, 2),
    ] {
        let mut config = QemuConfig::new(&kernel);
        config.machine = machine;
        config.cpus = cpus;
        let mut guest = boot(&config)?;
        let listing = guest.run("cpus", STEP)?;
        ensure!(
            listing.contains(&format!("{cpus} online, {cpus} possible")),
            "{machine:?} -smp {cpus}: cpus printed:\n{listing}"
        );
        let lapic_rows = listing
            .lines()
            .filter(|line| line.contains(" online ") && line.contains(" lapic"))
            .count();
        ensure!(
            lapic_rows == cpus as usize,
            "{machine:?} -smp {cpus}: {lapic_rows} CPUs tick on their LAPIC:\n{listing}"
        );
        let interrupts = guest.run("cat /proc/interrupts", STEP)?;
        let expected: Vec<String> = (0..cpus).map(|cpu| format!("CPU{cpu}")).collect();
        ensure!(
            interrupt_columns(&interrupts) == expected,
            "{machine:?} -smp {cpus}: /proc/interrupts:\n{interrupts}"
        );
        let timer_list = guest.run("cat /proc/timer_list", STEP)?;
        for cpu in 0..cpus {
            ensure!(
                timer_list.contains(&format!("cpu: {cpu}\n")),
                "{machine:?} -smp {cpus}: no CPU {cpu} in /proc/timer_list"
            );
        }
        poweroff_exits_zero(&mut guest)?;
        // Power-off runs on one CPU: the others were stopped first.
        let stopped = format!("smp: stopped {} other CPU(s)", cpus - 1);
        ensure!(
            cpus == 1 || guest.output().contains(&stopped),
            "{machine:?} -smp {cpus}: no {stopped:?} at power-off:\n{}",
            guest.output()
        );
    }
    Ok(())
}

/// `nr_cpus=3` limits the possible CPUs, `maxcpus=2` those brought up at boot; the rest are
/// listed offline and have no column in `/proc/interrupts`.
fn smp_nr_cpus_and_maxcpus() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.cpus = 4;
    config.append = "nr_cpus=3 maxcpus=2".to_string();
    let mut guest = Guest::spawn(&config)?;
    let boot_log = guest.expect("lull> ", BOOT)?;
    ensure!(
        boot_log.contains("smp: Brought up 2 CPUs (3 possible, nr_cpus), 1 offline"),
        "boot log:\n{boot_log}"
    );
    let listing = guest.run("cpus", STEP)?;
    ensure!(
        listing.contains("2 online, 3 possible")
            && listing
                .lines()
                .any(|line| line.trim_start().starts_with("2 ") && line.contains("offline")),
        "cpus printed:\n{listing}"
    );
    let interrupts = guest.run("cat /proc/interrupts", STEP)?;
    ensure!(
        interrupt_columns(&interrupts) == ["CPU0", "CPU1"],
        "/proc/interrupts:\n{interrupts}"
    );
    poweroff_exits_zero(&mut guest)
}

/// The same on four CPUs (interrupts summed over every CPU).
fn idle_smp4_nohz_takes_no_timer_interrupts() -> TestResult {
    assert_tickless_idle(Machine::Q35, 4)
}

/// microvm has no HPET or PM timer to verify the TSC against; NO_HZ must still work there,
/// with a virtio-rng, a virtio-net (DHCP done) and a virtio-blk disk bound (their drivers wait
/// for interrupts, the network stack for its next deadline: no polling, no periodic timers).
fn idle_microvm_nohz_takes_no_timer_interrupts() -> TestResult {
    let control = control_run().map_err(|e| format!("control run (nohz=off) failed: {e}"))?;
    let idle = crate::bench::measure_lull_idle_with(
        Machine::Microvm,
        &shell_kernel()?,
        "",
        10,
        1,
        crate::qemu::IDLE_DEVICES_MMIO,
    )?;
    check_tickless(
        &idle.counts,
        Some(&control),
        "Microvm -smp 1 with virtio-rng, virtio-net (DHCP) and virtio-blk",
    )?;
    Ok(())
}

/// The first number of the `/proc/interrupts` line ending in `name`.
fn interrupt_count(text: &str, name: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// virtio-rng behind a virtio-mmio transport (microvm, found through ACPI): `hwrng` prints
/// bytes that differ between reads, the virtio line counts interrupts, unbind makes `hwrng`
/// say there is no device and bind brings it back; q35 without the device says so too.
/// virtio-net on a microvm virtio-mmio transport, against QEMU's user network: the guest gets
/// its address by DHCP (10.0.2.15), `ping 10.0.2.2` is answered, and the host's HTTP client
/// reaches the guest's `httpd=80` through a host forward — the page carries the guest's uptime
/// and `/proc/interrupts`, where the virtio line has counted the traffic. Judged from the host.
fn virtio_net_on_microvm_dhcp_ping_and_http() -> TestResult {
    net_dhcp_ping_and_http(Machine::Microvm, "virtio-net-device", "virtio0")
}

/// The same on q35 through virtio-pci: the MAC comes from the device-specific configuration
/// structure, and the queues' interrupts are MSI-X vectors (`PCI-MSIX-…` lines on the page).
fn virtio_net_pci_on_q35_dhcp_ping_and_http() -> TestResult {
    net_dhcp_ping_and_http(Machine::Q35, "virtio-net-pci", "PCI-MSIX-")
}

fn net_dhcp_ping_and_http(machine: Machine, device: &str, irq_line: &str) -> TestResult {
    use std::io::{Read as _, Write as _};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free host port: {e}"))?
        .port();
    let udp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no free host UDP port: {e}"))?
        .port();
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = machine;
    config.append = "httpd=80".into();
    config.extra = [
        "-global",
        "virtio-mmio.force-legacy=false",
        "-netdev",
        &format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80,hostfwd=udp:127.0.0.1:{udp_port}-:7000"
        ),
        "-device",
        &format!("{device},netdev=n0"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut guest = boot(&config)?;
    if !guest.output().contains("DHCP lease 10.0.2.15") {
        guest.expect("DHCP lease 10.0.2.15", STEP)?;
    }
    let addr = guest.run("ip addr", STEP)?;
    ensure!(
        addr.contains("inet 10.0.2.15/24") && addr.contains("link/ether 52:54:00:12:34:56"),
        "ip addr:\n{addr}"
    );
    let ping = guest.run("ping 10.0.2.2 -c 2", STEP)?;
    ensure!(ping.contains("2 received"), "ping:\n{ping}");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect to the forward: {e}"))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: lull\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut page = String::new();
    stream
        .read_to_string(&mut page)
        .map_err(|e| format!("read the page: {e}"))?;
    ensure!(page.starts_with("HTTP/1.0 200 OK"), "reply:\n{page}");
    ensure!(
        page.contains("uptime ") && page.contains("/proc/interrupts") && page.contains(irq_line),
        "page lacks uptime or the interrupts:\n{page}"
    );
    udp_each_way(&mut guest, udp_port)?;
    poweroff_exits_zero(&mut guest)
}

/// UDP through QEMU's user network: the guest's `nc -u` sends 32 KiB in datagrams to a host
/// socket (10.0.2.2 is the host), and receives 32 KiB the host sends through a forward to its
/// `nc -u -l 7000`; each side's SHA-256 must equal the other's (datagrams paced: UDP may drop).
fn udp_each_way(guest: &mut Guest, forward: u16) -> TestResult {
    use sha2::{Digest, Sha256};
    const BYTES: usize = 32 << 10;
    let pattern: Vec<u8> = (0..BYTES as u64).map(nc_pattern).collect();
    let expected = hex(&Sha256::digest(&pattern));
    let host = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp: {e}"))?;
    host.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let host_port = host.local_addr().map_err(|e| e.to_string())?.port();
    let receiver = std::thread::spawn(move || {
        let mut data = Vec::new();
        let mut buffer = [0u8; 2048];
        while let Ok((n, _)) = host.recv_from(&mut buffer) {
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buffer[..n]);
        }
        data
    });
    let sent = guest.run(&format!("nc -u -s {BYTES} 10.0.2.2 {host_port}"), STEP)?;
    let received = receiver.join().map_err(|_| "the UDP receiver panicked")?;
    ensure!(
        received.len() == BYTES && hex(&Sha256::digest(&received)) == expected,
        "the host got {} of {BYTES} bytes over UDP; the guest said {sent:?}",
        received.len()
    );
    ensure!(
        sent.contains(&format!("sha256 {expected}")),
        "guest nc -u: {sent:?}"
    );
    guest.send(b"nc -u -l 7000\n")?;
    guest.expect("listening on udp port 7000", STEP)?;
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("udp: {e}"))?;
    for chunk in pattern.chunks(1024).chain(std::iter::once(&[][..])) {
        sender
            .send_to(chunk, ("127.0.0.1", forward))
            .map_err(|e| format!("send to the forward: {e}"))?;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let answer = guest.expect("lull> ", STEP)?;
    ensure!(
        answer.contains(&format!("received {BYTES} bytes"))
            && answer.contains("in 32 datagrams")
            && answer.contains(&format!("sha256 {expected}")),
        "guest nc -u -l:\n{answer}"
    );
    Ok(())
}

/// `/proc/devres_leaks` (heap bytes, IRQ lines, port and MMIO claims, DMA and free pages, MSI
/// vectors), without interleaved kernel log lines.
fn leak_counters(guest: &mut Guest) -> Result<String, NotPassed> {
    let text = guest.run("cat /proc/devres_leaks", STEP)?;
    // Only `name value` lines: an echo or a log line can land in the middle.
    Ok(text
        .lines()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() == 2 && !l.starts_with('[') && words[1].parse::<i64>().is_ok()
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Waits up to 4 s for the leak counters to return exactly to `before` (the heap's bytes
/// included) and returns whether they did, with the last reading. Interrupt threads are reaped
/// asynchronously: allow them a moment.
/// On failure the reading also lists the heap's bytes at each try, which tells a slow return
/// (moving toward `before`) from a lasting difference.
fn leak_counters_settle(guest: &mut Guest, before: &str) -> Result<(bool, String), NotPassed> {
    let mut after = String::new();
    let mut heap = Vec::new();
    for _ in 0..20 {
        after = leak_counters(guest)?;
        if after == before {
            return Ok((true, after));
        }
        heap.extend(heap_bytes(&after));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok((
        false,
        format!("{after}\n(heap_bytes at each try: {heap:?})"),
    ))
}

fn heap_bytes(counters: &str) -> Option<i64> {
    counters
        .lines()
        .find_map(|l| l.strip_prefix("heap_bytes "))
        .and_then(|n| n.trim().parse().ok())
}

/// The leak counters once they hold still (two readings 300 ms apart agree, up to 3 s): the
/// baseline a loop is compared with must not include something transient, such as a timer or
/// a work item of the last bind that is about to go.
fn quiet_leak_counters(guest: &mut Guest) -> Result<String, NotPassed> {
    let mut last = leak_counters(guest)?;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let now = leak_counters(guest)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// With the driver unbound: `warm_up` bind/unbind cycles (tables that grow on first use reach
/// their size), the leak counters as the baseline, then `cycles` more; the counters must
/// settle back (see [`leak_counters_settle`]). The driver is left unbound.
fn bind_unbind_cycles_leak_nothing(
    guest: &mut Guest,
    bind: &str,
    unbind: &str,
    warm_up: usize,
    cycles: usize,
    what: &str,
) -> TestResult {
    let cycle = |guest: &mut Guest| -> TestResult {
        guest.run(bind, STEP)?;
        guest.run(unbind, STEP)?;
        Ok(())
    };
    for _ in 0..warm_up {
        cycle(guest)?;
    }
    let before = quiet_leak_counters(guest)?;
    for _ in 0..cycles {
        cycle(guest)?;
    }
    let (settled, after) = leak_counters_settle(guest, &before)?;
    ensure!(
        settled,
        "after {cycles} unbind/bind cycles{what}:\n{after}\nbefore:\n{before}"
    );
    Ok(())
}

/// virtio-net on microvm through 20 unbind/bind cycles from `/sys`: the leak counters
/// (`/proc/devres_leaks`: IRQ lines, port and MMIO claims, DMA and free pages, the heap's
/// bytes, all exactly) return to their values with the driver unbound, the interface comes back as
/// `eth0` (no stale `ethN` piles up), and traffic resumes (DHCP lease, ping).
fn virtio_net_unbind_bind_leaks_nothing_and_traffic_resumes() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = Machine::Microvm;
    config.extra = [
        "-global",
        "virtio-mmio.force-legacy=false",
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-device,netdev=n0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut guest = boot(&config)?;
    if !guest.output().contains("DHCP lease 10.0.2.15") {
        guest.expect("DHCP lease 10.0.2.15", STEP)?;
    }
    let listing = guest.run("ls /sys/bus/virtio/drivers/virtio_net", STEP)?;
    let device = listing
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("virtio"))
        .ok_or_else(|| format!("no device bound to virtio_net:\n{listing}"))?
        .to_string();
    let unbind = format!("echo {device} > /sys/bus/virtio/drivers/virtio_net/unbind");
    let bind = format!("echo {device} > /sys/bus/virtio/drivers/virtio_net/bind");
    // Warm-up cycles (tables that grow on first use reach their size), then the baseline with
    // the driver unbound.
    guest.run(&unbind, STEP)?;
    bind_unbind_cycles_leak_nothing(&mut guest, &bind, &unbind, 5, 20, "")?;
    let from = guest.output().len();
    guest.run(&bind, STEP)?;
    if !guest.output()[from..].contains("DHCP lease 10.0.2.15") {
        guest.expect("DHCP lease 10.0.2.15", STEP)?;
    }
    let addr = guest.run("ip addr", STEP)?;
    ensure!(
        addr.contains("eth0") && !addr.contains("eth1") && addr.contains("inet 10.0.2.15/24"),
        "ip addr after rebinding:\n{addr}"
    );
    let ping = guest.run("ping 10.0.2.2 -c 2", STEP)?;
    ensure!(ping.contains("2 received"), "ping after rebinding:\n{ping}");
    poweroff_exits_zero(&mut guest)
}

/// Whether `line` is `bytes` bytes in hex (what `hwrng` and `cat /dev/hwrng` print).
fn is_hex_line(line: &str, bytes: usize) -> bool {
    line.len() == 2 * bytes && line.chars().all(|c| c.is_ascii_hexdigit())
}

/// One PCI INTx line for three drivers (q35: virtio-rng-pci and virtio-blk-pci without MSI-X
/// in slots 0x19 and 0x1a, whose INTA the firmware's `_PRT` routes to GSI 16, the ICH9 SMBus
/// controller's line): every driver binds (before shared lines, the second got EBUSY), and
/// `/proc/interrupts` names all three on IRQ 16. The SMBus EEPROM, the RNG and the disk each
/// work by interrupt on the shared line, and keep working while the RNG's driver is unbound and
/// bound 20 times (the leak counters, IRQ handlers included, return to their values), with the
/// disk's data checked against the host's SHA-256.
fn shared_intx_line_serves_smbus_rng_and_blk_through_unbind_bind() -> TestResult {
    use sha2::{Digest, Sha256};
    let image = crate::kernel::repo_root().join("target/e2e-shared-intx.img");
    random_image(&image, 1 << 20, 0x5eed)?;
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.extra = [
        "-device".to_string(),
        "virtio-rng-pci,vectors=0,addr=0x19".to_string(),
        "-drive".to_string(),
        format!("file={},if=none,id=d0,format=raw", image.display()),
        "-device".to_string(),
        "virtio-blk-pci,vectors=0,addr=0x1a,drive=d0".to_string(),
    ]
    .to_vec();
    let mut guest = boot(&config)?;
    let line16 = |guest: &mut Guest| -> Result<String, NotPassed> {
        let text = guest.run("cat /proc/interrupts", STEP)?;
        Ok(text
            .lines()
            .find(|l| l.trim_start().starts_with("16:"))
            .unwrap_or_default()
            .to_string())
    };
    let line = line16(&mut guest)?;
    ensure!(
        line.contains("i801_smbus") && line.matches("virtio").count() == 2,
        "IRQ 16 does not carry the SMBus controller and both virtio devices: {line:?}\n{}",
        guest.output()
    );
    let count = |line: &str| -> u64 {
        line.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let rng_device = guest
        .run("ls /sys/bus/virtio/drivers/virtio_rng", STEP)?
        .split_whitespace()
        .find(|w| w.starts_with("virtio"))
        .map(str::to_string)
        .ok_or("nothing bound to virtio_rng")?;
    let expected = Sha256::digest([0x5au8; 65536])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let exercise = |guest: &mut Guest, round: &str, value: u8| -> TestResult {
        let before = count(&line16(guest)?);
        guest.run(&format!("i2cset -f -y 0 0x51 0x10 {value:#04x}"), STEP)?;
        let read = guest.run("i2cget -f -y 0 0x51 0x10", STEP)?;
        ensure!(
            read.trim() == format!("{value:#04x}"),
            "{round}: EEPROM read back {read:?}, wrote {value:#04x}"
        );
        let random = guest.run("cat /dev/hwrng", STEP)?;
        ensure!(
            is_hex_line(random.trim(), 32),
            "{round}: /dev/hwrng gave {random:?}"
        );
        guest.run(
            &format!("blk write vda {} 64K 0x5a", u32::from(value) << 16),
            STEP,
        )?;
        let sum = guest.run(&format!("blk sum vda {} 64K", u32::from(value) << 16), STEP)?;
        ensure!(
            sum.contains(&expected),
            "{round}: blk sum {sum:?}, expected {expected}"
        );
        let after = count(&line16(guest)?);
        ensure!(
            after > before,
            "{round}: IRQ 16 counted no interrupt for the work ({before} -> {after})"
        );
        Ok(())
    };
    exercise(&mut guest, "all bound", 0x01)?;
    let unbind = format!("echo {rng_device} > /sys/bus/virtio/drivers/virtio_rng/unbind");
    let bind = format!("echo {rng_device} > /sys/bus/virtio/drivers/virtio_rng/bind");
    guest.run(&unbind, STEP)?;
    let line = line16(&mut guest)?;
    ensure!(
        line.contains("i801_smbus") && line.matches("virtio").count() == 1,
        "after unbinding {rng_device}, IRQ 16 is {line:?}"
    );
    let gone = guest.run("cat /dev/hwrng", STEP)?;
    ensure!(
        !is_hex_line(gone.trim(), 32),
        "/dev/hwrng still gave bytes with the driver unbound: {gone:?}"
    );
    // The SMBus controller and the disk keep the line while the RNG is away.
    guest.run("i2cset -f -y 0 0x51 0x11 0x42", STEP)?;
    let read = guest.run("i2cget -f -y 0 0x51 0x11", STEP)?;
    ensure!(
        read.trim() == "0x42",
        "EEPROM with the RNG unbound: {read:?}"
    );
    bind_unbind_cycles_leak_nothing(&mut guest, &bind, &unbind, 1, 20, " on the shared line")?;
    guest.run(&bind, STEP)?;
    exercise(&mut guest, "rebound", 0x02)?;
    let host = std::fs::read(&image).map_err(|e| format!("{}: {e}", image.display()))?;
    ensure!(
        host[0x10000..0x20000].iter().all(|&b| b == 0x5a)
            && host[0x20000..0x30000].iter().all(|&b| b == 0x5a),
        "the image does not hold what the guest wrote at 64 KiB and 128 KiB"
    );
    poweroff_exits_zero(&mut guest)
}

/// Byte `i` of what `nc -s` sends (the guest's pattern, `i mod 251`).
fn nc_pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// The byte `blk write` puts at absolute disk offset `at` by default (the kernel's
/// `shell::blk::pattern_byte`).
fn blk_pattern_byte(at: u64) -> u8 {
    ((at / 512 * 7 + at % 512) % 251) as u8
}

/// A disk image of `bytes` pseudo-random bytes (xorshift from `seed`).
fn random_image(path: &std::path::Path, bytes: usize, seed: u64) -> Result<Vec<u8>, String> {
    let mut state = seed | 1;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(data)
}

/// virtio-blk on q35 (virtio-blk-pci) and microvm (virtio-blk-device), judged from the host:
/// the guest's SHA-256 of a host-written image equals the host's; a pattern the guest writes
/// and flushes before powering off is in the image file afterwards, byte for byte, with the
/// rest untouched; a read-only disk refuses the write and stays unchanged.
fn virtio_blk_on_q35_and_microvm_hashes_writes_and_flushes() -> TestResult {
    use sha2::{Digest, Sha256};
    const IMAGE: usize = 4 << 20;
    const WRITE_AT: u64 = 1 << 20;
    const WRITE_LEN: u64 = 768 << 10;
    let kernel = shell_kernel()?;
    for (machine, device) in [
        (Machine::Q35, "virtio-blk-pci"),
        (Machine::Microvm, "virtio-blk-device"),
    ] {
        let image = crate::kernel::repo_root().join(format!("target/e2e-blk-{device}.img"));
        let readonly = crate::kernel::repo_root().join(format!("target/e2e-blk-{device}-ro.img"));
        let original = random_image(&image, IMAGE, 0x1234_5678)?;
        let read_only_data = random_image(&readonly, 64 << 10, 0x9abc)?;
        let mut config = QemuConfig::new(&kernel);
        config.machine = machine;
        config.extra = [
            "-drive".to_string(),
            format!("file={},if=none,id=d0,format=raw", image.display()),
            "-device".to_string(),
            format!("{device},drive=d0"),
            "-drive".to_string(),
            format!(
                "file={},if=none,id=d1,format=raw,readonly=on",
                readonly.display()
            ),
            "-device".to_string(),
            format!("{device},drive=d1"),
        ]
        .to_vec();
        if machine == Machine::Microvm {
            config.extra.extend([
                "-global".to_string(),
                "virtio-mmio.force-legacy=false".to_string(),
            ]);
        }
        let mut guest = boot(&config)?;
        let list = guest.run("blk list", STEP)?;
        let line = |name: &str| {
            list.lines()
                .find(|l| l.starts_with(name))
                .map(str::to_string)
                .unwrap_or_default()
        };
        // Which of vda/vdb is the read-only one depends on probe order; find it by size.
        let (rw, ro) = if line("vda").contains(&IMAGE.to_string()) {
            ("vda", "vdb")
        } else {
            ("vdb", "vda")
        };
        ensure!(
            line(rw).contains(&IMAGE.to_string()) && line(rw).contains(" rw "),
            "{machine:?}: blk list has no {IMAGE}-byte writable disk:\n{list}"
        );
        ensure!(
            line(ro).contains(" ro "),
            "{machine:?}: the readonly=on disk is not read-only:\n{list}"
        );
        let sum = guest.run(&format!("blk sum {rw} 0 {IMAGE}"), STEP)?;
        let expected = hex(&Sha256::digest(&original));
        ensure!(
            sum.contains(&format!("sha256 {expected}")),
            "{machine:?}: guest sum {sum:?}, host sha256 {expected}"
        );
        let wrote = guest.run(&format!("blk write {rw} {WRITE_AT} {WRITE_LEN}"), STEP)?;
        ensure!(wrote.contains("blk: wrote"), "{machine:?}: {wrote}");
        let refused = guest.run(&format!("blk write {ro} 0 4096 7"), STEP)?;
        ensure!(
            refused.contains("read-only"),
            "{machine:?}: a write to the read-only disk said {refused:?}"
        );
        let flushed = guest.run(&format!("blk flush {rw}"), STEP)?;
        ensure!(flushed.contains("blk: flushed"), "{machine:?}: {flushed}");
        let stats = guest.run("cat /proc/diskstats", STEP)?;
        ensure!(stats.contains(rw), "{machine:?}: /proc/diskstats:\n{stats}");
        poweroff_exits_zero(&mut guest)?;
        let after = std::fs::read(&image).map_err(|e| format!("{}: {e}", image.display()))?;
        ensure!(after.len() == IMAGE, "{machine:?}: the image changed size");
        let (start, end) = (WRITE_AT as usize, (WRITE_AT + WRITE_LEN) as usize);
        if let Some(bad) = (start..end).find(|&at| after[at] != blk_pattern_byte(at as u64)) {
            return Err(format!(
                "{machine:?}: byte {bad} of the image is {:#04x}, the pattern says {:#04x}",
                after[bad],
                blk_pattern_byte(bad as u64)
            )
            .into());
        }
        ensure!(
            after[..start] == original[..start] && after[end..] == original[end..],
            "{machine:?}: bytes outside the written range changed"
        );
        let ro_after = std::fs::read(&readonly).map_err(|e| format!("{e}"))?;
        ensure!(
            ro_after == read_only_data,
            "{machine:?}: the read-only image changed"
        );
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&readonly);
    }
    Ok(())
}

/// The guest's `nc` sends 64 MiB to a host listener and receives 64 MiB from the host, over
/// virtio-net and QEMU's user network: each side hashes what it got, and the SHA-256 printed by
/// the guest must equal the host's (integrity judged on both ends; throughput is printed).
fn virtio_net_64mib_each_way_with_equal_sha256() -> TestResult {
    use sha2::{Digest, Sha256};
    use std::io::{Read as _, Write as _};
    const BYTES: u64 = 64 << 20;
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut expected = Sha256::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    while sent < BYTES {
        for (k, byte) in chunk.iter_mut().enumerate() {
            *byte = nc_pattern(sent + k as u64);
        }
        expected.update(&chunk);
        sent += chunk.len() as u64;
    }
    let expected = hex(&expected.finalize());

    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("host listener: {e}"))?;
    let sink_port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let forward = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free host port: {e}"))?
        .port();
    let sink = std::thread::spawn(move || -> Result<(u64, String), String> {
        let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buffer).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            total += n as u64;
        }
        Ok((total, hex(&hasher.finalize())))
    });

    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = Machine::Microvm;
    config.extra = [
        "-global",
        "virtio-mmio.force-legacy=false",
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{forward}-:5001"),
        "-device",
        "virtio-net-device,netdev=n0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut guest = boot(&config)?;
    if !guest.output().contains("DHCP lease 10.0.2.15") {
        guest.expect("DHCP lease 10.0.2.15", STEP)?;
    }
    let long = std::time::Duration::from_secs(600);
    // Guest → host: QEMU's user network maps 10.0.2.2 to the host's loopback.
    let sent = guest.run(&format!("nc -s 64M 10.0.2.2 {sink_port}"), long)?;
    let (total, digest) = sink.join().map_err(|_| "sink thread panicked")??;
    ensure!(
        total == BYTES,
        "host received {total} of {BYTES} bytes; guest said:\n{sent}"
    );
    ensure!(
        digest == expected && sent.contains(&format!("sha256 {expected}")),
        "guest → host: host hashed {digest}, pattern is {expected}, guest said:\n{sent}"
    );
    println!("  guest → host: {}", sent.trim());
    // Host → guest, through the forward to the guest's listener.
    guest.send(b"nc -l 5001\n")?;
    guest.expect("nc: listening on port 5001", STEP)?;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", forward))
        .map_err(|e| format!("connect to the forward: {e}"))?;
    let mut offset = 0u64;
    while offset < BYTES {
        for (k, byte) in chunk.iter_mut().enumerate() {
            *byte = nc_pattern(offset + k as u64);
        }
        stream.write_all(&chunk).map_err(|e| format!("send: {e}"))?;
        offset += chunk.len() as u64;
    }
    drop(stream);
    let line = guest.expect("lull> ", long)?;
    ensure!(
        line.contains(&format!("received {BYTES} bytes")) && line.contains(&expected),
        "host → guest: expected {BYTES} bytes with sha256 {expected}, guest said:\n{line}"
    );
    if let Some(received) = line.lines().find(|l| l.contains("nc: received")) {
        println!("  host → guest: {}", received.trim());
    }
    // `--no-hash` (throughput only): the guest counts, the host still checks every byte.
    const RAW: usize = 1 << 20;
    let raw = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listener: {e}"))?;
    let raw_port = raw.local_addr().map_err(|e| e.to_string())?.port();
    let raw_sink = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let (mut stream, _) = raw.accept().map_err(|e| format!("accept: {e}"))?;
        let mut data = Vec::new();
        stream
            .read_to_end(&mut data)
            .map_err(|e| format!("read: {e}"))?;
        Ok(data)
    });
    let said = guest.run(&format!("nc --no-hash -s 1M 10.0.2.2 {raw_port}"), long)?;
    let data = raw_sink.join().map_err(|_| "sink thread panicked")??;
    ensure!(
        data.len() == RAW
            && data
                .iter()
                .enumerate()
                .all(|(i, &b)| b == nc_pattern(i as u64))
            && said.contains(&format!("sent {RAW} bytes"))
            && said.contains("(not hashed)"),
        "nc --no-hash guest → host: host got {} bytes (pattern {}), guest said:\n{said}",
        data.len(),
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == nc_pattern(i as u64))
    );
    guest.send(b"nc --no-hash -l 5001\n")?;
    guest.expect("nc: listening on port 5001", STEP)?;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", forward))
        .map_err(|e| format!("connect to the forward: {e}"))?;
    let pattern: Vec<u8> = (0..RAW as u64).map(nc_pattern).collect();
    stream
        .write_all(&pattern)
        .map_err(|e| format!("send: {e}"))?;
    drop(stream);
    let line = guest.expect("lull> ", long)?;
    ensure!(
        line.contains(&format!("received {RAW} bytes")) && line.contains("(not hashed)"),
        "nc --no-hash host → guest: guest said:\n{line}"
    );
    poweroff_exits_zero(&mut guest)
}

fn virtio_rng_on_microvm() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = Machine::Microvm;
    config.extra = crate::qemu::VIRTIO_RNG_MMIO
        .iter()
        .map(|a| a.to_string())
        .collect();
    let mut guest = boot(&config)?;
    // Devices are probed after the prompt; a /sys read waits for that.
    let device = guest.run("cat /sys/bus/virtio/devices/virtio0/device", STEP)?;
    ensure!(
        device.contains("0x0004"),
        "virtio0's device type: {device:?}"
    );
    let first = guest.run("hwrng", STEP)?;
    let first = first.trim().to_string();
    ensure!(is_hex_line(&first, 32), "hwrng printed {first:?}");
    let second = guest.run("cat /dev/hwrng", STEP)?.trim().to_string();
    ensure!(
        is_hex_line(&second, 32),
        "cat /dev/hwrng printed {second:?}"
    );
    ensure!(first != second, "two reads gave the same bytes: {first}");
    ensure!(first != "0".repeat(64), "hwrng returned zeros");
    let long = guest.run("hwrng 100", STEP)?;
    let lines: Vec<&str> = long
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(
        lines.len() == 4 && lines[3].len() == 8,
        "hwrng 100 printed:\n{long}"
    );
    let interrupts = guest.run("cat /proc/interrupts", STEP)?;
    let count = interrupt_count(&interrupts, "virtio0").unwrap_or(0);
    ensure!(count >= 3, "virtio0 interrupts {count}:\n{interrupts}");
    let entropy = guest.run("cat /proc/sys/kernel/random/entropy_avail", STEP)?;
    ensure!(
        entropy.trim().parse::<u32>().is_ok_and(|bits| bits > 0),
        "entropy_avail {entropy:?}"
    );
    let reply = guest.run(
        "echo virtio0 > /sys/bus/virtio/drivers/virtio_rng/unbind",
        STEP,
    )?;
    ensure!(reply.trim().is_empty(), "unbind: {reply:?}");
    let unbound = guest.run("hwrng", STEP)?;
    ensure!(
        unbound.contains("no virtio-rng device is bound"),
        "hwrng while unbound: {unbound:?}"
    );
    let reply = guest.run(
        "echo virtio0 > /sys/bus/virtio/drivers/virtio_rng/bind",
        STEP,
    )?;
    ensure!(reply.trim().is_empty(), "bind: {reply:?}");
    let again = guest.run("hwrng", STEP)?.trim().to_string();
    ensure!(
        is_hex_line(&again, 32),
        "hwrng after rebind printed {again:?}"
    );
    poweroff_exits_zero(&mut guest)?;

    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    let none = guest.run("hwrng", STEP)?;
    ensure!(
        none.contains("no virtio-rng device is bound"),
        "hwrng on q35 without a device: {none:?}"
    );
    poweroff_exits_zero(&mut guest)
}

/// virtio-rng behind virtio-pci (q35, `-device virtio-rng-pci`: QEMU's transitional 1af4:1005
/// with the modern capabilities): `lspci -k` shows `virtio-pci` bound, `hwrng` reads bytes, the
/// queue's MSI-X vector (`PCI-MSIX-<function>`, named `virtio0`) counts up, and unbinding the
/// transport through `/sys/bus/pci/drivers/virtio-pci` takes the rng away until it binds again.
fn virtio_rng_on_q35_pci() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.extra = crate::qemu::VIRTIO_RNG_PCI
        .iter()
        .map(|a| a.to_string())
        .collect();
    let mut guest = boot(&config)?;
    let device = guest.run("cat /sys/bus/virtio/devices/virtio0/device", STEP)?;
    ensure!(
        device.contains("0x0004"),
        "virtio0's device type: {device:?}"
    );
    let lspci = guest.run("lspci -k", STEP)?;
    ensure!(
        lspci.contains("Kernel driver in use: virtio-pci"),
        "lspci -k:\n{lspci}"
    );
    let is_hex_line = |line: &str| line.len() == 64 && line.chars().all(|c| c.is_ascii_hexdigit());
    let first = guest.run("hwrng", STEP)?.trim().to_string();
    ensure!(is_hex_line(&first), "hwrng printed {first:?}");
    let second = guest.run("hwrng", STEP)?.trim().to_string();
    ensure!(
        is_hex_line(&second) && first != second,
        "hwrng: {first} then {second}"
    );
    let interrupts = guest.run("cat /proc/interrupts", STEP)?;
    let line = interrupts
        .lines()
        .find(|l| l.split_whitespace().last() == Some("virtio0"))
        .unwrap_or("");
    let function = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("PCI-MSIX-"))
        .map(str::to_string)
        .ok_or_else(|| format!("no PCI-MSIX line named virtio0:\n{interrupts}"))?;
    let before = interrupt_count(&interrupts, "virtio0").unwrap_or(0);
    guest.run("hwrng 100", STEP)?;
    let interrupts = guest.run("cat /proc/interrupts", STEP)?;
    let after = interrupt_count(&interrupts, "virtio0").unwrap_or(0);
    ensure!(
        before >= 2 && after > before,
        "virtio0 MSI-X interrupts {before} -> {after}:\n{interrupts}"
    );
    let reply = guest.run(
        &format!("echo {function} > /sys/bus/pci/drivers/virtio-pci/unbind"),
        STEP,
    )?;
    ensure!(reply.trim().is_empty(), "transport unbind: {reply:?}");
    let unbound = guest.run("hwrng", STEP)?;
    ensure!(
        unbound.contains("no virtio-rng device is bound"),
        "hwrng with the transport unbound: {unbound:?}"
    );
    let reply = guest.run(
        &format!("echo {function} > /sys/bus/pci/drivers/virtio-pci/bind"),
        STEP,
    )?;
    ensure!(reply.trim().is_empty(), "transport bind: {reply:?}");
    let again = guest.run("hwrng", STEP)?.trim().to_string();
    ensure!(
        is_hex_line(&again),
        "hwrng after the transport's rebind printed {again:?}"
    );
    poweroff_exits_zero(&mut guest)
}

/// The shell's `bench` microbenchmarks run and report figures on `-smp 2` (short counts: this
/// checks they work and fail cleanly, `cargo xtask bench` measures); microvm (no HPET) refuses
/// the interrupt benchmark with a reason, and bad arguments get the usage line.
/// The `checksum=` word of a `memtouch:` or `apfbench:` answer.
fn checksum_of(answer: &str) -> Option<&str> {
    answer
        .split_whitespace()
        .find_map(|word| word.strip_prefix("checksum="))
}

/// `memtouch fill` keeps a pattern that `memtouch sum` reads back with the same checksum (a
/// second fill gets another pattern), `apfbench` prints its three phases over the area and the
/// same checksum for its two passes, and bad input gets errors.
fn memtouch_fill_sum_and_apfbench() -> TestResult {
    let mut guest = boot(&QemuConfig::new(&shell_kernel()?))?;
    let long = std::time::Duration::from_secs(120);
    let empty = guest.run("memtouch sum", STEP)?;
    ensure!(
        empty.contains("nothing filled"),
        "memtouch sum first: {empty}"
    );
    let filled = guest.run("memtouch fill 4M", long)?;
    ensure!(
        filled.contains("memtouch: filled pages=1024 kib=4096 "),
        "memtouch fill 4M: {filled}"
    );
    let sum = guest.run("memtouch sum", long)?;
    ensure!(
        sum.contains("memtouch: sum pages=1024 ")
            && sum.trim_end().ends_with(" ok")
            && checksum_of(&sum).is_some()
            && checksum_of(&sum) == checksum_of(&filled),
        "memtouch sum after fill {filled}: {sum}"
    );
    let refilled = guest.run("memtouch fill 4M", long)?;
    ensure!(
        checksum_of(&refilled).is_some() && checksum_of(&refilled) != checksum_of(&filled),
        "a second fill wrote the same pattern: {filled} / {refilled}"
    );
    let apf = guest.run("apfbench 1M", long)?;
    for phase in ["cold", "warm", "alone"] {
        ensure!(
            apf.contains(&format!("apfbench: phase={phase} ")),
            "apfbench 1M has no {phase} phase: {apf}"
        );
    }
    ensure!(
        apf.contains("phase=cold pages=256 ") && apf.contains("apfbench: done checksum="),
        "apfbench 1M: {apf}"
    );
    for (command, error) in [
        ("memtouch fill 0", "invalid size"),
        ("memtouch fill 1T", "invalid size"),
        ("memtouch fill 100G", "cannot fill"),
        ("memtouch fill 18446744073709551615", "cannot fill"),
        ("apfbench 18446744073709551615", "KiB filled"),
        ("memtouch nonsense", "usage: memtouch"),
        ("apfbench 8M", "4096 KiB filled"),
        ("apfbench x", "invalid size"),
    ] {
        let answer = guest.run(command, STEP)?;
        ensure!(answer.contains(error), "{command}: {answer}");
    }
    let kept = guest.run("memtouch sum", long)?;
    ensure!(
        checksum_of(&kept) == checksum_of(&refilled) && kept.trim_end().ends_with(" ok"),
        "the failed fill and apfbench left the area as it was: {refilled} / {kept}"
    );
    let freed = guest.run("memtouch free", STEP)?;
    ensure!(freed.contains("freed pages=1024"), "memtouch free: {freed}");
    poweroff_exits_zero(&mut guest)
}

fn bench_commands_report_figures() -> TestResult {
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.cpus = 2;
    let mut guest = boot(&config)?;
    let long = std::time::Duration::from_secs(120);
    for (command, key, lines) in [
        ("bench pingpong 200", "ns_per_switch", 2),
        ("bench ipi 200", "p99_ns", 1),
        ("bench irq 20", "p50_ns", 2),
        ("bench lock 1000", "ns_per_acquisition", 8), // 4 kinds x 1..2 CPUs
    ] {
        let output = guest.run(command, long)?;
        let parsed = crate::bench::parse_kernel_bench(&output)?;
        ensure!(
            parsed.len() == lines && parsed.iter().all(|line| line.value(key).is_some()),
            "{command}: expected {lines} lines with {key}, got:\n{output}"
        );
    }
    let irq = guest.run("bench irq 20", long)?;
    let samples: Vec<u64> = crate::bench::parse_kernel_bench(&irq)?
        .iter()
        .filter_map(|line| line.value("samples"))
        .collect();
    ensure!(samples == [20, 20], "bench irq run twice:\n{irq}");
    let usage = guest.run("bench nonsense", STEP)?;
    ensure!(
        usage.contains("usage: bench"),
        "bench nonsense printed:\n{usage}"
    );
    let bad = guest.run("bench ipi -3", STEP)?;
    ensure!(
        bad.contains("expected a count"),
        "bench ipi -3 printed:\n{bad}"
    );
    poweroff_exits_zero(&mut guest)?;

    let mut config = QemuConfig::new(&shell_kernel()?);
    config.machine = Machine::Microvm;
    let mut guest = boot(&config)?;
    let irq = guest.run("bench irq 5", STEP)?;
    ensure!(
        irq.contains("no HPET"),
        "bench irq on microvm printed:\n{irq}"
    );
    let ipi = guest.run("bench ipi 5", STEP)?;
    ensure!(
        ipi.contains("needs a second CPU"),
        "bench ipi on one CPU printed:\n{ipi}"
    );
    poweroff_exits_zero(&mut guest)
}

/// Under `threadirqs` the COM1 and SCI handlers run in `irq/N-name` threads; the shell still
/// reads every command, also after `/proc/irq/4/smp_affinity` sent COM1 to CPU 1 (its
/// interrupts are then counted there), a bad mask is refused, and the (level-triggered,
/// threaded) power button still powers off.
fn threadirqs_serial_and_power_button_with_irq_affinity() -> TestResult {
    let socket = crate::kernel::repo_root().join("target/e2e-threadirqs-monitor.sock");
    let _ = std::fs::remove_file(&socket);
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.cpus = 2;
    config.append = "threadirqs".to_string();
    config.extra.push("-monitor".into());
    config
        .extra
        .push(format!("unix:{},server,nowait", socket.display()));
    let mut guest = boot(&config)?;
    let threads = guest.run("ps", STEP)?;
    for name in ["irq/4-ttyS0", "irq/9-acpi"] {
        ensure!(threads.contains(name), "no thread {name} in ps:\n{threads}");
    }
    let mask = guest.run("cat /proc/irq/4/smp_affinity", STEP)?;
    ensure!(
        mask.trim() == "3",
        "default COM1 affinity {mask:?}, expected 3"
    );
    let reply = guest.run("echo 0 > /proc/irq/4/smp_affinity", STEP)?;
    ensure!(
        reply.contains("Invalid argument"),
        "an empty mask was accepted: {reply:?}"
    );
    let reply = guest.run("echo 2 > /proc/irq/4/smp_affinity", STEP)?;
    ensure!(reply.trim().is_empty(), "echo 2 printed {reply:?}");
    let effective = guest.run("cat /proc/irq/4/effective_affinity_list", STEP)?;
    ensure!(
        effective.trim() == "1",
        "COM1 goes to CPU {effective:?}, expected 1"
    );
    let list = guest.run("cat /proc/irq/4/smp_affinity_list", STEP)?;
    ensure!(list.trim() == "1", "smp_affinity_list {list:?}, expected 1");
    // Typed after the move: every byte arrives through CPU 1.
    let interrupts = guest.run("cat /proc/interrupts", STEP)?;
    let serial_row = interrupts
        .lines()
        .find(|line| line.contains("ttyS0"))
        .ok_or(format!("no ttyS0 row:\n{interrupts}"))?;
    let on_cpu1: u64 = serial_row
        .split_whitespace()
        .nth(2)
        .and_then(|count| count.parse().ok())
        .ok_or(format!("ttyS0 row: {serial_row}"))?;
    ensure!(
        on_cpu1 > 0,
        "no COM1 interrupt counted on CPU 1 after the move: {serial_row}"
    );
    // The line's thread followed the interrupt to CPU 1 (ps: TID CPU ... NAME).
    let threads = guest.run("ps", STEP)?;
    let thread_cpu = threads
        .lines()
        .find(|line| line.trim_end().ends_with("irq/4-ttyS0"))
        .and_then(|line| line.split_whitespace().nth(1).map(str::to_string));
    ensure!(
        thread_cpu.as_deref() == Some("1"),
        "irq/4-ttyS0 is not on CPU 1 after the move:\n{threads}"
    );
    let mut monitor =
        std::os::unix::net::UnixStream::connect(&socket).map_err(|e| format!("monitor: {e}"))?;
    use std::io::Write as _;
    monitor
        .write_all(b"system_powerdown\n")
        .map_err(|e| format!("monitor: {e}"))?;
    let code = guest.wait_exit(STEP)?;
    let output = guest.output();
    ensure!(
        output.contains("ACPI: power button pressed"),
        "the threaded SCI did not see the power button:\n{output}"
    );
    ensure!(code == 0, "QEMU exited with {code} after the power button");
    Ok(())
}

/// QEMU 7.2's I2C bus trace events (`hw/i2c/core.c`): `i2c_event start(addr:0x50)` (a
/// repeated start for a read: `start_async(…)`), `nack(…)`, `finish(…)`, `i2c_send
/// send(addr:0x50) data:0x23`, `i2c_recv recv(addr:0x50) data:0xa5`. (7.2's `pm_smbus` itself
/// has no trace events.)
const I2C_EVENTS: &[&str] = &["i2c_event", "i2c_send", "i2c_recv"];

/// The `EVENT ARGS` part of each line of a QEMU log-backend trace (the `PID@TIME:` prefix cut).
fn trace_events(log: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(log)
        .map_err(|e| format!("cannot read trace {}: {e}", log.display()))?;
    Ok(text
        .lines()
        .map(|line| match line.split_once(':') {
            Some((prefix, rest)) if prefix.contains('@') => rest.trim().to_string(),
            _ => line.trim().to_string(),
        })
        .filter(|line| !line.is_empty())
        .collect())
}

/// `text` without the kernel's log lines (`[    0.174483] ...`) that a probe finishing beside
/// the shell printed into a command's output.
fn without_kernel_log(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let Some(rest) = line.strip_prefix('[') else {
                return true;
            };
            !rest.split_once("] ").is_some_and(|(stamp, _)| {
                let stamp = stamp.trim();
                !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
            })
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// A WAV file's channels, rate and bits per sample.
pub type WavFormat = (u16, u32, u16);

/// The `fmt` fields and the interleaved samples of a 16-bit PCM WAV file.
pub fn read_wav(path: &std::path::Path) -> Result<(WavFormat, Vec<i16>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |at: usize, len: usize| bytes.get(at..at + len).ok_or("WAV file too short");
    if field(0, 4)? != b"RIFF" || field(8, 4)? != b"WAVE" {
        return Err(format!("{}: not a RIFF/WAVE file", path.display()));
    }
    let (mut at, mut format, mut data) = (12, None, None);
    while at + 8 <= bytes.len() {
        let id = field(at, 4)?;
        let len = u32::from_le_bytes(field(at + 4, 4)?.try_into().unwrap_or_default()) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " && body.len() >= 16 {
            let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            ensure_format(u16_at(0), u16_at(14))?;
            format = Some((u16_at(2), rate, u16_at(14)));
        } else if id == b"data" {
            data = Some(
                body.chunks_exact(2)
                    .map(|p| i16::from_le_bytes([p[0], p[1]]))
                    .collect(),
            );
        }
        at += 8 + len + (len & 1);
    }
    Ok((
        format.ok_or("WAV file without a fmt chunk")?,
        data.ok_or("WAV file without a data chunk")?,
    ))
}

fn ensure_format(tag: u16, bits: u16) -> Result<(), String> {
    if tag == 1 && bits == 16 {
        Ok(())
    } else {
        Err(format!(
            "WAV format {tag}, {bits} bits: expected PCM, 16 bits"
        ))
    }
}

/// Power of `samples` at `frequency` (Goertzel), relative units.
fn tone_power(samples: &[i16], frequency: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * frequency / rate;
    let coefficient = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coefficient * s1 * s2
}

/// QEMU's wav audiodev `snd0` writing 48 kHz stereo S16 to `wav` (the argument of `-audiodev`).
pub fn wav_audiodev(wav: &std::path::Path) -> String {
    format!(
        "wav,id=snd0,path={},out.frequency=48000,out.channels=2,out.format=s16",
        wav.display()
    )
}

/// The strongest frequency between 999.0 and 1001.0 Hz (0.1 Hz steps) of a 48 kHz channel,
/// and its power.
fn spectral_peak_near_1khz(channel: &[i16]) -> (f64, f64) {
    (9_990..=10_010)
        .map(|tenths| {
            let f = f64::from(tenths) / 10.0;
            (f, tone_power(channel, f, 48_000.0))
        })
        .fold(
            (0.0, 0.0),
            |best, (f, p)| if p > best.1 { (f, p) } else { best },
        )
}

/// Samples QEMU's `hda-audio` codec drops when its audio back-end finds the codec's FIFO full:
/// the whole FIFO (`B_SIZE`, 8 KiB: 2,048 stereo S16 frames), traced as `hda_audio_overrun`.
/// That happens on the host (QEMU's audio timer ran late against the codec's DMA timer), not
/// in the guest: the DMA position the guest sees moves on as before.
const HDA_FIFO_DROP_SAMPLES: usize = 4096;

/// QEMU's `hda_audio_overrun` trace lines (`-trace hda_audio_overrun`): the times QEMU's codec
/// dropped its FIFO.
fn hda_fifo_drops(lines: &[(std::time::SystemTime, String)]) -> usize {
    lines
        .iter()
        .filter(|(_, line)| line.contains("hda_audio_overrun "))
        .count()
}

/// What [`wav_begins_with`] found: the recording and where in it the sent samples end.
struct WavMatch {
    samples: Vec<i16>,
    end: usize,
}

/// Reads QEMU's WAV at `wav` (48 kHz stereo S16 is required) and checks that it begins with
/// exactly the samples of `sent` (little-endian bytes) and holds at least `more` samples after
/// them. `qemu_drops` is how many times QEMU's HD Audio codec traced dropping its FIFO
/// ([`hda_fifo_drops`]; 0 for other devices): each may leave one gap of exactly
/// [`HDA_FIFO_DROP_SAMPLES`] in the recording, after which it must go on with the sent samples
/// from there, sample for sample. Any other difference fails.
fn wav_begins_with(
    wav: &std::path::Path,
    sent: &[u8],
    more: usize,
    qemu_drops: usize,
) -> Result<WavMatch, NotPassed> {
    let ((channels, rate, _), samples) = read_wav(wav)?;
    ensure!(
        channels == 2 && rate == 48_000,
        "WAV has {channels} channels at {rate} Hz"
    );
    let sent: Vec<i16> = sent
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect();
    let (end, gaps) = recording_matches(&samples, &sent, more, qemu_drops)?;
    for at in &gaps {
        println!(
            "  QEMU's hda codec dropped its {HDA_FIFO_DROP_SAMPLES}-sample FIFO (traced \
             hda_audio_overrun) at recorded sample {at}; the recording matches the samples \
             sent before that gap and after it"
        );
    }
    Ok(WavMatch { samples, end })
}

/// [`wav_begins_with`]'s comparison: returns where the sent samples end in `samples` and the
/// recorded positions of the gaps QEMU's drops left.
fn recording_matches(
    samples: &[i16],
    sent: &[i16],
    more: usize,
    qemu_drops: usize,
) -> Result<(usize, Vec<usize>), NotPassed> {
    // `skip`: sent samples missing from the recording so far (QEMU's drops).
    let (mut skip, mut from, mut gaps) = (0, 0, Vec::new());
    while let Some(at) = (from..samples.len())
        .take_while(|&i| i + skip < sent.len())
        .find(|&i| samples[i] != sent[i + skip])
    {
        if gaps.len() < qemu_drops {
            gaps.push(at);
            if at + skip + HDA_FIFO_DROP_SAMPLES >= sent.len() {
                // The drop took the last of the sent samples: they end here.
                skip = sent.len() - at;
                break;
            }
            skip += HDA_FIFO_DROP_SAMPLES;
            from = at;
            continue;
        }
        let was = if gaps.is_empty() {
            String::new()
        } else {
            format!(
                " (after QEMU's codec dropped its FIFO at recorded sample(s) {gaps:?}, the \
                 recording expected to go on {HDA_FIFO_DROP_SAMPLES} samples later each time)"
            )
        };
        return Err(NotPassed::Failed(format!(
            "the recording differs from the samples sent at sample {at} (frame {}): got {:?}, \
             sent {:?}{was}; QEMU traced {qemu_drops} codec FIFO drop(s)",
            at / 2,
            &samples[at..(at + 6).min(samples.len())],
            &sent[(at + skip)..(at + skip + 6).min(sent.len())]
        )));
    }
    let end = sent.len() - skip;
    ensure!(
        samples.len() >= end + more,
        "the WAV holds {} samples; {} were sent first ({skip} of them dropped by QEMU) and \
         {more} more expected",
        samples.len(),
        sent.len()
    );
    Ok((end, gaps))
}

/// Sound judged by the WAV QEMU wrote: `speaker-test -t sine -f 1000 -l 1` on q35's AC97 (the
/// `snd_intel8x0` driver, bus-master DMA, a completion interrupt per period) reaches the file
/// sample for sample as the kernel generated it (the host generates the same samples with
/// `lull-pcm`), the spectral peak is 1000 Hz within 0.1 Hz at the level asked for, no period
/// underran; after `amixer sset Master mute` the same tone records as silence; at Master 31 of 63
/// a full-scale tone records at the gain QEMU's AC97 documents (linear in the register).
fn ac97_sine_in_qemu_wav_is_bit_exact_and_mute_is_silence() -> TestResult {
    let wav = std::env::temp_dir().join(format!("lull-e2e-ac97-{}.wav", std::process::id()));
    let _ = std::fs::remove_file(&wav);
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.extra = vec![
        "-audiodev".into(),
        wav_audiodev(&wav),
        "-device".into(),
        "AC97,audiodev=snd0".into(),
    ];
    let mut guest = boot(&config)?;
    let long = Duration::from_secs(60);
    let played = without_kernel_log(&guest.run("speaker-test -t sine -f 1000 -l 1", long)?);
    ensure!(
        played.contains("played 48000 frames") && played.contains(" 0 underruns"),
        "speaker-test: {played:?}"
    );
    let mute = guest.run("amixer sset Master mute", STEP)?;
    ensure!(mute.contains("[off]"), "amixer: {mute:?}");
    let silent = guest.run("speaker-test -t sine -f 1000 -l 1", long)?;
    ensure!(
        silent.contains("played 48000 frames"),
        "muted speaker-test: {silent:?}"
    );
    // Master at 31 of 63 (attenuation 32 steps), a full-scale tone.
    guest.run("amixer sset Master unmute", STEP)?;
    let set = guest.run("amixer sset Master 31", STEP)?;
    ensure!(set.contains("31 ["), "amixer: {set:?}");
    let scaled = guest.run("speaker-test -t sine -f 1000 -A 100 -l 1", long)?;
    ensure!(
        scaled.contains("played 48000 frames"),
        "speaker-test at Master 31: {scaled:?}"
    );
    // QEMU writes the WAV header when it exits cleanly.
    poweroff_exits_zero(&mut guest)?;
    // (QEMU's AC97 has no FIFO it drops: no gap is allowed.)
    let WavMatch { samples, end, .. } = wav_begins_with(
        &wav,
        &lull_pcm::sine_bytes(1000, 48_000, 2, 50, 48_000).map_err(|e| e.to_string())?,
        0,
        0,
    )?;
    let left: Vec<i16> = samples[..end].iter().step_by(2).copied().collect();
    let (peak, power) = spectral_peak_near_1khz(&left);
    let within = (peak - 1000.0f64).abs() < 0.15;
    ensure!(within, "spectral peak at {peak} Hz, not 1000 Hz");
    for other in [500.0, 1500.0, 2000.0] {
        let p = tone_power(&left, other, 48_000.0);
        let dominant = power > 1000.0 * p;
        ensure!(
            dominant,
            "{other} Hz has {p:.3e} against {power:.3e} at 1000 Hz"
        );
    }
    let max = left.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    ensure!(
        (16_300..=16_400).contains(&max),
        "peak level {max}, not 50 % of full scale"
    );
    ensure!(
        samples.len() >= end + 2 * 90_000,
        "the WAV holds {} samples; three tones were played",
        samples.len()
    );
    let muted = &samples[end..end + 90_000];
    ensure!(
        muted.iter().all(|&s| s == 0),
        "after mute: {} of {} samples not zero",
        muted.iter().filter(|&&s| s != 0).count(),
        muted.len()
    );
    // The last tone (its final 3 ms may be missing: QEMU flushes the file at exit): QEMU's AC97
    // documents its gain as linear, not the codec's 1.5 dB steps: attenuation a of 63 gives
    // 255 - 255 * a / 63 out of 255 (integer), with PCM out at 0 (255).
    let last: Vec<i16> = samples[samples.len() - 90_000..]
        .iter()
        .step_by(2)
        .copied()
        .collect();
    let expected = 32_767.0 * f64::from(255 - 255 * 32 / 63) / 255.0;
    let level = f64::from(last.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0));
    let within = (level - expected).abs() <= expected * 0.02;
    ensure!(
        within,
        "peak {level} at Master 31/63; QEMU's linear gain gives {expected:.0}"
    );
    let _ = std::fs::remove_file(&wav);
    Ok(())
}

/// One thing seen from outside the guest, with the host wall-clock time it happened at.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// QEMU's codec (`debug=2`): a verb the guest sent.
    Verb { nid: u32, verb: u32, payload: u32 },
    /// QEMU's `hda_audio_running` trace: a codec stream started or stopped.
    Running { stream: String, run: bool },
    /// The GPIO back-end: the amplifier line's new level.
    Amp(bool),
}

/// QEMU's stderr as events: `-msg timestamp=on` trace lines carry QEMU's own time
/// (`PID@SECONDS.MICROS:event …`); the codec's verb prints carry the time the host read them.
fn qemu_events(lines: &[(std::time::SystemTime, String)]) -> Vec<(f64, Seen)> {
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let hex = |text: &str, key: &str| -> Option<u32> {
        let at = text.find(key)? + key.len();
        let digits: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        u32::from_str_radix(&digits, 16).ok()
    };
    let mut events = Vec::new();
    for (read_at, line) in lines {
        if let Some(at) = line.find("hda_audio_command: nid ") {
            let rest = &line[at + "hda_audio_command: nid ".len()..];
            let nid = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            if let (Some(nid), Some(verb), Some(payload)) =
                (nid, hex(rest, "verb 0x"), hex(rest, "payload 0x"))
            {
                events.push((unix(*read_at), Seen::Verb { nid, verb, payload }));
            }
        } else if let Some(at) = line.find("hda_audio_running ") {
            // "PID@SECS.MICROS:hda_audio_running st dac, nr 1, run 1"
            let stamp = line[..at]
                .split('@')
                .nth(1)
                .and_then(|s| s.trim_end_matches(':').parse::<f64>().ok())
                .unwrap_or_else(|| unix(*read_at));
            let rest = &line[at + "hda_audio_running ".len()..];
            let stream = rest
                .strip_prefix("st ")
                .and_then(|s| s.split(',').next())
                .unwrap_or("")
                .to_string();
            let run = rest.trim_end().ends_with("run 1");
            events.push((stamp, Seen::Running { stream, run }));
        }
    }
    events
}

/// Seconds since 1970 of the back-end log's `2026-12-03T00:37:18.123456Z`.
fn parse_iso_utc(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let (whole, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let seconds = parse_utc(&format!("{date} {whole} UTC"))?;
    Some(seconds as f64 + format!("0.{fraction}").parse::<f64>().ok()?)
}

/// The amplifier's level changes in the GPIO back-end's log (`[elapsed wall] line 0
/// (amp-enable) -> 1`).
fn amp_events(log: &str) -> Vec<(f64, Seen)> {
    log.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('[')?;
            let (stamps, message) = rest.split_once("] ")?;
            let level = message.strip_prefix("line 0 (amp-enable) -> ")?;
            let wall = parse_iso_utc(stamps.split_whitespace().nth(1)?)?;
            Some((wall, Seen::Amp(level.trim() == "1")))
        })
        .collect()
}

/// DAPM on the HD Audio card, judged from outside: QEMU's verb log (`hda-duplex,debug=2`), its
/// `hda_audio_running` trace, the GPIO back-end's log of the `amp-enable` line and the WAV.
/// While idle nothing is powered and the amp is low; a playback powers the function group (nid
/// 1, a supply: first), the DAC (nid 2) and its pin (nid 3) and raises the amp before QEMU's
/// stream runs, and powers down (amp low
/// first) `pmdown_time` after it stops, not before; a reopen within `pmdown_time` power-cycles
/// nothing; with Master muted the only path stays down (and the WAV is silent); capture powers
/// the capture path (pin 5, ADC 4) only. The first tone is bit-exact in the WAV.
fn hda_dapm_seen_in_qemu_verbs_gpio_log_and_wav() -> TestResult {
    let gpio = GpioBackend::start("lull-e2e-hda")?;
    let wav = gpio.dir.join("out.wav");
    let log = gpio.log.clone();
    let result = (|| -> TestResult {
        let mut config = QemuConfig::new(&shell_kernel()?);
        config.separate_stderr = true;
        config.extra = gpio.qemu_args(config.memory_mib);
        config.extra.extend([
            "-audiodev".into(),
            wav_audiodev(&wav),
            "-device".into(),
            "ich9-intel-hda".into(),
            "-device".into(),
            "hda-duplex,audiodev=snd0,debug=2".into(),
            "-trace".into(),
            "hda_audio_running".into(),
            "-trace".into(),
            "hda_audio_overrun".into(),
            "-msg".into(),
            "timestamp=on".into(),
        ]);
        let mut guest = boot(&config)?;
        let long = Duration::from_secs(60);
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let pmdown = guest.run("dapm pmdown_time", STEP)?;
        ensure!(pmdown.trim() == "5000", "default pmdown_time: {pmdown:?}");
        let idle = guest.run("dapm", STEP)?;
        ensure!(
            idle.contains("bias: Off") && !idle.contains(": On "),
            "idle card:\n{idle}"
        );
        guest.run("dapm pmdown_time 2000", STEP)?;
        // Phase 1: one playback, then the delayed power-down.
        let t1 = now();
        let played = without_kernel_log(&guest.run("speaker-test -t sine -f 1000 -l 1", long)?);
        ensure!(
            played.contains("played 48000 frames") && played.contains(" 0 underruns"),
            "speaker-test: {played:?}"
        );
        std::thread::sleep(Duration::from_millis(3500));
        // Phase 2: two playbacks back to back (the second within pmdown_time).
        let t2 = now();
        for _ in 0..2 {
            let again = guest.run("speaker-test -l 1", long)?;
            ensure!(
                again.contains("played 48000 frames"),
                "speaker-test: {again:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(3500));
        // Phase 3: Master muted: the only path is disconnected.
        let t3 = now();
        let mute = guest.run("amixer sset Master mute", STEP)?;
        ensure!(mute.contains("[off]"), "amixer: {mute:?}");
        let muted = guest.run("speaker-test -l 1", long)?;
        ensure!(
            muted.contains("played 48000 frames"),
            "muted speaker-test: {muted:?}"
        );
        // Phase 4: capture (the wav back-end gives no data; the path powers up all the same).
        let t4 = now();
        let recorded = guest.run("arecord -d 1", long)?;
        std::thread::sleep(Duration::from_millis(500));
        let t5 = now();
        poweroff_exits_zero(&mut guest)?;
        let mut events = qemu_events(&guest.stderr_lines());
        let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        events.extend(amp_events(&text));
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let during = |from: f64, to: f64| -> Vec<&(f64, Seen)> {
            events
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .collect()
        };
        let power = |nid: u32, on: bool| Seen::Verb {
            nid,
            verb: 0x705,
            payload: if on { 0 } else { 3 },
        };
        let dac_running = |run: bool| move |e: &Seen| matches!(e, Seen::Running { stream, run: r } if stream.contains("dac") && *r == run);
        let describe = |list: &[&(f64, Seen)]| -> String {
            list.iter()
                .map(|(t, e)| format!("  {t:.6} {e:?}\n"))
                .collect()
        };
        // Before phase 1: the amp never went high.
        let before = during(0.0, t1);
        ensure!(
            !before.iter().any(|(_, e)| *e == Seen::Amp(true)),
            "the amp went high while idle:\n{}",
            describe(&before)
        );
        // Phase 1.
        let one = during(t1, t2);
        let at = |list: &[&(f64, Seen)], want: &dyn Fn(&Seen) -> bool| {
            list.iter().position(|(_, e)| want(e))
        };
        let after = |from: Option<usize>, want: &dyn Fn(&Seen) -> bool| {
            let from = from? + 1;
            one[from..]
                .iter()
                .position(|(_, e)| want(e))
                .map(|i| from + i)
        };
        let (dac_on, pin_on, amp_on) = (
            at(&one, &|e| *e == power(2, true)),
            at(&one, &|e| *e == power(3, true)),
            at(&one, &|e| *e == Seen::Amp(true)),
        );
        let start = at(&one, &dac_running(true));
        let stop = after(start, &dac_running(false));
        // (Requesting the line as an output at 0 logs a first "-> 0": the one that counts
        // comes after the stream.)
        let amp_off = after(stop, &|e| *e == Seen::Amp(false));
        let dac_off = after(stop, &|e| *e == power(2, false));
        let (
            Some(dac_on),
            Some(pin_on),
            Some(amp_on),
            Some(start),
            Some(stop),
            Some(amp_off),
            Some(dac_off),
        ) = (dac_on, pin_on, amp_on, start, stop, amp_off, dac_off)
        else {
            return Err(NotPassed::Failed(format!(
                "playback: missing power-up, amp, stream or power-down events:\n{}",
                describe(&one)
            )));
        };
        ensure!(
            dac_on < start && pin_on < start && amp_on < start,
            "the DAC, its pin and the amp must be up before the stream runs:\n{}",
            describe(&one)
        );
        ensure!(
            amp_off < dac_off,
            "after the stream: amp low, then the DAC down:\n{}",
            describe(&one)
        );
        // The function group (nid 1) is the supply: up before the DAC, down after it.
        let supply_on = at(&one, &|e| *e == power(1, true));
        let supply_off = after(Some(dac_off), &|e| *e == power(1, false));
        ensure!(
            supply_on.is_some_and(|on| on < dac_on) && supply_off.is_some(),
            "the function group must power up before the DAC and down after it:\n{}",
            describe(&one)
        );
        let delay = one[amp_off].0 - one[stop].0;
        ensure!(
            (1.95..3.0).contains(&delay),
            "the power-down came {delay:.3} s after the stream stopped (pmdown_time 2 s):\n{}",
            describe(&one)
        );
        // Phase 2: no power cycle between the two streams.
        let two = during(t2, t3);
        let starts: Vec<usize> = (0..two.len())
            .filter(|&i| dac_running(true)(&two[i].1))
            .collect();
        ensure!(
            starts.len() == 2,
            "two streams expected:\n{}",
            describe(&two)
        );
        let between = &two[..starts[1]];
        ensure!(
            !between
                .iter()
                .any(|(_, e)| *e == power(2, false) || *e == Seen::Amp(false)),
            "a reopen within pmdown_time power-cycled the path:\n{}",
            describe(&two)
        );
        ensure!(
            two.iter().filter(|(_, e)| *e == power(2, false)).count() == 1,
            "one power-down after both streams:\n{}",
            describe(&two)
        );
        // Phase 3: muted, nothing powers up.
        let three = during(t3, t4);
        ensure!(
            !three
                .iter()
                .any(|(_, e)| *e == power(2, true) || *e == Seen::Amp(true)),
            "with Master muted the path powered up:\n{}",
            describe(&three)
        );
        // Phase 4: the capture path only.
        let four = during(t4, t5);
        ensure!(
            four.iter().any(|(_, e)| *e == power(5, true))
                && four.iter().any(|(_, e)| *e == power(4, true))
                && four.iter().any(|(_, e)| *e == power(4, false)),
            "capture must power pin 5 and ADC 4 up and down (arecord said {recorded:?}):\n{}",
            describe(&four)
        );
        ensure!(
            !four.iter().any(|(_, e)| *e == power(2, true)
                || *e == power(3, true)
                || matches!(e, Seen::Amp(_))),
            "capture touched the playback path:\n{}",
            describe(&four)
        );
        // The WAV: the first tone bit-exact, the muted second at the end silent.
        let WavMatch { samples, .. } = wav_begins_with(
            &wav,
            &lull_pcm::sine_bytes(1000, 48_000, 2, 50, 48_000).map_err(|e| e.to_string())?,
            96_000,
            hda_fifo_drops(&guest.stderr_lines()),
        )?;
        let tail = &samples[samples.len() - 96_000..];
        ensure!(
            tail.iter().all(|&s| s == 0),
            "the muted tone is not silent: {} of its last 96000 samples are not zero",
            tail.iter().filter(|&&s| s != 0).count()
        );
        Ok(())
    })();
    gpio.finish(result)
}

/// Sound judged by the WAV QEMU wrote, through HD Audio: `hda play-test` on q35's
/// `ich9-intel-hda` with an `hda-duplex` codec (the `snd_hda_intel` controller driver: verbs
/// through CORB/RIRB, an output stream on a BDL of periods refilled by LPIB) plays 1 s of a
/// 1 kHz sine at 50 % that reaches the file sample for sample as the host generates it with
/// `lull-pcm`, with no underrun; the codec answered with QEMU's vendor id (0x1af4) first, and
/// `hda widgets` / `hda verb` show hda-duplex's widget tree.
fn hda_stream_in_qemu_wav_is_bit_exact() -> TestResult {
    let wav = std::env::temp_dir().join(format!("lull-e2e-hda-{}.wav", std::process::id()));
    let _ = std::fs::remove_file(&wav);
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.extra = vec![
        "-audiodev".into(),
        wav_audiodev(&wav),
        "-device".into(),
        "ich9-intel-hda".into(),
        "-device".into(),
        "hda-duplex,audiodev=snd0".into(),
        "-trace".into(),
        "hda_audio_overrun".into(),
    ];
    config.separate_stderr = true;
    let mut guest = boot(&config)?;
    let listed = without_kernel_log(&guest.run("hda", STEP)?);
    ensure!(
        listed.contains("snd_hda_intel") && listed.contains("codec 0: vendor id 0x1af4"),
        "hda: {listed:?}"
    );
    // hda-duplex's tree: the DAC (2) feeds the output pin (3); the ADC (4) takes the input pin (5).
    let tree = without_kernel_log(&guest.run("hda widgets", STEP)?);
    for expected in [
        "Vendor Id: 0x1af4",
        "Node 0x01 [Audio Function Group]",
        "Node 0x02 [Audio Output]",
        "Amp-Out caps: ofs=0x4a",
        "Node 0x03 [Pin Complex]",
        "Pincap 0x00000010: OUT",
        "Node 0x04 [Audio Input]",
        "Node 0x05 [Pin Complex]",
    ] {
        ensure!(
            tree.contains(expected),
            "hda widgets lacks {expected:?}:\n{tree}"
        );
    }
    // A raw verb: the output pin's connection list entry 0 is the DAC.
    let raw = without_kernel_log(&guest.run("hda verb 0 3 0xf0200", STEP)?);
    ensure!(raw.trim() == "0x00000002", "hda verb 0 3 0xf0200: {raw:?}");
    let long = Duration::from_secs(60);
    let played = without_kernel_log(&guest.run("hda play-test", long)?);
    ensure!(
        played.contains("played 48000 frames") && played.contains(" 0 underruns"),
        "hda play-test: {played:?}"
    );
    // QEMU writes the WAV header when it exits cleanly.
    poweroff_exits_zero(&mut guest)?;
    let WavMatch { samples, end, .. } = wav_begins_with(
        &wav,
        &lull_pcm::sine_bytes(1000, 48_000, 2, 50, 48_000).map_err(|e| e.to_string())?,
        0,
        hda_fifo_drops(&guest.stderr_lines()),
    )?;
    // What follows the tone is the drain's silence.
    let after = &samples[end..];
    ensure!(
        after.iter().all(|&s| s == 0),
        "after the tone: {} samples, {} not zero",
        after.len(),
        after.iter().filter(|&&s| s != 0).count()
    );
    let _ = std::fs::remove_file(&wav);
    Ok(())
}

/// HD Audio through the ASoC card, judged by the WAV: `speaker-test -t pattern` (every sample
/// a count, so a dropped, repeated or swapped sample shows) reaches the file bit for bit; then
/// with `amixer sset Master 37` (of 0-74 steps on the DAC's amplifier) a full-scale 1 kHz sine
/// records at the level QEMU's codec documents for that gain (linear: gain x 255 / 74 of
/// 255) and its spectral peak is 1000 Hz within 1 Hz.
fn hda_pattern_and_volume_in_qemu_wav() -> TestResult {
    let wav = std::env::temp_dir().join(format!("lull-e2e-hda-pattern-{}.wav", std::process::id()));
    let _ = std::fs::remove_file(&wav);
    let mut config = QemuConfig::new(&shell_kernel()?);
    config.extra = vec![
        "-audiodev".into(),
        wav_audiodev(&wav),
        "-device".into(),
        "ich9-intel-hda".into(),
        "-device".into(),
        "hda-output,audiodev=snd0".into(),
        "-trace".into(),
        "hda_audio_overrun".into(),
    ];
    config.separate_stderr = true;
    let mut guest = boot(&config)?;
    let long = Duration::from_secs(60);
    let played = without_kernel_log(&guest.run("speaker-test -t pattern -l 1", long)?);
    ensure!(
        played.contains("played 48000 frames") && played.contains(" 0 underruns"),
        "speaker-test -t pattern: {played:?}"
    );
    let set = guest.run("amixer sset Master 37", STEP)?;
    ensure!(set.contains("37 [50%]"), "amixer: {set:?}");
    let tone = without_kernel_log(&guest.run("speaker-test -t sine -f 1000 -A 100 -l 1", long)?);
    ensure!(
        tone.contains("played 48000 frames"),
        "speaker-test: {tone:?}"
    );
    poweroff_exits_zero(&mut guest)?;
    let WavMatch { samples, .. } = wav_begins_with(
        &wav,
        &lull_pcm::pattern_bytes(2, 48_000).map_err(|e| e.to_string())?,
        96_000,
        hda_fifo_drops(&guest.stderr_lines()),
    )?;
    // The tone: the last second of the file (after the pattern and any silence between).
    let left: Vec<i16> = samples[samples.len() - 96_000..]
        .iter()
        .step_by(2)
        .copied()
        .collect();
    let (peak, power) = spectral_peak_near_1khz(&left);
    ensure!(
        (peak - 1000.0f64).abs() <= 1.0 && power > 0.0,
        "spectral peak at {peak} Hz, not 1000 Hz"
    );
    // QEMU's hda-codec: volume = gain * 255 / 74 (integer), applied linearly out of 255.
    let expected = 32_767.0 * f64::from(37 * 255 / 74) / 255.0;
    let max = f64::from(left.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0));
    let within = (max - expected).abs() <= expected * 0.02;
    ensure!(
        within,
        "peak level {max} at Master 37/74; QEMU's linear gain gives {expected:.0}"
    );
    let _ = std::fs::remove_file(&wav);
    Ok(())
}

/// The HD Audio card and the virtio-gpio controller its amplifier hangs on, unbound and
/// rebound from `/sys` (10 rounds, in both orders), then the virtio-gpio probe failed at each
/// managed acquisition in turn with `devres_fail_nth`: the leak counters return to their
/// baseline, and afterwards playback works and the amplifier still switches (the machine driver
/// looks the line up again when its chip went away), as the GPIO back-end's log shows.
fn hda_and_virtio_gpio_unbind_bind_leak_nothing_and_the_amp_switches_again() -> TestResult {
    let gpio = GpioBackend::start("lull-e2e-hda-rebind")?;
    let log = gpio.log.clone();
    let result = (|| -> TestResult {
        let mut config = QemuConfig::new(&shell_kernel()?);
        config.extra = gpio.qemu_args(config.memory_mib);
        config.extra.extend([
            "-audiodev".into(),
            "none,id=snd0".into(),
            "-device".into(),
            "ich9-intel-hda".into(),
            "-device".into(),
            "hda-output,audiodev=snd0".into(),
        ]);
        let mut guest = boot(&config)?;
        let long = Duration::from_secs(60);
        guest.run("dapm pmdown_time 100", STEP)?;
        let first = guest.run("speaker-test -l 1", long)?;
        ensure!(
            first.contains("played 48000 frames"),
            "speaker-test: {first:?}"
        );
        let bound = |guest: &mut Guest, bus: &str, driver: &str| -> Result<String, NotPassed> {
            let listing = guest.run(&format!("ls /sys/bus/{bus}/drivers/{driver}"), STEP)?;
            listing
                .split_whitespace()
                .find(|w| w.starts_with("virtio") || w.starts_with("0000:"))
                .map(str::to_string)
                .ok_or_else(|| NotPassed::Failed(format!("nothing bound to {driver}: {listing:?}")))
        };
        let gpio = bound(&mut guest, "virtio", "virtio_gpio")?;
        let hda = bound(&mut guest, "pci", "snd_hda_intel")?;
        let file =
            |bus: &str, driver: &str, name: &str| format!("/sys/bus/{bus}/drivers/{driver}/{name}");
        let write = |guest: &mut Guest, path: &str, value: &str| -> Result<String, NotPassed> {
            Ok(guest.run(&format!("echo {value} > {path}"), STEP)?)
        };
        let cycle = |guest: &mut Guest, hda_first: bool| -> TestResult {
            let steps = [
                (file("pci", "snd_hda_intel", "unbind"), hda.as_str()),
                (file("virtio", "virtio_gpio", "unbind"), gpio.as_str()),
                (file("virtio", "virtio_gpio", "bind"), gpio.as_str()),
                (file("pci", "snd_hda_intel", "bind"), hda.as_str()),
            ];
            let order: [usize; 4] = if hda_first {
                [0, 1, 2, 3]
            } else {
                [1, 0, 3, 2]
            };
            for i in order {
                write(guest, &steps[i].0, steps[i].1)?;
            }
            Ok(())
        };
        // Warm-up (tables that grow on first use reach their size), then the baseline.
        cycle(&mut guest, true)?;
        cycle(&mut guest, false)?;
        let before = quiet_leak_counters(&mut guest)?;
        for round in 0..10 {
            cycle(&mut guest, round % 2 == 0)?;
        }
        let (settled, after) = leak_counters_settle(&mut guest, &before)?;
        ensure!(
            settled,
            "after 10 unbind/bind rounds of both:\n{after}\nbefore:\n{before}"
        );
        // The card takes the amp line (a playback), then its chip goes away under it.
        guest.run("dapm pmdown_time 100", STEP)?;
        let held = guest.run("speaker-test -l 1", long)?;
        ensure!(
            held.contains("played 48000 frames"),
            "speaker-test: {held:?}"
        );
        // virtio-gpio's probe failed at each managed acquisition in turn: nothing bound after a
        // failure, nothing left behind.
        let knob = file("virtio", "virtio_gpio", "devres_fail_nth");
        write(&mut guest, &file("virtio", "virtio_gpio", "unbind"), &gpio)?;
        write(&mut guest, &knob, "1")?;
        write(&mut guest, &knob, "0")?;
        let unbound = quiet_leak_counters(&mut guest)?;
        let mut failures = 0;
        for nth in 1..=32 {
            write(&mut guest, &knob, &nth.to_string())?;
            let answer = write(&mut guest, &file("virtio", "virtio_gpio", "bind"), &gpio)?;
            let listing = guest.run("ls /sys/bus/virtio/drivers/virtio_gpio", STEP)?;
            if listing.contains(&gpio) {
                ensure!(
                    failures > 0,
                    "the first acquisition did not fail: {answer:?}"
                );
                break;
            }
            failures += 1;
            write(&mut guest, &knob, "0")?;
            let (clean, now) = leak_counters_settle(&mut guest, &unbound)?;
            ensure!(
                clean,
                "virtio-gpio probe failed at acquisition {nth}; counters:\n{now}\nunbound:\n{unbound}"
            );
        }
        write(&mut guest, &knob, "0")?;
        let listing = guest.run("ls /sys/bus/virtio/drivers/virtio_gpio", STEP)?;
        ensure!(
            listing.contains(&gpio),
            "virtio-gpio is not bound after {failures} failed probes:\n{listing}"
        );
        // Playback and the amplifier work again: the card's line went with the old chip, and it
        // looks the line up again.
        let marker = std::fs::read_to_string(&log).map(|t| t.len()).unwrap_or(0);
        let again = guest.run("speaker-test -l 1", long)?;
        ensure!(
            again.contains("played 48000 frames"),
            "speaker-test after the rounds: {again:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let tail = &text[marker.min(text.len())..];
        ensure!(
            tail.contains("line 0 (amp-enable) -> 1") && tail.contains("line 0 (amp-enable) -> 0"),
            "the amplifier did not switch after the rounds ({failures} failed probes); the \
             back-end logged:\n{tail}"
        );
        poweroff_exits_zero(&mut guest)
    })();
    gpio.finish(result)
}

/// A `lull-gpio-backend` for one test: its own directory with the vhost-user socket, the
/// control socket and the log; killed when the test ends (the directory kept if it failed).
struct GpioBackend {
    child: std::process::Child,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
    control: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl GpioBackend {
    /// Builds and starts the back-end in a fresh `lull-e2e-TAG-PID` directory and waits for
    /// its sockets.
    fn start(tag: &str) -> Result<Self, NotPassed> {
        let binary = gpio_backend_binary()?;
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (socket, control, log) = (
            dir.join("gpio.sock"),
            dir.join("ctl.sock"),
            dir.join("gpio.log"),
        );
        let child = std::process::Command::new(&binary)
            .arg("--socket")
            .arg(&socket)
            .arg("--control")
            .arg(&control)
            .arg("--log")
            .arg(&log)
            .arg("--no-stdin")
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let backend = Self {
            child,
            dir,
            socket,
            control,
            log,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Ready when the control socket accepts a connection: the back-end listens on its
        // vhost-user socket before it binds the control socket, and a socket's file appears
        // at bind(2), a moment before listen(2).
        while std::os::unix::net::UnixStream::connect(&backend.control).is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "lull-gpio-backend made no sockets in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(backend)
    }

    /// QEMU's arguments for a `vhost-user-gpio-pci` on this back-end (guest RAM must be
    /// shared memory for vhost-user).
    fn qemu_args(&self, memory_mib: u32) -> Vec<String> {
        vec![
            "-machine".into(),
            "memory-backend=mem".into(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
            "-chardev".into(),
            format!("socket,id=vg,path={}", self.socket.display()),
            "-device".into(),
            "vhost-user-gpio-pci,chardev=vg".into(),
        ]
    }

    /// Waits up to `timeout` for the back-end to exit by itself (it does when QEMU leaves);
    /// its status, or `None` (then it is killed).
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }

    /// Stops the back-end; removes its directory if the test passed.
    fn finish(mut self, result: TestResult) -> TestResult {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if result.is_ok() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        result
    }
}

impl Drop for GpioBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds `lull-gpio-backend` (the repository's vhost-user-gpio back-end); returns its path.
fn gpio_backend_binary() -> Result<std::path::PathBuf, String> {
    let root = kernel::repo_root();
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "lull-vhost-user-gpio"])
            .status()
            .map_err(|e| format!("cannot build lull-gpio-backend: {e}"))?;
    if !status.success() {
        return Err("building lull-gpio-backend failed".into());
    }
    Ok(root.join("target/debug/lull-gpio-backend"))
}

/// One command on the back-end's control socket; returns its reply line.
fn gpio_control(socket: &std::path::Path, command: &str) -> Result<String, String> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("control socket {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    writeln!(stream, "{command}").map_err(|e| format!("control {command:?}: {e}"))?;
    let mut reply = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| format!("control {command:?}: {e}"))?;
    Ok(reply.trim().to_string())
}

/// virtio-gpio on q35 through QEMU's `vhost-user-gpio-pci` and the repository's back-end, judged
/// by the back-end's log: the guest finds the chip and the line names the back-end gave,
/// `gpioset` drives a line (value, then direction, as the spec wants; the log shows the level
/// change), `gpioget` reads the level the host set through the control socket, a held line is
/// refused naming its holder, and after an unbind/bind of the driver the lines work again.
/// QEMU 7.2's vhost-user-gpio does not pass `VIRTIO_GPIO_F_IRQ` to the guest, so the event
/// queue is not reachable here.
fn virtio_gpio_lines_seen_in_the_vhost_user_backend_log() -> TestResult {
    let mut gpio = GpioBackend::start("lull-e2e-vgpio")?;
    let (control, log) = (gpio.control.clone(), gpio.log.clone());
    let result = (|| -> TestResult {
        let mut config = QemuConfig::new(&shell_kernel()?);
        config.extra = gpio.qemu_args(config.memory_mib);
        let mut guest = boot(&config)?;
        let chips = without_kernel_log(&guest.run("gpiodetect", STEP)?);
        ensure!(
            chips.contains("gpiochip1 [virtio-gpio] (8 lines)"),
            "gpiodetect: {chips:?}"
        );
        let info = guest.run("gpioinfo gpiochip1", STEP)?;
        ensure!(
            info.contains("\"amp-enable\"") && info.contains("\"button\""),
            "gpioinfo gpiochip1 (the back-end's names):\n{info}"
        );
        let set = guest.run("gpioset gpiochip1 0=1", STEP)?;
        ensure!(set.trim().is_empty(), "gpioset: {set:?}");
        for level in [1, 0] {
            let reply = gpio_control(&control, &format!("set button {level}"))?;
            ensure!(
                reply.starts_with("ok"),
                "control set button {level}: {reply:?}"
            );
            let got = guest.run("gpioget gpiochip1 1", STEP)?;
            ensure!(
                got.trim() == level.to_string(),
                "gpioget of the button the host set to {level}: {got:?}"
            );
        }
        let held = guest.run("gpioset -m time -s 5 -b gpiochip1 2=1", STEP)?;
        ensure!(held.trim().is_empty(), "gpioset -b: {held:?}");
        let refused = guest.run("gpioset gpiochip1 2=0", STEP)?;
        ensure!(
            refused.contains("line 2 of gpiochip1 is busy: requested by \"gpioset\""),
            "a second claim of a held line: {refused:?}"
        );
        let bound = guest.run("ls /sys/bus/virtio/drivers/virtio_gpio", STEP)?;
        let device = bound
            .split_whitespace()
            .find(|w| w.starts_with("virtio") && w[6..].chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| format!("no device bound to virtio_gpio: {bound:?}"))?
            .to_string();
        guest.run(
            &format!("echo {device} > /sys/bus/virtio/drivers/virtio_gpio/unbind"),
            STEP,
        )?;
        let gone = guest.run("gpiodetect", STEP)?;
        ensure!(!gone.contains("virtio-gpio"), "after unbind: {gone:?}");
        guest.run(
            &format!("echo {device} > /sys/bus/virtio/drivers/virtio_gpio/bind"),
            STEP,
        )?;
        let again = without_kernel_log(&guest.run("gpioset gpiochip1 3=1", STEP)?);
        ensure!(again.trim().is_empty(), "gpioset after rebind: {again:?}");
        poweroff_exits_zero(&mut guest)?;
        let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let position = |needle: &str| {
            text.find(needle)
                .ok_or_else(|| format!("the back-end log has no {needle:?}:\n{text}"))
        };
        let value = position("SET_VALUE gpio 0 value 1: ok")?;
        let direction = position("SET_DIRECTION gpio 0 value 1: ok")?;
        let level = position("line 0 (amp-enable) -> 1")?;
        ensure!(
            value < direction && direction < level,
            "line 0: value, direction and level change out of order:\n{text}"
        );
        position("line 2 (led0) -> 1")?;
        position("line 3 (led1) -> 1")?;
        ensure!(
            !text.contains("SET_VALUE gpio 2 value 0"),
            "the refused claim reached the device:\n{text}"
        );
        Ok(())
    })();
    // QEMU is gone (or the test failed): the back-end exits on the disconnect, or is stopped.
    let status = gpio.wait_exit(Duration::from_secs(5));
    result?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "lull-gpio-backend did not exit cleanly after QEMU left: {status:?}"
    );
    gpio.finish(Ok(()))
}

/// The parallel port's register accesses, as QEMU traces them.
const PARPORT_EVENTS: &[&str] = &["parallel_ioport_read", "parallel_ioport_write"];

/// `(addr, val)` of each `parallel_ioport_<kind> <kind> [SW] addr 0xNN val 0xNN` event.
fn parport_accesses(events: &[String], kind: &str) -> Vec<(u8, u8)> {
    let prefix = format!("parallel_ioport_{kind} {kind} [SW] addr 0x");
    events
        .iter()
        .filter_map(|event| {
            let rest = event.strip_prefix(&prefix)?;
            let (addr, val) = rest.split_once(" val 0x")?;
            Some((
                u8::from_str_radix(addr, 16).ok()?,
                u8::from_str_radix(val.trim(), 16).ok()?,
            ))
        })
        .collect()
}

/// GPIO through the parallel port (q35's LPT1, `PNP0400`), judged by QEMU's trace of the
/// port's registers: `gpioset` on data lines writes the data register bit by bit, nStrobe low
/// sets control bit 0 (the port inverts it), `gpioget` of the status lines prints what the
/// status register read in the trace says at the wire, a line held by one consumer is refused
/// to a second naming the first, and the chip goes and comes back with an unbind/bind.
fn parport_gpio_lines_seen_in_qemu_trace() -> TestResult {
    let log = std::env::temp_dir().join(format!("lull-e2e-parport-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut config = QemuConfig::new(&shell_kernel()?);
    for event in PARPORT_EVENTS {
        config.extra.push("-trace".into());
        config.extra.push(format!("enable={event}"));
    }
    config.extra.push("-D".into());
    config.extra.push(log.display().to_string());
    let mut guest = boot(&config)?;
    let chips = without_kernel_log(&guest.run("gpiodetect", STEP)?);
    ensure!(
        chips.trim() == "gpiochip0 [parport] (17 lines)",
        "gpiodetect: {chips:?}"
    );
    let info = guest.run("gpioinfo gpiochip0", STEP)?;
    let line = |name: &str| {
        info.lines()
            .find(|l| l.contains(&format!("\"{name}\"")))
            .unwrap_or("")
            .to_string()
    };
    ensure!(
        line("nStrobe").contains("output") && line("Busy").contains("input"),
        "gpioinfo gpiochip0:\n{info}"
    );
    for command in [
        "gpioset gpiochip0 0=0 1=0 2=0 3=0 4=0 5=0 6=0 7=0",
        "gpioset gpiochip0 0=1 2=1 7=1",
        "gpioset gpiochip0 8=0",
        "gpioset gpiochip0 8=1",
    ] {
        let out = guest.run(command, STEP)?;
        ensure!(out.trim().is_empty(), "{command}: {out:?}");
    }
    let status = guest.run("gpioget gpiochip0 12 13 14 15 16", STEP)?;
    let held = guest.run("gpioset -m time -s 5 -b gpiochip0 3=1", STEP)?;
    ensure!(held.trim().is_empty(), "gpioset -b: {held:?}");
    let refused = guest.run("gpioset gpiochip0 3=0", STEP)?;
    ensure!(
        refused.trim()
            == "gpioset: error setting the GPIO line values: line 3 of gpiochip0 is busy: \
                requested by \"gpioset\"",
        "a second claim of a held line: {refused:?}"
    );
    let input_only = guest.run("gpioset gpiochip0 16=1", STEP)?;
    ensure!(
        input_only.contains("not supported"),
        "driving the Busy input: {input_only:?}"
    );
    guest.run(
        "echo PNP0400:00 > /sys/bus/acpi/drivers/parport/unbind",
        STEP,
    )?;
    let none = guest.run("gpiodetect", STEP)?;
    let ports = guest.run("cat /proc/ioports", STEP)?;
    ensure!(
        none.trim().is_empty() && !ports.contains("parport"),
        "after unbind: gpiodetect {none:?}, /proc/ioports:\n{ports}"
    );
    guest.run("echo PNP0400:00 > /sys/bus/acpi/drivers/parport/bind", STEP)?;
    let again = without_kernel_log(&guest.run("gpioset gpiochip0 3=0 6=1", STEP)?);
    ensure!(again.trim().is_empty(), "gpioset after rebind: {again:?}");
    poweroff_exits_zero(&mut guest)?;

    let events = trace_events(&log)?;
    let writes = parport_accesses(&events, "write");
    ensure!(
        !writes.is_empty(),
        "the trace {} holds no parallel port writes",
        log.display()
    );
    let data: Vec<u8> = writes
        .iter()
        .filter(|(addr, _)| *addr == 0)
        .map(|&(_, val)| val)
        .collect();
    // Clearing all eight, then D0, D2, D7 set one by one; later (after the background holder
    // set D3 and the rebind) D3 cleared, D6 set.
    let cleared = data
        .iter()
        .position(|&v| v == 0)
        .ok_or_else(|| format!("no data write of 0x00 (clearing D0-D7): {data:02x?}"))?;
    let after = &data[cleared..];
    let find = |pattern: &[u8]| after.windows(pattern.len()).position(|w| w == pattern);
    let set = find(&[0x01, 0x05, 0x85])
        .ok_or_else(|| format!("no writes 01, 05, 85 (D0, D2, D7 set) after it: {after:02x?}"))?;
    ensure!(
        after[set..].windows(3).any(|w| w == [0x8d, 0x85, 0xc5]),
        "no writes 8d (D3 held), 85 (D3 cleared), c5 (D6 set) after the rebind: {after:02x?}"
    );
    let control: Vec<u8> = writes
        .iter()
        .filter(|(addr, _)| *addr == 2)
        .map(|&(_, val)| val)
        .collect();
    ensure!(
        control
            .windows(2)
            .any(|w| w[0] & 1 == 1 && w[1] == w[0] & !1),
        "no control write setting bit 0 (nStrobe low) then clearing it: {control:02x?}"
    );
    // gpioget printed the wire levels of the status register QEMU answered with.
    let reads = parport_accesses(&events, "read");
    let status_reg = reads
        .iter()
        .rev()
        .find(|(addr, _)| *addr == 1)
        .map(|&(_, val)| val)
        .ok_or("no status register read in the trace")?;
    let wire = [
        status_reg >> 3 & 1,
        status_reg >> 4 & 1,
        status_reg >> 5 & 1,
        status_reg >> 6 & 1,
        (status_reg >> 7 & 1) ^ 1,
    ];
    let expected = wire
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    ensure!(
        status.trim() == expected,
        "gpioget of the status lines: {status:?}; status register {status_reg:#04x} means {expected:?}"
    );
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// The issue's SMBus check, seen from outside: `i2cset` then `i2cget` on the EEPROM at 0x50
/// through the ICH9 SMBus (00:1f.3); QEMU's own I2C trace shows the write (command byte, then
/// the value) and the read (command byte, then the value received), and the value survives a
/// re-read, an unbind/bind of the SMBus driver and the `eeprom` sysfs file.
fn smbus_eeprom_write_read_seen_in_qemu_i2c_trace() -> TestResult {
    let log = std::env::temp_dir().join(format!("lull-e2e-i2c-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut config = QemuConfig::new(&shell_kernel()?);
    for event in I2C_EVENTS {
        config.extra.push("-trace".into());
        config.extra.push(format!("enable={event}"));
    }
    config.extra.push("-D".into());
    config.extra.push(log.display().to_string());
    let mut guest = boot(&config)?;
    let list = guest.run("i2cdetect -l", STEP)?;
    ensure!(
        list.starts_with("i2c-0\tsmbus     \tSMBus I801 adapter at "),
        "i2cdetect -l: {list:?}"
    );
    let grid = guest.run("i2cdetect -y 0", STEP)?;
    ensure!(
        grid.contains("\n50: UU UU UU UU UU UU UU UU -- -- -- -- -- -- -- -- \n"),
        "i2cdetect -y 0 (the eight EEPROMs bound to the eeprom driver):\n{grid}"
    );
    let busy = guest.run("i2cget -y 0 0x50 0x23", STEP)?;
    ensure!(
        busy.trim() == "Error: Could not set address to 0x50: Device or resource busy",
        "i2cget without -f on a bound address: {busy:?}"
    );
    let old = guest.run("i2cget -f -y 0 0x50 0x23", STEP)?;
    let old = u8::from_str_radix(old.trim().trim_start_matches("0x"), 16)
        .map_err(|_| format!("i2cget: {old:?}"))?;
    let value = if old == 0xa5 { 0x5a } else { 0xa5 };
    let set = guest.run(&format!("i2cset -f -y 0 0x50 0x23 0x{value:02x}"), STEP)?;
    ensure!(set.trim().is_empty(), "i2cset printed {set:?}");
    let want = format!("0x{value:02x}");
    for when in ["after the write", "on a re-read"] {
        let got = guest.run("i2cget -f -y 0 0x50 0x23", STEP)?;
        ensure!(got.trim() == want, "i2cget {when}: {got:?}, wrote {want}");
    }
    guest.run(
        "echo 0000:00:1f.3 > /sys/bus/pci/drivers/i801_smbus/unbind",
        STEP,
    )?;
    let gone = guest.run("i2cget -f -y 0 0x50 0x23", STEP)?;
    ensure!(
        gone.trim()
            == "Error: Could not open file `/dev/i2c-0' or `/dev/i2c/0': No such file or directory",
        "i2cget with the SMBus driver unbound: {gone:?}"
    );
    guest.run(
        "echo 0000:00:1f.3 > /sys/bus/pci/drivers/i801_smbus/bind",
        STEP,
    )?;
    let got = guest.run("i2cget -f -y 0 0x50 0x23 b", STEP)?;
    ensure!(got.trim() == want, "i2cget after unbind/bind: {got:?}");
    let file = guest.run("cat /sys/bus/i2c/devices/0-0050/eeprom", STEP)?;
    let row = file.lines().find(|l| l.starts_with("20: ")).unwrap_or("");
    ensure!(
        row.split_whitespace().nth(4) == Some(&want[2..]),
        "eeprom file row 0x20 has no {want} at 0x23:\n{file}"
    );
    let nack = guest.run("i2cget -y 0 0x21", STEP)?;
    ensure!(
        nack.trim() == "Error: Read failed",
        "i2cget at an empty address: {nack:?}"
    );
    poweroff_exits_zero(&mut guest)?;

    // QEMU has exited: the trace is complete.
    // A repeated start reads `start_async` in 7.2 (the receive half of `smbus_read_byte`).
    let events: Vec<String> = trace_events(&log)?
        .into_iter()
        .map(|e| e.replace("i2c_event start_async(", "i2c_event start("))
        .collect();
    ensure!(
        !events.is_empty(),
        "the trace {} holds no events (QEMU without the log trace backend?)",
        log.display()
    );
    let send = |byte: u8| format!("i2c_send send(addr:0x50) data:0x{byte:02x}");
    let recv = |byte: u8| format!("i2c_recv recv(addr:0x50) data:0x{byte:02x}");
    let find_from = |from: usize, pattern: &[String]| {
        (from..events.len().saturating_sub(pattern.len() - 1))
            .find(|&i| pattern.iter().zip(&events[i..]).all(|(p, e)| p == e))
    };
    // The write: command byte 0x23, then the value, in one transfer.
    let write = find_from(0, &[send(0x23), send(value)]).ok_or_else(|| {
        format!(
            "no write of 0x{value:02x} to 0x50 register 0x23 in the trace ({} events)",
            events.len()
        )
    })?;
    // Then the reads: command byte 0x23, a repeated start, the value received.
    let read_pattern = [
        send(0x23),
        "i2c_event start(addr:0x50)".to_string(),
        recv(value),
    ];
    let first_read = find_from(write + 2, &read_pattern)
        .ok_or("no read of the written value after the write in the trace")?;
    ensure!(
        find_from(first_read + 3, &read_pattern).is_some(),
        "the re-read is not in the trace"
    );
    let _ = std::fs::remove_file(&log);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct sample values, so any shift shows.
    fn counting(n: usize) -> Vec<i16> {
        (0..n).map(|i| (i % 30_000) as i16).collect()
    }

    #[test]
    fn a_recording_matches_only_with_a_traced_drop_of_exactly_the_fifo() {
        let sent = counting(20_000);
        let mut exact = sent.clone();
        exact.extend([0; 100]);
        assert_eq!(
            recording_matches(&exact, &sent, 100, 0).ok(),
            Some((20_000, vec![]))
        );
        assert!(recording_matches(&exact, &sent, 101, 0).is_err());
        // QEMU dropped its FIFO at 5,000: the recording skips 4,096 sent samples.
        let mut dropped = sent[..5_000].to_vec();
        dropped.extend_from_slice(&sent[5_000 + HDA_FIFO_DROP_SAMPLES..]);
        dropped.extend([0; 100]);
        assert!(
            recording_matches(&dropped, &sent, 0, 0).is_err(),
            "no drop traced"
        );
        assert_eq!(
            recording_matches(&dropped, &sent, 100, 1).ok(),
            Some((20_000 - HDA_FIFO_DROP_SAMPLES, vec![5_000]))
        );
        // A gap of another size is not QEMU's drop.
        let mut short = sent[..5_000].to_vec();
        short.extend_from_slice(&sent[5_000 + HDA_FIFO_DROP_SAMPLES - 2..]);
        assert!(recording_matches(&short, &sent, 0, 3).is_err());
        // Two drops traced, two gaps.
        let mut twice = sent[..1_000].to_vec();
        twice.extend_from_slice(&sent[1_000 + HDA_FIFO_DROP_SAMPLES..9_000]);
        twice.extend_from_slice(&sent[9_000 + HDA_FIFO_DROP_SAMPLES..]);
        assert!(recording_matches(&twice, &sent, 0, 1).is_err());
        assert_eq!(
            recording_matches(&twice, &sent, 0, 2).ok(),
            Some((20_000 - 2 * HDA_FIFO_DROP_SAMPLES, vec![1_000, 4_904]))
        );
        // A drop that took the last sent samples: they end at the gap.
        let mut tail = sent[..18_000].to_vec();
        tail.extend([0; 500]);
        assert_eq!(
            recording_matches(&tail, &sent, 500, 1).ok(),
            Some((18_000, vec![18_000]))
        );
        // A wrong sample is wrong with or without drops.
        let mut wrong = exact.clone();
        wrong[7] += 1;
        assert!(recording_matches(&wrong, &sent, 0, 1).is_err());
    }
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A control run that saw HZ=250 over 10 s.
    fn ticking() -> Counts {
        Counts {
            window_s: 10.0,
            lapic_timer: 2500,
            log_events: 4000,
            log_lapic_timer: 2700,
            ..Counts::default()
        }
    }

    /// An idle window with no timer interrupt, from a log that holds the boot's events.
    fn quiet() -> Counts {
        Counts {
            window_s: 10.0,
            log_events: 900,
            log_lapic_timer: 40,
            ..Counts::default()
        }
    }

    fn empty_trace() -> Counts {
        crate::trace::count_lines(&b""[..], (UNIX_EPOCH, SystemTime::now())).expect("reads")
    }

    #[test]
    fn a_quiet_window_with_a_ticking_control_passes() {
        check_tickless(&quiet(), Some(&ticking()), "q35").expect("tickless");
    }

    #[test]
    fn an_empty_trace_fails_the_tickless_check() {
        let error = check_tickless(&empty_trace(), Some(&ticking()), "q35").expect_err("empty");
        assert!(error.contains("no events"), "{error}");
    }

    #[test]
    fn an_empty_control_trace_fails() {
        let error = check_tickless(&quiet(), Some(&empty_trace()), "q35").expect_err("empty");
        assert!(
            error.contains("control run") && error.contains("no events"),
            "{error}"
        );
        assert!(check_control(Some(&empty_trace())).is_err());
    }

    #[test]
    fn a_missing_control_run_fails() {
        let error = check_tickless(&quiet(), None, "q35").expect_err("no control");
        assert!(error.contains("no control run"), "{error}");
    }

    #[test]
    fn a_control_without_the_tick_fails() {
        let control = Counts {
            lapic_timer: 3,
            ..ticking()
        };
        let error = check_control(Some(&control)).expect_err("no tick");
        assert!(error.contains("expected about HZ=250"), "{error}");
    }

    #[test]
    fn timer_interrupts_in_the_window_fail() {
        let idle = Counts {
            lapic_timer: 2,
            ..quiet()
        };
        let error = check_tickless(&idle, Some(&ticking()), "q35").expect_err("ticks");
        assert!(error.contains("2 LAPIC timer interrupts"), "{error}");
    }
}
