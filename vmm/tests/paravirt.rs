//! The Lull kernel's KVM guest features on /dev/kvm, checked from the VMM's side: kvm-clock is
//! the clocksource, realtime comes from the KVM wall clock (lull-vmm has no CMOS clock), boot
//! is under a second of guest time, the async-PF "wake all" KVM sends when the guest enables
//! async PF is handled, steal time rises when a host thread competes for the vCPU's core, and
//! snapshot → restore keeps realtime right with no watchdog firing. Ignored (counted as
//! skipped) unless run with `--ignored`, which `cargo xtask test` does where KVM is usable.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const PROMPT: &str = "lull> ";

/// One test at a time: the steal test pins lull-vmm to a core and loads it, which would
/// slow the others' guests (and their boot-time check) if they ran beside it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
const BOOT: Duration = Duration::from_secs(120);

/// Host wall clock, Unix seconds.
fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Unix seconds of a `YYYY-MM-DD HH:MM:SS` text (UTC), civil-from-days inverted.
fn unix_seconds(text: &str) -> Option<i64> {
    let mut numbers = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (numbers.next()??, numbers.next()??, numbers.next()??);
    let (hour, minute, second) = (numbers.next()??, numbers.next()??, numbers.next()??);
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Boots the Lull kernel on lull-vmm with 128 MiB and `extra` options.
fn boot(kernel: &std::path::Path, extra: &[&str]) -> Vmm {
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
    ];
    args.extend_from_slice(extra);
    let vmm = Vmm::spawn(&args);
    vmm.wait_for(PROMPT, BOOT);
    vmm
}

/// The guest's `date`, in Unix seconds.
fn guest_date(vmm: &mut Vmm) -> i64 {
    let text = shell(vmm, "date", BOOT);
    let line = text
        .lines()
        .find(|line| line.contains(" UTC"))
        .unwrap_or_else(|| panic!("no date in {text:?}"));
    unix_seconds(line).unwrap_or_else(|| panic!("unparsable date {line:?}"))
}

/// Steal seconds of CPU 0 in `cpus` (the last column of its row).
fn steal_seconds(cpus: &str) -> f64 {
    let row = cpus
        .lines()
        .find(|line| line.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("no CPU 0 row in {cpus:?}"));
    row.split_whitespace()
        .last()
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| panic!("no steal column in {row:?}"))
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn guest_uses_kvm_clock_wall_clock_and_async_pf() {
    let _serial = one_at_a_time();
    let kernel = lull_kernel("guest_uses_kvm_clock_wall_clock_and_async_pf");
    let mut vmm = boot(&kernel, &[]);
    let boot = vmm.output();
    assert!(
        boot.contains("clocksource: kvm-clock"),
        "kvm-clock not selected:\n{boot}"
    );
    assert!(
        boot.contains("kvm-clock: wall clock") && !boot.contains("no usable CMOS clock"),
        "realtime did not come from the KVM wall clock:\n{boot}"
    );
    // "boot: kernel ready in N us (M us of it stolen by the host)": the guest's own time is
    // N - M (on a loaded host the emulator waits for a core; that is the host's time).
    let line = boot
        .split("boot: kernel ready in ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no boot line:\n{boot}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let ready_us = numbers[0] - numbers.get(1).copied().unwrap_or(0);
    assert!(
        ready_us < 1_000_000,
        "boot took {ready_us} us of guest time ({line})"
    );
    let skew = guest_date(&mut vmm) - host_now();
    assert!(skew.abs() <= 3, "guest date is {skew} s off the host's");
    let cpus = shell(&mut vmm, "cpus", BOOT);
    assert!(
        cpus.contains("clock: kvm-clock") && cpus.contains("steal: kvm steal time"),
        "paravirt summary: {cpus}"
    );
    let wake_all: u64 = cpus
        .split("ready, ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no async pf line in {cpus:?}"));
    assert!(
        wake_all >= 1,
        "the wake-all KVM sends at enable was not seen: {cpus}"
    );
    // lull-vmm hides PV_UNHALT where hypercalls hang: the kernel must not pick PV spinlocks.
    assert!(
        !boot.contains("paravirt tickets") || !boot.contains("hypercalls do not return"),
        "PV spinlocks chosen on a host whose hypercalls hang:\n{boot}"
    );
    vmm.send(b"poweroff\r");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn restore_keeps_realtime_right_and_no_watchdog_fires() {
    let _serial = one_at_a_time();
    let kernel = lull_kernel("restore_keeps_realtime_right_and_no_watchdog_fires");
    let dir = scratch("paravirt-restore");
    let socket = dir.join("api.sock");
    let snapshot = dir.join("snap");
    let mut source = boot(&kernel, &["--api-sock", socket.to_str().unwrap()]);
    let uptime_before = shell(&mut source, "uptime", BOOT);
    wait_for_socket(&socket, BOOT);
    snapshot_paused(&socket, &snapshot);
    source.kill();
    // The VM stays stopped for a while: realtime must account for it, monotonic must not
    // go backwards, and the clocksource watchdog must not judge the TSC across the gap.
    std::thread::sleep(Duration::from_secs(3));
    let mut restored = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
    let uptime_after = shell(&mut restored, "uptime", BOOT);
    let seconds = |text: &str| -> f64 {
        text.split("up ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no uptime in {text:?}"))
    };
    assert!(
        seconds(&uptime_after) >= seconds(&uptime_before),
        "monotonic time went backwards: {uptime_before:?} -> {uptime_after:?}"
    );
    let skew = guest_date(&mut restored) - host_now();
    assert!(
        skew.abs() <= 3,
        "after restore the guest's date is {skew} s off the host's"
    );
    // Give the watchdog (0.5 s period) a few rounds, then look for any verdict.
    let _ = shell(&mut restored, "sleep 2", BOOT);
    let output = restored.output();
    for bad in ["unstable", "lockup", "panic", "exception"] {
        assert!(
            !output.to_lowercase().contains(bad),
            "{bad:?} after restore:\n{output}"
        );
    }
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
}

/// A host thread that spins on CPU `core` until killed.
fn hog(core: usize) -> Child {
    Command::new("taskset")
        .args(["-c", &core.to_string(), "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("taskset (util-linux) runs a hog")
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn steal_time_rises_when_the_host_competes_for_the_vcpu() {
    let _serial = one_at_a_time();
    let kernel = lull_kernel("steal_time_rises_when_the_host_competes_for_the_vcpu");
    let mut vmm = boot(&kernel, &[]);
    // Every thread of the VMM on host core 0, so hogs there compete with the vCPU.
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &vmm.pid().to_string()])
        .output()
        .expect("taskset");
    assert!(pinned.status.success(), "taskset: {pinned:?}");
    let busy = |vmm: &mut Vmm| {
        let before = steal_seconds(&shell(vmm, "cpus", BOOT));
        shell(vmm, "bench spin 3000", Duration::from_secs(120));
        steal_seconds(&shell(vmm, "cpus", BOOT)) - before
    };
    let quiet = busy(&mut vmm);
    let mut hogs: Vec<Child> = (0..2).map(|_| hog(0)).collect();
    let contended = busy(&mut vmm);
    for hog in &mut hogs {
        let _ = hog.kill();
        let _ = hog.wait();
    }
    eprintln!("steal during the workload: {quiet:.3} s alone, {contended:.3} s with 2 hogs");
    // Two hogs on the vCPU's core take about two thirds of it during the 3 s of busy guest
    // time; whatever else loads this host adds to both measurements alike.
    assert!(
        contended - quiet > 1.0,
        "steal with two competing host threads ({contended:.3} s) is not clearly above steal \
         without them ({quiet:.3} s)"
    );
    vmm.send(b"poweroff\r");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0));
}
