//! Lazy restore (`restore --lazy`, userfaultfd) of the real Lull kernel, with and without a
//! recorded working set. Ignored unless run with `--ignored` (needs /dev/kvm and LULL_KERNEL).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const PROMPT: &str = "lull> ";
const BOOT: Duration = Duration::from_secs(120);

/// Restores lazily, runs `uptime` twice (monotonic, not before the snapshot's), waits for
/// the background loading to finish, powers off. Returns lull-vmm's stderr.
fn restore_lazily_and_check(snapshot: &Path, before: f64, extra: &[&str]) -> String {
    let mut args = vec![
        "restore",
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--lazy",
        "--timing",
    ];
    args.extend_from_slice(extra);
    let mut restored = Vmm::spawn(&args);
    restored.send(b"uptime\r");
    let first = restored.wait_for(PROMPT, BOOT);
    let after = uptime_seconds(&restored.output()[..first], 0);
    assert!(
        after >= before,
        "monotonic time went backwards: {before} -> {after}"
    );
    restored.send(b"uptime\r");
    let second = restored.wait_for_from(first, PROMPT, BOOT);
    let later = uptime_seconds(&restored.output()[..second], first);
    assert!(later >= after, "uptime went backwards: {after} -> {later}");
    assert!(
        !restored.output().contains("Lull version"),
        "restored, not rebooted"
    );
    // Every page arrives eventually (the background thread reports it).
    wait_for_event(
        &restored,
        "all_pages_loaded",
        "the background loading never finished",
    );
    restored.send(b"uptime\r");
    restored.wait_for_from(second, PROMPT, BOOT);
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
    restored.errors()
}

fn find_event(errors: &str, event: &str) -> Option<serde_json::Value> {
    // Whole lines only: stderr is read while lull-vmm may be writing the last one.
    errors
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["event"] == event)
}

fn json_event(errors: &str, event: &str) -> serde_json::Value {
    find_event(errors, event).unwrap_or_else(|| panic!("no {event} line in:\n{errors}"))
}

/// Waits (up to `BOOT`) until lull-vmm has written the whole JSON line of `event`.
fn wait_for_event(vmm: &Vmm, event: &str, failure: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + BOOT;
    loop {
        let errors = vmm.errors();
        if let Some(value) = find_event(&errors, event) {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{failure}:\n{errors}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn lazy_restore_runs_the_shell_and_loads_every_page() {
    let kernel = lull_kernel("lazy_restore_runs_the_shell_and_loads_every_page");
    let dir = scratch("lazy-restore");
    let (snapshot, before) = lull_snapshot(&kernel, &dir);
    let errors = restore_lazily_and_check(&snapshot, before, &[]);
    let loaded = json_event(&errors, "all_pages_loaded");
    assert_eq!(loaded["pages"], 128 * 256, "{errors}");
    assert!(
        loaded["faults"].as_u64().unwrap() > 0,
        "the guest ran before its memory was in, so it faulted: {errors}"
    );
    assert_eq!(loaded["prefetched_pages"], 0, "no working set recorded yet");
    let timing = json_event(&errors, "vcpus_running");
    assert!(
        timing["phases_us"]["uffd_and_prefetch"].is_number(),
        "{errors}"
    );
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn recorded_working_set_is_prefetched_and_a_bad_one_ignored() {
    let kernel = lull_kernel("recorded_working_set_is_prefetched_and_a_bad_one_ignored");
    let dir = scratch("lazy-working-set");
    let (snapshot, before) = lull_snapshot(&kernel, &dir);
    let errors = restore_lazily_and_check(&snapshot, before, &["--record-ws", "1500"]);
    assert!(
        errors.contains("working set of the first 1500 ms"),
        "{errors}"
    );
    // "working set of the first 1500 ms: N pages in R runs, stored in …"
    let recorded: u64 = errors
        .split("working set of the first 1500 ms: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no page count in:\n{errors}"));
    assert!(recorded > 0, "{errors}");
    let working_set = snapshot.join("working-set");
    assert!(working_set.is_file(), "{errors}");

    let errors = restore_lazily_and_check(&snapshot, before, &[]);
    let loaded = json_event(&errors, "all_pages_loaded");
    assert_eq!(
        loaded["prefetched_pages"].as_u64(),
        Some(recorded),
        "the next restore loads exactly the recorded pages first: {errors}"
    );

    // A damaged file is ignored with a warning; the restore still works.
    let mut bytes = std::fs::read(&working_set).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&working_set, &bytes).unwrap();
    let errors = restore_lazily_and_check(&snapshot, before, &[]);
    assert!(
        errors.contains("warning: ignoring") && errors.contains("corrupted"),
        "{errors}"
    );
    assert_eq!(
        json_event(&errors, "all_pages_loaded")["prefetched_pages"],
        0
    );
}

/// The guest side of VMM-injected async page faults: with the probe hook, lull-vmm injects a
/// "page not present" into vCPU 0 for a page held back, then the "page ready" once it is in;
/// Lull's `cpus` line must count both, and lull-vmm's own counts must match.
#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn async_page_fault_not_present_and_ready_reach_the_guest() {
    let kernel = lull_kernel("async_page_fault_not_present_and_ready_reach_the_guest");
    let dir = scratch("lazy-async-pf");
    let (snapshot, _) = lull_snapshot(&kernel, &dir);
    let mut restored = Vmm::spawn_with(
        &[
            "restore",
            "--snapshot",
            snapshot.to_str().unwrap(),
            "--lazy",
            "--timing",
            "--async-pf",
            "on",
        ],
        &[(lull_vmm::lazy::ASYNC_PF_PROBE_VARIABLE, Path::new("1"))],
        default_deadline(),
    );
    let counts = wait_for_event(
        &restored,
        "all_pages_loaded",
        "the lazy restore never finished",
    )["async_pf"]
        .clone();
    let injected = counts["not_present"].as_u64().unwrap();
    assert!(injected >= 1, "{counts}");
    assert_eq!(counts["ready"].as_u64(), Some(injected), "{counts}");
    restored.send(b"cpus\r");
    // "async pf: N not present, N ready, N wake-all, N ready first, N refused, N waiting"
    let counted = restored.wait_for(" not present, ", BOOT);
    let line_end = restored.wait_for_from(counted, "waiting", BOOT);
    let output = restored.output();
    let at = output[..counted].rfind("async pf: ").unwrap() + "async pf: ".len();
    let line = output[at..line_end].to_string();
    // More may have been injected after the JSON line (faults go on); each was answered.
    let numbers: Vec<u64> = line
        .split(", ")
        .map(|part| part.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let (not_present, ready) = (numbers[0], numbers[1]);
    assert!(
        not_present >= injected && ready == not_present,
        "guest counts {line:?}, lull-vmm injected {injected}"
    );
    assert!(line.ends_with(", 0 waiting"), "{line}");
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
}

/// With --async-pf off nothing is injected (the JSON has no async-PF counts at all).
#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn async_pf_off_injects_nothing() {
    let kernel = lull_kernel("async_pf_off_injects_nothing");
    let dir = scratch("lazy-async-pf-off");
    let (snapshot, before) = lull_snapshot(&kernel, &dir);
    let errors = restore_lazily_and_check(&snapshot, before, &["--async-pf", "off"]);
    assert!(
        json_event(&errors, "all_pages_loaded")["async_pf"].is_null(),
        "{errors}"
    );
}

/// The `checksum=0x…` of a `memtouch:` answer.
fn memtouch_checksum(answer: &str) -> String {
    answer
        .split_whitespace()
        .find_map(|word| word.strip_prefix("checksum="))
        .unwrap_or_else(|| panic!("no checksum in {answer:?}"))
        .to_string()
}

/// Runs `memtouch sum` on `vmm` and checks it read every filled page right and found the
/// checksum the guest computed while filling.
fn memtouch_sum_matches(vmm: &mut Vmm, pages: u64, checksum: &str) {
    let answer = shell(vmm, "memtouch sum", BOOT);
    assert!(
        answer.contains(&format!("memtouch: sum pages={pages} ")) && answer.contains(" ok"),
        "{answer}"
    );
    assert_eq!(memtouch_checksum(&answer), checksum, "{answer}");
}

/// `memtouch fill` before the snapshot, `memtouch sum` after lazy restores (with and without
/// a prefetched working set): every filled page comes back with its own content (the guest
/// checks each page's pattern, which names the page and the fill) and the checksum is the one
/// computed before the snapshot. `apfbench` runs its three phases on the same area, and bad
/// input gets an error, not a panic.
#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn memtouch_area_survives_lazy_restore_and_apfbench_runs() {
    let kernel = lull_kernel("memtouch_area_survives_lazy_restore_and_apfbench_runs");
    let dir = scratch("lazy-memtouch");
    let socket = dir.join("api.sock");
    let snapshot = dir.join("snap");
    let mut source = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--api-sock",
        socket.to_str().unwrap(),
    ]);
    source.wait_for(PROMPT, BOOT);
    let filled = shell(&mut source, "memtouch fill 8M", BOOT);
    assert!(
        filled.contains("memtouch: filled pages=2048 kib=8192 "),
        "{filled}"
    );
    let checksum = memtouch_checksum(&filled);
    memtouch_sum_matches(&mut source, 2048, &checksum);
    for (input, error) in [
        ("memtouch fill 0", "memtouch: invalid size '0'"),
        ("memtouch fill lots", "memtouch: invalid size 'lots'"),
        ("memtouch fill 64G", "memtouch: cannot fill"),
        ("memtouch frobnicate", "usage: memtouch"),
        ("apfbench 1M 2M", "usage: apfbench"),
    ] {
        let answer = shell(&mut source, input, BOOT);
        assert!(answer.contains(error), "{input}: {answer}");
    }
    // The fill too large for the guest kept the area it had.
    let status = shell(&mut source, "memtouch", BOOT);
    assert!(status.contains("memtouch: pages=2048 "), "{status}");
    assert_eq!(memtouch_checksum(&status), checksum, "{status}");
    let too_much = shell(&mut source, "apfbench 16M", BOOT);
    assert!(too_much.contains("8192 KiB filled"), "{too_much}");
    wait_for_socket(&socket, Duration::from_secs(120));
    snapshot_paused(&socket, &snapshot);
    source.kill();

    let lazy = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--snapshot",
            snapshot.to_str().unwrap(),
            "--lazy",
            "--timing",
        ];
        args.extend_from_slice(extra);
        Vmm::spawn(&args)
    };
    // Without prefetch; then apfbench's passes read the same area (their checksums agree).
    let mut restored = lazy(&["--async-pf", "off"]);
    memtouch_sum_matches(&mut restored, 2048, &checksum);
    let report = shell(&mut restored, "apfbench 4M", BOOT);
    for phase in ["cold", "warm", "alone"] {
        assert!(
            report.contains(&format!("apfbench: phase={phase} ")),
            "{report}"
        );
    }
    assert!(
        report.contains("apfbench: phase=cold pages=1024 ") && report.contains("apfbench: done "),
        "{report}"
    );
    memtouch_sum_matches(&mut restored, 2048, &checksum);
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));

    // Record the working set of `memtouch sum`, then restore with it prefetched.
    let mut recording = lazy(&["--record-ws", "8000"]);
    memtouch_sum_matches(&mut recording, 2048, &checksum);
    let stored = wait_for_line_in_errors(&recording, "working set of the first 8000 ms: ");
    let recorded: u64 = stored
        .split_whitespace()
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no page count in {stored:?}"));
    assert!(
        recorded >= 2048,
        "the sum touched every filled page: {stored}"
    );
    recording.send(b"poweroff\r");
    assert_eq!(recording.wait_exit(BOOT).code(), Some(0));

    let mut prefetched = lazy(&[]);
    memtouch_sum_matches(&mut prefetched, 2048, &checksum);
    let loaded = wait_for_event(
        &prefetched,
        "all_pages_loaded",
        "the background loading never finished",
    );
    assert_eq!(loaded["prefetched_pages"].as_u64(), Some(recorded));
    prefetched.send(b"poweroff\r");
    assert_eq!(prefetched.wait_exit(BOOT).code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits (up to `BOOT`) for a whole stderr line containing `needle`; what follows it.
fn wait_for_line_in_errors(vmm: &Vmm, needle: &str) -> String {
    let deadline = std::time::Instant::now() + BOOT;
    loop {
        let errors = vmm.errors();
        if let Some(at) = errors.find(needle) {
            let rest = &errors[at + needle.len()..];
            if let Some(end) = rest.find('\n') {
                return rest[..end].to_string();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in:\n{errors}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
