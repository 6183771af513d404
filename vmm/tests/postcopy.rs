//! Post-copy live migration between two real `lull-vmm` processes (the real Lull kernel):
//! over `unix:` loopback, and a source killed during post-copy. Ignored unless run with
//! `--ignored` (needs /dev/kvm and LULL_KERNEL).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);
const PROMPT: &str = "lull> ";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn uptime_seconds(text: &str) -> f64 {
    let at = text.find("up ").expect("uptime answer") + 3;
    text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("uptime number")
}

fn shell(vmm: &mut Vmm, command: &str) -> String {
    let from = vmm.output().len();
    vmm.send(format!("{command}\r").as_bytes());
    let end = vmm.wait_for_from(from, PROMPT, STEP);
    vmm.output()[from..end].to_string()
}

/// Waits until a whole line of lull-vmm's stderr (it may be writing the last one) holds
/// `needle`.
fn wait_stderr(vmm: &Vmm, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let whole_lines = |errors: String| match errors.rfind('\n') {
        Some(end) => errors[..end].contains(needle),
        None => false,
    };
    while !whole_lines(vmm.errors()) {
        assert!(
            Instant::now() < deadline && vmm.try_exit().is_none(),
            "no {needle:?} from lull-vmm:\n{}",
            vmm.errors()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lull at its shell with an API socket, and its uptime.
fn lull_source(kernel: &Path, dir: &Path, env: &[(&str, &Path)]) -> (Vmm, f64) {
    let socket = dir.join("source.sock");
    let mut source = Vmm::spawn_with(
        &[
            "run",
            "--kernel",
            path(kernel),
            "--memory",
            "256",
            "--api-sock",
            path(&socket),
        ],
        env,
        default_deadline(),
    );
    source.wait_for(PROMPT, BOOT);
    wait_for_socket(&socket, BOOT);
    let before = uptime_seconds(&shell(&mut source, "uptime"));
    (source, before)
}

fn destination(url: &str) -> Vmm {
    let vmm = Vmm::spawn(&["receive", "--listen", url, "--timing"]);
    wait_stderr(&vmm, "waiting for a migration", STEP);
    vmm
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn lull_kernel_postcopy_over_unix_runs_at_once_and_gets_every_page() {
    let kernel = lull_kernel("lull_kernel_postcopy_over_unix_runs_at_once_and_gets_every_page");
    let dir = scratch("postcopy-unix");
    let (mut source, before) = lull_source(&kernel, &dir, &[]);
    let url = format!("unix:{}", dir.join("migrate.sock").display());
    let mut target = destination(&url);
    let (ok, out, errors) = client(&[
        "migrate",
        "--api",
        path(&dir.join("source.sock")),
        "--to",
        &url,
        "--postcopy",
    ]);
    assert!(ok, "{out}\n{errors}\n--- source ---\n{}", source.errors());
    let summary = out.lines().last().unwrap_or("").to_string();
    eprintln!("postcopy: {summary}");
    assert!(summary.contains("post-copy"), "{summary}");
    assert_eq!(source.wait_exit(STEP).code(), Some(0));
    // The source exits only once the destination has every page.
    wait_stderr(&target, "\"postcopy_complete\"", STEP);
    let errors = target.errors();
    let complete: serde_json::Value = errors
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["event"] == "postcopy_complete")
        .unwrap();
    assert!(complete["pages"].as_u64().unwrap() > 0, "{complete}");
    let after = uptime_seconds(&shell(&mut target, "uptime"));
    assert!(
        after >= before,
        "uptime went backwards: {before} -> {after}"
    );
    // The kernel notes the KVM_KVMCLOCK_CTRL stop ("the host stopped this VM; watchdog
    // baseline taken anew"): expected after a migration, not a watchdog firing.
    let console = target
        .output()
        .replace("watchdog baseline taken anew", "baseline taken anew");
    assert!(!console.contains("Lull version"), "migrated, not rebooted");
    for bad in ["watchdog", "lockup", "panic"] {
        assert!(
            !console.to_lowercase().contains(bad),
            "the destination's console mentions {bad:?}:\n{console}"
        );
    }
    target.send(b"poweroff\r");
    assert_eq!(target.wait_exit(BOOT).code(), Some(0));
}

/// The source is killed while the destination still lacks pages (the background push is
/// slowed to 20 pages/s): the destination must say it lost the source and exit non-zero,
/// not go on with holes in the guest's memory.
#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn source_killed_during_postcopy_stops_the_destination_with_a_reason() {
    let kernel = lull_kernel("source_killed_during_postcopy_stops_the_destination_with_a_reason");
    let dir = scratch("postcopy-killed");
    let (mut source, _) = lull_source(
        &kernel,
        &dir,
        &[("LULL_VMM_POSTCOPY_PAGES_PER_SECOND", Path::new("20"))],
    );
    let url = format!("unix:{}", dir.join("migrate.sock").display());
    let mut target = destination(&url);
    let socket = dir.join("source.sock");
    let migrate = {
        let (socket, url) = (socket.clone(), url.clone());
        std::thread::spawn(move || {
            client(&[
                "migrate",
                "--api",
                socket.to_str().unwrap(),
                "--to",
                &url,
                "--postcopy",
            ])
        })
    };
    wait_stderr(&target, "the guest runs here", STEP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !target.errors().contains("postcopy_complete"),
        "post-copy ended before the source was killed:\n{}",
        target.errors()
    );
    source.kill();
    let status = target.wait_exit(STEP);
    assert_eq!(status.code(), Some(1), "{}", target.errors());
    let errors = target.errors();
    assert!(
        errors.contains("post-copy: lost the source after") && errors.contains("stopping"),
        "{errors}"
    );
    let (ok, _, _) = migrate.join().unwrap();
    assert!(!ok, "the migrate command cannot report success");
}

/// Pre-copy of a guest that rewrites 32 MiB continuously never converges; with
/// `--postcopy-after 2` the source switches to post-copy after two rounds. The pages the
/// destination got in pre-copy and that changed since must be replaced by their last
/// versions: the guest checks every page it wrote and would print MISMATCH on a stale one.
#[test]
#[ignore = "needs /dev/kvm"]
fn precopy_that_does_not_converge_switches_to_postcopy_and_memory_stays_right() {
    require_kvm("precopy_that_does_not_converge_switches_to_postcopy_and_memory_stays_right");
    let dir = scratch("postcopy-after");
    let guest = dir.join("dirty-guest.elf");
    std::fs::write(&guest, lull_vmm::test_guest::dirty_guest_elf()).unwrap();
    let socket = dir.join("source.sock");
    let mut source = Vmm::spawn(&[
        "run",
        "--kernel",
        path(&guest),
        "--memory",
        "64",
        "--api-sock",
        path(&socket),
    ]);
    let ready = source.wait_for(lull_vmm::test_guest::DIRTY_READY, BOOT);
    source.wait_for_from(ready, "..", BOOT);
    wait_for_socket(&socket, BOOT);
    let url = format!("unix:{}", dir.join("migrate.sock").display());
    let mut target = destination(&url);
    let (ok, out, errors) = client(&[
        "migrate",
        "--api",
        path(&socket),
        "--to",
        &url,
        "--downtime-ms",
        "1",
        "--postcopy-after",
        "2",
    ]);
    assert!(ok, "{out}\n{errors}\n--- source ---\n{}", source.errors());
    let summary = out.lines().last().unwrap_or("").to_string();
    eprintln!("postcopy-after: {summary}");
    assert!(
        summary.contains("post-copy after pre-copy did not converge"),
        "{summary}"
    );
    assert_eq!(source.wait_exit(STEP).code(), Some(0));
    wait_stderr(&target, "\"postcopy_complete\"", STEP);
    // The guest goes on checking and writing every page on the destination.
    let now = target.output().len();
    target.wait_for_from(now, "..", STEP);
    assert!(
        !target
            .output()
            .contains(lull_vmm::test_guest::DIRTY_MISMATCH),
        "a page was stale or lost:\n{}",
        target.output()
    );
    target.send(b"q");
    assert_eq!(
        target.wait_exit(STEP).code(),
        Some(lull_vmm::test_guest::DIRTY_QUIT_STATUS)
    );
}
