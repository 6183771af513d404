//! The stock Linux reference guest: Debian's kernel with busybox and cyclictest, measured from
//! outside in the same QEMU configuration as Lull.
//!
//! Two boots of Debian's Linux 6.1 on q35, TCG, 1 vCPU, 256 MiB, with an initramfs built here:
//! - *idle*: init prints `LINUXREF-IDLE-START`, sleeps, prints `LINUXREF-IDLE-END`; the host notes
//!   when it sees each marker and counts the interrupts QEMU traced in between ([`crate::trace`]);
//! - *latency*: init runs `cyclictest -m -q -p 80 -i 1000 -l 10000 -h 20000` (absolute 1 kHz
//!   `clock_nanosleep`, SCHED_FIFO 80, a 1 µs-bucket histogram up to 20 ms) and the host parses
//!   its histogram. This boot is not traced, so trace logging costs the latency nothing.
//!
//! Everything comes from Debian packages: the kernel is `apt-get download`ed and unpacked (not
//! installed: no initramfs-tools run, no `/boot` changes) into `target/linuxref/`, where the
//! initramfs is cached too.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::qemu::{Guest, QemuConfig};
use crate::trace::{self, Counts};

const IDLE_START: &str = "LINUXREF-IDLE-START";
const IDLE_END: &str = "LINUXREF-IDLE-END";
const CYCLICTEST_START: &str = "LINUXREF-CYCLICTEST-START";
const CYCLICTEST_END: &str = "LINUXREF-CYCLICTEST-END";
const DONE: &str = "LINUXREF-DONE";

/// cyclictest's histogram range in µs (1 µs buckets); samples above it count as overflows.
const HISTOGRAM_LIMIT_US: u64 = 20_000;

/// Left out at each end of the idle window: the guest's serial interrupts for printing the
/// markers land a millisecond or two before the host reads them.
const WINDOW_GUARD: Duration = Duration::from_millis(100);

/// The init script. Parameters come from the kernel command line (`linuxref.mode=idle|latency`,
/// `linuxref.idle_s=N`, `linuxref.loops=N`) so one initramfs serves every run.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
mode=idle
idle_s=10
loops=10000
blk_bytes=16777216
net_bytes=67108864
net_port=5001
for word in $(cat /proc/cmdline); do
    case "$word" in
        linuxref.net_bytes=*) net_bytes="${word#linuxref.net_bytes=}" ;;
        linuxref.net_port=*) net_port="${word#linuxref.net_port=}" ;;
        linuxref.blk_bytes=*) blk_bytes="${word#linuxref.blk_bytes=}" ;;
        linuxref.mode=*) mode="${word#linuxref.mode=}" ;;
        linuxref.idle_s=*) idle_s="${word#linuxref.idle_s=}" ;;
        linuxref.loops=*) loops="${word#linuxref.loops=}" ;;
    esac
done
case "$mode" in
    idle)
        echo LINUXREF-IDLE-START
        sleep "$idle_s"
        echo LINUXREF-IDLE-END
        ;;
    blk)
        # Debian builds virtio as modules; load the block path, then measure /dev/vda.
        for module in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
            insmod "/modules/$module.ko"
        done
        for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
        echo LINUXREF-BLK-START
        /bin/blkbench /dev/vda "$blk_bytes"
        echo LINUXREF-BLK-END
        ;;
    net)
        # virtio-net (Debian builds it as modules), a static address on QEMU's user network,
        # then `net_bytes` to the host's sink and as many from the host (see bench.rs).
        for module in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
            insmod "/modules/$module.ko"
        done
        for i in 1 2 3 4 5 6 7 8 9 10; do [ -d /sys/class/net/eth0 ] && break; sleep 1; done
        ip link set lo up
        ip link set eth0 up
        ip addr add 10.0.2.15/24 dev eth0
        ip route add default via 10.0.2.2
        sleep 1
        echo LINUXREF-NET-READY
        # Both ways hash what they move, as Lull's nc does (its send and sink-and-hash modes).
        mkfifo /tmp/sent
        sha256sum < /tmp/sent &
        dd if=/dev/zero bs=65536 count=$((net_bytes / 65536)) 2>/dev/null | tee /tmp/sent | nc 10.0.2.2 "$net_port"
        wait
        echo LINUXREF-NET-SENT
        nc -l -p 5001 | sha256sum
        echo LINUXREF-NET-RECEIVED
        # Then both ways only moving bytes (Lull's nc --no-hash).
        dd if=/dev/zero bs=65536 count=$((net_bytes / 65536)) 2>/dev/null | nc 10.0.2.2 "$net_port"
        echo LINUXREF-NET-RAW-SENT
        nc -l -p 5001 > /dev/null
        echo LINUXREF-NET-RAW-RECEIVED
        echo LINUXREF-PING-START
        ping -c 20 10.0.2.2
        echo LINUXREF-PING-END
        ;;
    latency)
        # Let boot-time deferred work settle first.
        sleep 1
        echo LINUXREF-CYCLICTEST-START
        # Only non-empty histogram buckets: 20 000 lines over an emulated UART take seconds.
        cyclictest -m -q -p 80 -i 1000 -l "$loops" -h 20000 2>&1 | grep -v ' 000000$'
        echo LINUXREF-CYCLICTEST-END
        ;;
esac
echo LINUXREF-DONE
poweroff -f
"#;

/// The modules the `blk` mode loads, in dependency order (Debian builds virtio as modules).
const BLK_MODULES: [&str; 6] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// The network modules the `net` mode loads after [`BLK_MODULES`]' virtio core.
const NET_MODULES: [&str; 3] = ["failover", "net_failover", "virtio_net"];

/// The block benchmark Linux runs: the same measurements as Lull's `blk bench -w` (O_DIRECT,
/// Linux AIO with 32 in flight, 4 KiB random reads at depth 1 and 32), built statically here.
const BLKBENCH_C: &str = include_str!("linuxref/blkbench.c");

/// Linux's `blkbench` line (`blk bench vda … IOPS`) on q35 with `-drive` args `drive` (the
/// same QEMU configuration as Lull's `cargo xtask bench --filter blk`).
pub fn measure_linux_blk(drive: &[String], bytes: u64) -> Result<String, String> {
    crate::tools::ensure_qemu()?;
    let dir = crate::kernel::repo_root().join("target").join("linuxref");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kernel = debian_kernel(&dir)?;
    let initramfs = build_initramfs(&dir)?;
    let mut config = reference_config(
        &kernel,
        &initramfs,
        &format!("linuxref.mode=blk linuxref.blk_bytes={bytes}"),
    );
    config.extra.extend(drive.iter().cloned());
    let mut guest = Guest::spawn(&config)?;
    guest.expect("LINUXREF-BLK-START", Duration::from_secs(180))?;
    let text = guest.expect("LINUXREF-BLK-END", Duration::from_secs(600))?;
    finish(&mut guest)?;
    text.lines()
        .find(|line| line.starts_with("blk bench vda"))
        .map(|line| line.trim().to_string())
        .ok_or_else(|| format!("Linux blkbench printed:\n{text}"))
}

/// Boots the Linux reference on q35 with `netdev` (a `-netdev user,…` plus its
/// `virtio-net-pci`) in `net` mode and returns the guest once it is configured; the caller
/// drives the transfers (`LINUXREF-NET-SENT`, `LINUXREF-NET-RECEIVED` mark their ends).
pub fn boot_linux_net(netdev: &[String], bytes: u64, sink_port: u16) -> Result<Guest, String> {
    crate::tools::ensure_qemu()?;
    let dir = crate::kernel::repo_root().join("target").join("linuxref");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kernel = debian_kernel(&dir)?;
    let initramfs = build_initramfs(&dir)?;
    let mut config = reference_config(
        &kernel,
        &initramfs,
        &format!("linuxref.mode=net linuxref.net_bytes={bytes} linuxref.net_port={sink_port}"),
    );
    config.extra.extend(netdev.iter().cloned());
    let mut guest = Guest::spawn(&config)?;
    guest.expect("LINUXREF-NET-READY", Duration::from_secs(180))?;
    Ok(guest)
}

/// Waits for the reference guest to finish and power off.
pub fn finish_linux(guest: &mut Guest) -> Result<(), String> {
    finish(guest)
}

/// How long each phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxRefOptions {
    /// Seconds the guest sits idle.
    pub idle_s: u32,
    /// cyclictest periods (1 ms each).
    pub loops: u32,
    /// cyclictest boots; the one with the median p99 is reported (the tail depends on what
    /// else the shared host is running, so a single run can be far off).
    pub latency_runs: u32,
}

impl Default for LinuxRefOptions {
    fn default() -> Self {
        LinuxRefOptions {
            idle_s: 10,
            loops: 10_000,
            latency_runs: 3,
        }
    }
}

/// Timer wake-up lateness as cyclictest measured it, in µs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Every sample, overflows included.
    pub samples: u64,
    /// Samples above the histogram's range.
    pub overflows: u64,
    /// cyclictest's own summary figures.
    pub min_us: u64,
    pub avg_us: u64,
    pub max_us: u64,
    /// `(µs, count)` for each non-empty 1 µs bucket, ascending.
    pub histogram: Vec<(u64, u64)>,
    /// Upper end of the histogram.
    pub histogram_limit_us: u64,
}

impl Latency {
    /// The smallest bucket at or below which a fraction `q` of all samples lies; `None` when
    /// that rank falls among the overflows (or there are no samples).
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.samples == 0 {
            return None;
        }
        let rank = ((q * self.samples as f64).ceil() as u64).clamp(1, self.samples);
        let mut seen = 0;
        for &(us, count) in &self.histogram {
            seen += count;
            if seen >= rank {
                return Some(us);
            }
        }
        None
    }

    fn show(&self, q: f64) -> String {
        match self.percentile(q) {
            Some(us) => us.to_string(),
            None => format!(">{}", self.histogram_limit_us),
        }
    }

    /// The histogram as text: one `µs count` line per non-empty bucket.
    pub fn histogram_text(&self) -> String {
        let mut text = String::from("# latency_us count\n");
        for (us, count) in &self.histogram {
            let _ = writeln!(text, "{us} {count}");
        }
        if self.overflows > 0 {
            let _ = writeln!(text, ">{} {}", self.histogram_limit_us, self.overflows);
        }
        text
    }
}

/// What the stock Linux guest measured.
#[derive(Debug, Clone)]
pub struct LinuxReference {
    /// The kernel image used (`vmlinuz-6.1.0-…-amd64`).
    pub kernel: String,
    /// Interrupts in the idle window.
    pub idle: Counts,
    pub idle_lapic_timer_per_s: f64,
    pub idle_other_irqs_per_s: f64,
    /// The cyclictest run with the median p99.
    pub latency: Latency,
    /// p99 of every cyclictest run, in the order they ran (`None`: above the histogram).
    pub p99_per_run_us: Vec<Option<u64>>,
}

impl LinuxReference {
    /// Benchmark rows, in the style of the other `cargo xtask bench` rows.
    pub fn rows(&self) -> Vec<String> {
        let latency = &self.latency;
        vec![
            format!(
                "idle wakeups Linux ({}, q35 TCG): LAPIC timer {:.2}/s, other interrupts {:.2}/s \
                 (counted from the QEMU trace over {})",
                self.kernel,
                self.idle_lapic_timer_per_s,
                self.idle_other_irqs_per_s,
                self.idle.describe()
            ),
            format!(
                "timer latency Linux cyclictest 1 kHz ({} samples; run with the median p99 of \
                 {}, p99s {}): p50 {} us, p99 {} us, max {} us (min {} us, avg {} us, {} over {} us)",
                latency.samples,
                self.p99_per_run_us.len(),
                self.p99_per_run_us
                    .iter()
                    .map(|p| p.map_or(format!(">{}", latency.histogram_limit_us), |us| us.to_string()))
                    .collect::<Vec<_>>()
                    .join("/"),
                latency.show(0.50),
                latency.show(0.99),
                latency.max_us,
                latency.min_us,
                latency.avg_us,
                latency.overflows,
                latency.histogram_limit_us,
            ),
        ]
    }
}

/// Boots the Linux reference: once idle (traced), then `latency_runs` times for cyclictest.
pub fn measure_linux(options: &LinuxRefOptions) -> Result<LinuxReference, String> {
    crate::tools::ensure_qemu()?;
    let dir = crate::kernel::repo_root().join("target").join("linuxref");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kernel = debian_kernel(&dir)?;
    let initramfs = build_initramfs(&dir)?;
    let kernel_name = kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    eprintln!(
        "xtask: linuxref: idle {} s on {kernel_name} (traced)",
        options.idle_s
    );
    let log = dir.join("idle-trace.log");
    let mut config = reference_config(
        &kernel,
        &initramfs,
        &format!("linuxref.mode=idle linuxref.idle_s={}", options.idle_s),
    );
    trace::enable(&mut config, &log)?;
    let mut guest = Guest::spawn(&config)?;
    guest.expect(IDLE_START, Duration::from_secs(180))?;
    let start = SystemTime::now();
    guest.expect(
        IDLE_END,
        Duration::from_secs(u64::from(options.idle_s) * 3 + 60),
    )?;
    let end = SystemTime::now();
    finish(&mut guest)?;
    let idle = trace::count_events(&log, trace::trim_window(start, end, WINDOW_GUARD))?;
    if idle.window_s < 1.0 {
        return Err(format!(
            "idle window only {:.2} s long; is linuxref.idle_s too small?",
            idle.window_s
        ));
    }

    let mut runs = Vec::new();
    for run in 1..=options.latency_runs.max(1) {
        eprintln!(
            "xtask: linuxref: cyclictest run {run}/{}, {} loops at 1 kHz",
            options.latency_runs.max(1),
            options.loops
        );
        runs.push(cyclictest_run(&kernel, &initramfs, options.loops)?);
    }
    let p99_per_run_us = runs.iter().map(|r| r.percentile(0.99)).collect();
    let latency = median_by_p99(runs).ok_or("no cyclictest run")?;

    Ok(LinuxReference {
        kernel: kernel_name,
        idle_lapic_timer_per_s: idle.per_second(idle.lapic_timer),
        idle_other_irqs_per_s: idle.per_second(idle.other_deliveries()),
        idle,
        latency,
        p99_per_run_us,
    })
}

/// One boot running cyclictest (not traced).
fn cyclictest_run(kernel: &Path, initramfs: &Path, loops: u32) -> Result<Latency, String> {
    let config = reference_config(
        kernel,
        initramfs,
        &format!("linuxref.mode=latency linuxref.loops={loops}"),
    );
    let mut guest = Guest::spawn(&config)?;
    guest.expect(CYCLICTEST_START, Duration::from_secs(180))?;
    // Under TCG a 1 ms period is kept roughly in real time; allow for a loaded host.
    let text = guest.expect(
        CYCLICTEST_END,
        Duration::from_secs(u64::from(loops) / 1000 * 4 + 120),
    )?;
    finish(&mut guest)?;
    parse_cyclictest(&text)
}

/// The run whose p99 is the median (a p99 above the histogram ranks highest).
fn median_by_p99(mut runs: Vec<Latency>) -> Option<Latency> {
    runs.sort_by_key(|run| run.percentile(0.99).unwrap_or(u64::MAX));
    let middle = runs.len().checked_sub(1)? / 2;
    Some(runs.swap_remove(middle))
}

/// q35, TCG, 1 vCPU, 256 MiB, no display, console on the serial port, as for Lull.
fn reference_config(kernel: &Path, initramfs: &Path, parameters: &str) -> QemuConfig {
    let mut config = QemuConfig::new(kernel);
    // `quiet` keeps boot short over the emulated UART; `panic=-1` turns a panic into a reboot,
    // which -no-reboot turns into QEMU exiting instead of a hang.
    config.append = format!("console=ttyS0 quiet panic=-1 {parameters}");
    config.extra.push("-initrd".into());
    config.extra.push(initramfs.display().to_string());
    config
}

/// Waits for the guest to finish and power off.
fn finish(guest: &mut Guest) -> Result<(), String> {
    guest.expect(DONE, Duration::from_secs(60))?;
    let code = guest.wait_exit(Duration::from_secs(60))?;
    if code == 0 {
        Ok(())
    } else {
        Err(format!(
            "Linux reference guest: QEMU exited with status {code}; output:\n{}",
            guest.output()
        ))
    }
}

/// Parses cyclictest's `-q -h` output (one thread).
pub fn parse_cyclictest(text: &str) -> Result<Latency, String> {
    let mut latency = Latency {
        histogram_limit_us: HISTOGRAM_LIMIT_US,
        ..Latency::default()
    };
    let mut saw_total = false;
    let mut saw_max = false;
    let summary = |line: &str, key: &str| -> Option<Result<u64, String>> {
        let rest = line.strip_prefix(key)?;
        Some(
            rest.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("cyclictest: cannot read {line:?}")),
        )
    };
    for line in text.lines().map(str::trim) {
        if let Some(value) = summary(line, "# Total:") {
            value?;
            saw_total = true;
        } else if let Some(value) = summary(line, "# Min Latencies:") {
            latency.min_us = value?;
        } else if let Some(value) = summary(line, "# Avg Latencies:") {
            latency.avg_us = value?;
        } else if let Some(value) = summary(line, "# Max Latencies:") {
            latency.max_us = value?;
            saw_max = true;
        } else if let Some(value) = summary(line, "# Histogram Overflows:") {
            latency.overflows = value?;
        } else if let Some((bucket, count)) = line.split_once(' ') {
            let (Ok(bucket), Ok(count)) = (bucket.parse::<u64>(), count.trim().parse::<u64>())
            else {
                continue;
            };
            if count > 0 {
                latency.histogram.push((bucket, count));
            }
        }
    }
    if !saw_total || !saw_max {
        return Err(format!(
            "cyclictest printed no histogram summary; its output was:\n{text}"
        ));
    }
    latency.histogram.sort_unstable();
    latency.samples = latency.histogram.iter().map(|(_, n)| n).sum::<u64>() + latency.overflows;
    if latency.samples == 0 {
        return Err(format!("cyclictest recorded no samples:\n{text}"));
    }
    Ok(latency)
}

// ---- Host packages -----------------------------------------------------------------------

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program`'s path from `PATH` (busybox has no `--version`, so `tools::ensure` cannot probe it).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `sh -c command` quietly; Err with `what` and its stderr on failure.
fn shell(command: &str, what: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({command}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `program`'s path, installing Debian `package` first when it is missing and we are root.
fn ensure_program(program: &str, package: &str) -> Result<PathBuf, String> {
    if let Some(path) = find_program(program) {
        return Ok(path);
    }
    let command = format!("apt-get update && apt-get install -y {package}");
    if !is_root() {
        return Err(format!(
            "{program} is missing; install it with: sudo sh -c '{command}'"
        ));
    }
    eprintln!("xtask: {program} is missing; running: {command}");
    shell(&command, &format!("installing {package}"))?;
    find_program(program).ok_or(format!("{package} installed but {program} still not found"))
}

/// Debian's current `linux-image-*-amd64` bzImage, downloaded and unpacked under `dir/kernel`
/// the first time (and reused after, so later runs need neither apt nor the network).
fn debian_kernel(dir: &Path) -> Result<PathBuf, String> {
    let kernel_dir = dir.join("kernel");
    // (A kernel unpacked before the modules were needed is unpacked again.)
    if let Some(found) = find_vmlinuz(&kernel_dir.join("boot")) {
        if find_module(&kernel_dir, "virtio_blk").is_some()
            && find_module(&kernel_dir, "virtio_net").is_some()
        {
            return Ok(found);
        }
    }
    for program in ["apt-get", "apt-cache", "dpkg-deb", "tar"] {
        find_program(program).ok_or(format!(
            "{program} is missing: the Linux reference needs a Debian host"
        ))?;
    }
    let package = match kernel_package() {
        Ok(package) => package,
        // Package lists not fetched yet (a fresh container): fetch them once.
        Err(_) if is_root() => {
            shell("apt-get update", "apt-get update")?;
            kernel_package()?
        }
        Err(e) => return Err(format!("{e}; run: sudo apt-get update")),
    };
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    eprintln!("xtask: linuxref: downloading {package}");
    let status = Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&debs)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run apt-get download: {e}"))?;
    if !status.success() {
        return Err(format!(
            "apt-get download {package} failed (run apt-get update first?)"
        ));
    }
    let deb = std::fs::read_dir(&debs)
        .map_err(|e| format!("{}: {e}", debs.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .ok_or(format!("apt-get download left no {package}_*.deb"))?;
    std::fs::create_dir_all(&kernel_dir).map_err(|e| format!("{}: {e}", kernel_dir.display()))?;
    // The bzImage, its config and the virtio modules the block benchmark loads.
    let modules: Vec<String> = BLK_MODULES
        .iter()
        .chain(NET_MODULES.iter())
        .map(|m| format!("'./lib/modules/*/{m}.ko'"))
        .collect();
    shell(
        &format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*' './boot/config-*' {}",
            deb.display(),
            kernel_dir.display(),
            modules.join(" ")
        ),
        "unpacking the kernel",
    )?;
    let _ = std::fs::remove_file(&deb);
    find_vmlinuz(&kernel_dir.join("boot"))
        .ok_or(format!("{} held no boot/vmlinuz-*", deb.display()))
}

/// The package `linux-image-amd64` currently points at (`linux-image-6.1.0-NN-amd64`).
fn kernel_package() -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or("apt-cache knows no linux-image-amd64".to_string())
}

/// `kernel_dir/lib/modules/*/…/NAME.ko`.
fn find_module(kernel_dir: &Path, name: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, file: &str) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                if let Some(found) = walk(&path, file) {
                    return Some(found);
                }
            } else if path.file_name().is_some_and(|n| n == file) {
                return Some(path);
            }
        }
        None
    }
    walk(&kernel_dir.join("lib/modules"), &format!("{name}.ko"))
}

/// Compiles [`BLKBENCH_C`] statically with the host's gcc into `dir/blkbench`.
fn build_blkbench(dir: &Path) -> Result<PathBuf, String> {
    let gcc = ensure_program("gcc", "gcc")?;
    let source = dir.join("blkbench.c");
    let binary = dir.join("blkbench");
    let stale = std::fs::read_to_string(&source).map_or(true, |old| old != BLKBENCH_C);
    if stale || !binary.is_file() {
        std::fs::write(&source, BLKBENCH_C).map_err(|e| format!("{}: {e}", source.display()))?;
        let out = Command::new(gcc)
            .args(["-O2", "-static", "-Wall", "-o"])
            .arg(&binary)
            .arg(&source)
            .output()
            .map_err(|e| format!("cannot run gcc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "gcc -static blkbench.c failed (is libc6-dev installed?):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(binary)
}

fn find_vmlinuz(boot: &Path) -> Option<PathBuf> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(boot)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    images.sort();
    images.pop()
}

// ---- Initramfs --------------------------------------------------------------------------------

/// Builds the initramfs (busybox, cyclictest and the shared libraries it needs, `/init`) and
/// returns its path; the file is only rewritten when its content changes.
fn build_initramfs(dir: &Path) -> Result<PathBuf, String> {
    let busybox = ensure_program("busybox", "busybox-static")?;
    let cyclictest = ensure_program("cyclictest", "rt-tests")?;
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    files.push(("init".into(), INIT_SCRIPT.as_bytes().to_vec(), 0o755));
    files.push(("bin/busybox".into(), read(&busybox)?, 0o755));
    files.push(("bin/cyclictest".into(), read(&cyclictest)?, 0o755));
    files.push(("bin/blkbench".into(), read(&build_blkbench(dir)?)?, 0o755));
    for module in BLK_MODULES.iter().chain(NET_MODULES.iter()) {
        let path = find_module(&dir.join("kernel"), module)
            .ok_or(format!("the Debian kernel package has no {module}.ko"))?;
        files.push((format!("modules/{module}.ko"), read(&path)?, 0o644));
    }
    let mut libraries = BTreeSet::new();
    for binary in [&busybox, &cyclictest] {
        libraries.extend(shared_libraries(binary)?);
    }
    for library in libraries {
        let name = library.trim_start_matches('/').to_string();
        files.push((name, read(Path::new(&library))?, 0o755));
    }
    let archive = newc_archive(&files, &["proc", "sys", "dev", "tmp"]);

    let path = dir.join("initramfs.cpio");
    let digest = |bytes: &[u8]| Sha256::digest(bytes);
    let unchanged = std::fs::read(&path)
        .map(|old| digest(&old) == digest(&archive))
        .unwrap_or(false);
    if !unchanged {
        std::fs::write(&path, &archive).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// The shared libraries and loader `ldd` lists for `binary` (none for a static binary).
fn shared_libraries(binary: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(format!("ldd {}: {all}", binary.display()));
    }
    Ok(parse_ldd(&text))
}

/// Paths from `ldd` output: `name => /path (0x…)` and `/loader (0x…)` lines; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once("=>").map_or(line, |(_, p)| p.trim());
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// An uncompressed `newc` cpio archive, as the kernel unpacks into its rootfs: `extra_dirs`,
/// every parent directory of `files` (`(path, content, permissions)`), `/dev/console` (so init
/// has a console before devtmpfs is mounted) and the trailer. Timestamps are 0, so the same
/// inputs give the same bytes.
fn newc_archive(files: &[(String, Vec<u8>, u32)], extra_dirs: &[&str]) -> Vec<u8> {
    let mut dirs: BTreeSet<String> = extra_dirs.iter().map(|d| d.to_string()).collect();
    for (name, _, _) in files {
        let mut parent = Path::new(name).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
    }
    let mut out = Vec::new();
    let mut inode = 0u32;
    let mut entry = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        inode += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for value in fields {
            out.extend_from_slice(format!("{value:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    };
    // BTreeSet order puts every parent before its children ("lib" < "lib/x").
    for dir in &dirs {
        entry(&mut out, dir, 0o040755, &[], (0, 0));
    }
    if !dirs.contains("dev") {
        entry(&mut out, "dev", 0o040755, &[], (0, 0));
    }
    entry(&mut out, "dev/console", 0o020600, &[], (5, 1));
    for (name, data, permissions) in files {
        entry(&mut out, name, 0o100000 | permissions, data, (0, 0));
    }
    entry(&mut out, "TRAILER!!!", 0, &[], (0, 0));
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cyclictest 2.4 output from the Linux reference guest (shortened histogram).
    const CYCLICTEST: &str = "\
WARN: stat /dev/cpu_dma_latency failed: No such file or directory
# Histogram
000017 000001
000050 004000
000076 001500
000200 003000
000335 001400
001999 000053
# Total: 000009954
# Min Latencies: 00017
# Avg Latencies: 00110
# Max Latencies: 04369
# Histogram Overflows: 00046
# Histogram Overflow at cycle number:
# Thread 0: 03285 05737 05857
";

    #[test]
    fn parses_cyclictest_histogram_and_summary() {
        let latency = parse_cyclictest(CYCLICTEST).expect("parses");
        assert_eq!(latency.samples, 10_000);
        assert_eq!(latency.overflows, 46);
        assert_eq!(
            (latency.min_us, latency.avg_us, latency.max_us),
            (17, 110, 4369)
        );
        assert_eq!(latency.histogram.len(), 6);
        assert_eq!(latency.histogram[0], (17, 1));
        // Ranks: 1 | 4001 | 5501 | 8501 | 9901 | 9954; p50 = rank 5000, p99 = rank 9900.
        assert_eq!(latency.percentile(0.50), Some(76));
        assert_eq!(latency.percentile(0.99), Some(335));
        assert_eq!(latency.percentile(0.0), Some(17));
        assert_eq!(latency.percentile(0.999), None, "rank 9990 is an overflow");
    }

    #[test]
    fn cyclictest_failure_is_an_error_with_its_output() {
        let error = parse_cyclictest("cyclictest: invalid option -- 'n'\nUsage: ...\n")
            .expect_err("no histogram");
        assert!(error.contains("invalid option"), "{error}");
        let error = parse_cyclictest("# Total: 000000000\n# Max Latencies: 00000\n")
            .expect_err("no samples");
        assert!(error.contains("no samples"), "{error}");
        let error = parse_cyclictest("# Total: x\n# Max Latencies: 00001\n").expect_err("bad");
        assert!(error.contains("cannot read"), "{error}");
    }

    #[test]
    fn median_by_p99_picks_the_middle_run() {
        let run = |p99: u64| Latency {
            samples: 100,
            histogram: vec![(10, 98), (p99, 2)],
            ..Latency::default()
        };
        let overflowing = Latency {
            samples: 100,
            overflows: 5,
            histogram: vec![(10, 95)],
            ..Latency::default()
        };
        assert_eq!(overflowing.percentile(0.99), None);
        let median = median_by_p99(vec![overflowing.clone(), run(500), run(300)]);
        assert_eq!(median.and_then(|m| m.percentile(0.99)), Some(500));
        let median = median_by_p99(vec![run(700), run(300), run(500), overflowing]);
        assert_eq!(median.and_then(|m| m.percentile(0.99)), Some(500));
        assert_eq!(median_by_p99(Vec::new()), None);
    }

    #[test]
    fn percentile_of_empty_latency_is_none() {
        assert_eq!(Latency::default().percentile(0.5), None);
    }

    #[test]
    fn histogram_text_lists_buckets_and_overflows() {
        let latency = parse_cyclictest(CYCLICTEST).expect("parses");
        let text = latency.histogram_text();
        assert!(
            text.starts_with("# latency_us count\n17 1\n50 4000\n"),
            "{text}"
        );
        assert!(text.ends_with(">20000 46\n"), "{text}");
    }

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007f752f904000)
\tlibrt.so.1 => /lib/x86_64-linux-gnu/librt.so.1 (0x00007f752f8da000)
\tlibnuma.so.1 => /lib/x86_64-linux-gnu/libnuma.so.1 (0x00007f752f8c8000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f752f906000)
\tlibmissing.so.1 => not found
";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/librt.so.1",
                "/lib/x86_64-linux-gnu/libnuma.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    /// Reads back a newc archive: `(name, mode, rdev major, rdev minor, data)`.
    fn read_newc(mut bytes: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&bytes[..6], b"070701", "magic at {offset}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&bytes[6 + i * 8..14 + i * 8]).expect("hex");
                u32::from_str_radix(text, 16).expect("hex")
            };
            let (mode, size, major, minor, name_size) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + name_size as usize;
            let name = std::str::from_utf8(&bytes[110..name_end - 1])
                .expect("name")
                .to_string();
            assert_eq!(bytes[name_end - 1], 0, "NUL after {name}");
            let data_start = name_end.next_multiple_of(4);
            let data_end = data_start + size as usize;
            let data = bytes[data_start..data_end].to_vec();
            let next = data_end.next_multiple_of(4);
            offset += next;
            bytes = &bytes[next..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty(), "nothing after the trailer");
                return entries;
            }
            entries.push((name, mode, major, minor, data));
        }
    }

    #[test]
    fn newc_archive_round_trips_with_parents_console_and_trailer() {
        let files = vec![
            ("init".to_string(), b"#!/bin/sh\n".to_vec(), 0o755),
            (
                "lib/x86_64-linux-gnu/libc.so.6".to_string(),
                vec![1, 2, 3, 4, 5],
                0o755,
            ),
        ];
        let archive = newc_archive(&files, &["proc"]);
        assert_eq!(archive.len() % 4, 0);
        let entries = read_newc(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/x86_64-linux-gnu",
                "proc",
                "dev",
                "dev/console",
                "init",
                "lib/x86_64-linux-gnu/libc.so.6"
            ]
        );
        let console = &entries[4];
        assert_eq!((console.1, console.2, console.3), (0o020600, 5, 1));
        assert_eq!(entries[5].1, 0o100755);
        assert_eq!(entries[5].4, b"#!/bin/sh\n");
        assert_eq!(entries[6].4, [1, 2, 3, 4, 5]);
        assert_eq!(entries[0].1, 0o040755);
        // Deterministic: same inputs, same bytes.
        assert_eq!(archive, newc_archive(&files, &["proc"]));
    }

    #[test]
    fn init_script_uses_cyclictest_2_options_and_markers() {
        // cyclictest 2.x dropped -n (clock_nanosleep is the default); passing it aborts the run.
        assert!(!INIT_SCRIPT.contains(" -n "));
        for marker in [IDLE_START, IDLE_END, CYCLICTEST_START, CYCLICTEST_END, DONE] {
            assert!(
                INIT_SCRIPT.contains(&format!("echo {marker}\n")),
                "{marker}"
            );
        }
        assert!(INIT_SCRIPT.contains("-h 20000"));
        assert_eq!(HISTOGRAM_LIMIT_US, 20_000);
    }

    /// The real thing: boots Debian's Linux twice under QEMU (about 40 s). Run with
    /// `cargo test -p xtask -- --ignored --nocapture linuxref_measures`.
    #[test]
    #[ignore = "boots Debian's Linux under QEMU (about 40 s); cargo xtask bench measures it"]
    fn linuxref_measures() {
        let reference = measure_linux(&LinuxRefOptions::default()).expect("measured");
        for row in reference.rows() {
            println!("{row}");
        }
        print!("{}", reference.latency.histogram_text());
        assert!(reference.idle_lapic_timer_per_s > 1.0);
        assert!(reference.latency.samples == 10_000);
    }
}
