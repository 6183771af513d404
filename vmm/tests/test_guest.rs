//! Integration tests with the built-in PVH test guest (no kernel build needed): boot, console,
//! 1 MiB command line, API (good and bad requests), power button, snapshot → restore in a new
//! process, damaged snapshots, idle cost from the metrics. Ignored (skipped) unless run with
//! `--ignored`, which `cargo xtask test` does where /dev/kvm is usable.

mod common;

use std::time::Duration;

use common::*;
use lull_vmm::test_guest::{
    expected_ready_line, READY_BANNER, VMCALL_CALLING, VMCALL_RETURNED, VMCALL_RETURNED_STATUS,
    VMCALL_UD, VMCALL_UD_STATUS,
};

const BOOT: Duration = Duration::from_secs(60);

/// Starts the built-in test guest with `cmdline` (and `--memory`, if given) and an API socket;
/// returns the VMM and the console position just after the guest's ready banner.
fn boot_test_guest_with_api(
    guest: &std::path::Path,
    cmdline: &str,
    memory_mib: Option<&str>,
    socket: &std::path::Path,
) -> (Vmm, usize) {
    let mut args = vec![
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        cmdline,
    ];
    if let Some(memory) = memory_mib {
        args.extend(["--memory", memory]);
    }
    args.extend(["--api-sock", socket.to_str().unwrap()]);
    let vmm = Vmm::spawn(&args);
    let ready = vmm.wait_for(READY_BANNER, BOOT);
    (vmm, ready)
}

#[test]
#[ignore = "needs /dev/kvm"]
fn boots_echoes_console_input_and_powers_off_on_q() {
    require_kvm("boots_echoes_console_input_and_powers_off_on_q");
    let dir = scratch("echo");
    let guest = test_guest(&dir);
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "echo mode",
        "--vcpus",
        "2",
    ]);
    let after = vmm.wait_for(&expected_ready_line(b"echo mode"), BOOT);
    vmm.send(b"lull");
    vmm.wait_for_from(after, "lull", BOOT);
    vmm.send(b"q");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0), "S5 poweroff exits 0");
}

#[test]
#[ignore = "needs /dev/kvm"]
fn megabyte_command_line_file_arrives_intact() {
    require_kvm("megabyte_command_line_file_arrives_intact");
    let dir = scratch("cmdline");
    let guest = test_guest(&dir);
    // 1 MiB, not starting with 'h' (which would make the guest idle without polling).
    let cmdline: Vec<u8> = (0..1usize << 20)
        .map(|i| b"abcdefg =,.0123456789"[i % 21])
        .collect();
    let path = dir.join("cmdline");
    std::fs::write(&path, &cmdline).unwrap();
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline-file",
        path.to_str().unwrap(),
    ]);
    vmm.wait_for(&expected_ready_line(&cmdline), Duration::from_secs(120));
    vmm.send(b"q");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm"]
fn power_button_makes_the_guest_power_off() {
    require_kvm("power_button_makes_the_guest_power_off");
    let dir = scratch("button");
    let guest = test_guest(&dir);
    let socket = dir.join("api.sock");
    let (mut vmm, _) = boot_test_guest_with_api(&guest, "x", None, &socket);
    wait_for_socket(&socket, BOOT);
    let (ok, _, errors) = client(&["power-button", "--api", socket.to_str().unwrap()]);
    assert!(ok, "{errors}");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0));
    assert!(!socket.exists(), "the API socket is removed at exit");
}

#[test]
#[ignore = "needs /dev/kvm"]
fn bad_api_requests_get_typed_errors_and_the_vm_keeps_running() {
    require_kvm("bad_api_requests_get_typed_errors_and_the_vm_keeps_running");
    let dir = scratch("badapi");
    let guest = test_guest(&dir);
    let socket = dir.join("api.sock");
    let (mut vmm, after) = boot_test_guest_with_api(&guest, "x", None, &socket);
    wait_for_socket(&socket, BOOT);

    assert!(raw_api(&socket, b"NONSENSE\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw_api(&socket, b"GET /vm/nothing HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(raw_api(&socket, b"GET /vm/pause HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    let bad_json = raw_api(
        &socket,
        b"PUT /vm/snapshot HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"pa",
    );
    assert!(
        bad_json.starts_with("HTTP/1.1 400") && bad_json.contains("bad_request"),
        "{bad_json}"
    );
    let too_big = raw_api(
        &socket,
        b"PUT /vm/snapshot HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n",
    );
    assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
    let (ok, _, errors) = client(&["resume", "--api", socket.to_str().unwrap()]);
    assert!(!ok && errors.contains("invalid_state"), "{errors}");
    let running = raw_api(
        &socket,
        b"PUT /vm/snapshot HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"path\":\"/tmp\"}",
    );
    assert!(
        running.starts_with("HTTP/1.1 409"),
        "snapshot needs a paused VM: {running}"
    );

    // Pause/resume round trip, then the guest still answers.
    assert!(client(&["pause", "--api", socket.to_str().unwrap()]).0);
    let (ok, _, errors) = client(&["pause", "--api", socket.to_str().unwrap()]);
    assert!(!ok && errors.contains("invalid_state"), "{errors}");
    assert!(client(&["resume", "--api", socket.to_str().unwrap()]).0);
    vmm.send(b"k");
    vmm.wait_for_from(after, "k", BOOT);
    vmm.send(b"q");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm"]
fn snapshot_restores_in_a_new_process_and_the_guest_continues() {
    require_kvm("snapshot_restores_in_a_new_process_and_the_guest_continues");
    let dir = scratch("snapshot");
    let guest = test_guest(&dir);
    let socket = dir.join("api.sock");
    let snapshot = dir.join("snap");
    let (mut source, _) = boot_test_guest_with_api(&guest, "x", Some("64"), &socket);
    wait_for_socket(&socket, BOOT);
    let (ok, report, errors) = client(&[
        "snapshot",
        "--api",
        socket.to_str().unwrap(),
        "--path",
        snapshot.to_str().unwrap(),
        "--leave-paused",
    ]);
    assert!(ok, "{errors}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["memory_file_bytes"], 64 << 20);
    assert!(
        report["memory_written_bytes"].as_u64().unwrap() < 1 << 20,
        "sparse: {report}"
    );
    source.kill();

    let mut restored = Vmm::spawn(&[
        "restore",
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--timing",
    ]);
    restored.send(b"r");
    restored.wait_for("r", BOOT);
    assert!(
        !restored.output().contains(READY_BANNER),
        "the guest continued, it did not reboot"
    );
    assert!(restored.errors().contains("vcpus_running"));
    assert!(
        restored.errors().contains("lull-vmm: kvm: hypercalls"),
        "restore says what it decided about hypercalls: {}",
        restored.errors()
    );
    restored.send(b"q");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));

    // A second restore from the same snapshot works too (the memory file was mapped privately).
    let mut again = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
    again.send(b"q");
    assert_eq!(again.wait_exit(BOOT).code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm"]
fn damaged_snapshots_are_refused_with_a_clear_error() {
    require_kvm("damaged_snapshots_are_refused_with_a_clear_error");
    let dir = scratch("damaged");
    let guest = test_guest(&dir);
    let socket = dir.join("api.sock");
    let snapshot = dir.join("snap");
    let (mut source, _) = boot_test_guest_with_api(&guest, "hidle", Some("16"), &socket);
    wait_for_socket(&socket, BOOT);
    assert!(
        client(&[
            "snapshot",
            "--api",
            socket.to_str().unwrap(),
            "--path",
            snapshot.to_str().unwrap()
        ])
        .0
    );

    let state_path = snapshot.join("state");
    let state = std::fs::read(&state_path).unwrap();
    let restore_error = || {
        let (ok, _, errors) = client(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
        assert!(!ok);
        errors
    };
    let mut corrupted = state.clone();
    corrupted[200] ^= 0x10;
    std::fs::write(&state_path, &corrupted).unwrap();
    assert!(restore_error().contains("corrupted"));
    std::fs::write(&state_path, &state[..state.len() / 2]).unwrap();
    assert!(restore_error().contains("truncated"));
    let mut other_version = state.clone();
    other_version[8] = 99;
    std::fs::write(&state_path, &other_version).unwrap();
    assert!(restore_error().contains("version 99"));
    std::fs::write(&state_path, &state).unwrap();
    std::fs::File::options()
        .write(true)
        .open(snapshot.join("memory"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert!(restore_error().contains("memory file"));

    // The source VM is unaffected.
    let (ok, info, _) = client(&["info", "--api", socket.to_str().unwrap()]);
    assert!(ok && info.contains("running"), "{info}");
    assert!(client(&["power-button", "--api", socket.to_str().unwrap()]).0);
    // The idle guest ('h') halts with interrupts off and never polls the button: stop it.
    source.kill();
}

#[test]
#[ignore = "needs /dev/kvm"]
fn idle_guest_costs_nothing_in_the_metrics_and_the_metrics_file_fills() {
    require_kvm("idle_guest_costs_nothing_in_the_metrics_and_the_metrics_file_fills");
    let dir = scratch("metrics");
    let guest = test_guest(&dir);
    let socket = dir.join("api.sock");
    let metrics = dir.join("metrics.jsonl");
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "halt",
        "--api-sock",
        socket.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
        "--metrics-interval-ms",
        "200",
    ]);
    vmm.wait_for(READY_BANNER, BOOT);
    wait_for_socket(&socket, BOOT);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, json, errors) = client(&[
        "metrics",
        "--api",
        socket.to_str().unwrap(),
        "--interval-ms",
        "500",
        "--json",
    ]);
    assert!(ok, "{errors}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rates = &report["rates"][0];
    assert!(
        rates["kvm_per_second"]["exits"].as_f64().unwrap() < 5.0,
        "{rates}"
    );
    assert!(
        rates["kvm_per_second"]["halt_wakeup"].as_f64().unwrap() < 1.0,
        "{rates}"
    );
    assert!(
        report["vcpus"][0]["kvm"]["halt_exits"].as_u64().is_some(),
        "KVM stats present: {report}"
    );
    assert!(report["host"]["vmm_rss_kib"].as_u64().unwrap() > 0);
    std::thread::sleep(Duration::from_millis(300));
    let lines = std::fs::read_to_string(&metrics).unwrap();
    assert!(lines.lines().count() >= 2, "{lines}");
    for line in lines.lines() {
        let sample: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(sample["rates"][0]["kvm_per_second"].is_object());
    }
    vmm.kill();
}

/// Regression test: a snapshot of a restored guest holds what the guest wrote after the
/// restore, both in a fresh directory and written over the very snapshot the guest was
/// restored from (whose memory file its RAM is still mapped from, copy-on-write). The guest
/// writes the bytes it receives into a log in its RAM (a page it first wrote before the first
/// snapshot) and prints the log on `?`.
#[test]
#[ignore = "needs /dev/kvm"]
fn snapshot_of_a_restored_guest_keeps_what_it_wrote_after_the_restore() {
    require_kvm("snapshot_of_a_restored_guest_keeps_what_it_wrote_after_the_restore");
    let dir = scratch("resnapshot");
    let guest = test_guest(&dir);
    let socket = dir.join("api.sock");
    let first = dir.join("first");
    let second = dir.join("second");
    let (mut source, ready) = boot_test_guest_with_api(&guest, "x", Some("64"), &socket);
    let ready = source.wait_for_from(ready, "\n", BOOT);
    wait_for_socket(&socket, BOOT);
    source.send(b"ab");
    source.wait_for_from(ready, "ab", BOOT);
    snapshot_paused(&socket, &first);
    source.kill();

    let restored_socket = dir.join("restored.sock");
    let mut restored = Vmm::spawn(&[
        "restore",
        "--snapshot",
        first.to_str().unwrap(),
        "--api-sock",
        restored_socket.to_str().unwrap(),
    ]);
    wait_for_socket(&restored_socket, BOOT);
    restored.send(b"cd?");
    restored.wait_for("log=abcd\n", BOOT);
    let report = snapshot_paused(&restored_socket, &second);
    assert!(
        report["memory_written_bytes"].as_u64().unwrap() < 1 << 20,
        "only pages the restored guest wrote are written from its memory: {report}"
    );
    snapshot_paused(&restored_socket, &first);
    restored.kill();

    for snapshot in [&first, &second] {
        let mut again = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
        again.send(b"?");
        again.wait_for("log=abcd\n", BOOT);
        again.send(b"q");
        assert_eq!(
            again.wait_exit(BOOT).code(),
            Some(0),
            "{}",
            snapshot.display()
        );
    }
}

/// `--kernel` takes a Linux bzImage too: a minimal one (see `linux_probe_bzimage`) is
/// entered at `code32_start` with `%esi` at a zero page that carries the kernel's setup
/// header, the E820 map and the command line, and powers off.
#[test]
#[ignore = "needs /dev/kvm"]
fn bzimage_is_entered_through_the_linux_boot_protocol() {
    require_kvm("bzimage_is_entered_through_the_linux_boot_protocol");
    let dir = scratch("bzimage");
    let image = dir.join("bzImage");
    std::fs::write(&image, lull_vmm::test_guest::linux_probe_bzimage()).unwrap();
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        image.to_str().unwrap(),
        "--memory",
        "64",
        "--cmdline",
        "console=ttyS0 probe=1",
    ]);
    // 64 MiB below the 3 GiB hole: 5 E820 entries (see layout::MemoryLayout::memory_map).
    vmm.wait_for("HdrS F console=ttyS0 probe=1\n", BOOT);
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0), "ACPI S5 exits 0");
}

/// With hypercalls treated as not returning (`--pv-hypercalls off`, what the probe decides on
/// hosts like this one), a guest's deliberate VMCALL raises #UD in the guest (its IDT handler
/// prints a marker) instead of spinning a host core inside KVM_RUN; meanwhile the VMM answers
/// its API and its vCPU answers pause/resume; then the guest exits with the #UD status.
#[test]
#[ignore = "needs /dev/kvm"]
fn a_deliberate_vmcall_raises_ud_and_the_vmm_stays_responsive() {
    require_kvm("a_deliberate_vmcall_raises_ud_and_the_vmm_stays_responsive");
    let dir = scratch("vmcall-off");
    let guest = vmcall_guest(&dir);
    let socket = dir.join("api.sock");
    let mut vmm = Vmm::spawn_with_deadline(
        &[
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--memory",
            "16",
            "--api-sock",
            socket.to_str().unwrap(),
            "--pv-hypercalls",
            "off",
        ],
        Duration::from_secs(120),
    );
    let called = vmm.wait_for(VMCALL_CALLING, BOOT);
    vmm.wait_for_from(called, VMCALL_UD, Duration::from_secs(30));
    assert!(!vmm.output().contains(VMCALL_RETURNED), "{}", vmm.output());
    // stderr is read by its own thread: the VMM's line may reach us after the guest's output.
    let logged = || {
        vmm.errors().contains("(--pv-hypercalls off)") && vmm.errors().contains("VMCALL raises #UD")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !logged() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(logged(), "{}", vmm.errors());
    wait_for_socket(&socket, BOOT);
    let api = socket.to_str().unwrap();
    let (ok, info, errors) = client(&["info", "--api", api]);
    assert!(ok && info.contains("running"), "{info}{errors}");
    let (ok, _, errors) = client(&["pause", "--api", api]);
    assert!(ok, "the vCPU answers a pause: {errors}");
    let (ok, _, errors) = client(&["resume", "--api", api]);
    assert!(ok, "{errors}");
    vmm.send(b"q");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(VMCALL_UD_STATUS));
}

/// `auto`: the first VMM probes (the verdict goes into the cache directory) and the guest's
/// VMCALL then does what the probe found: comes back where hypercalls return, raises #UD where
/// they do not. A second VMM takes the verdict from the cache.
#[test]
#[ignore = "needs /dev/kvm"]
fn auto_probes_once_caches_the_verdict_and_the_guest_vmcall_follows_it() {
    require_kvm("auto_probes_once_caches_the_verdict_and_the_guest_vmcall_follows_it");
    let dir = scratch("vmcall-auto");
    let guest = vmcall_guest(&dir);
    let run_dir = dir.join("run");
    let env = [("LULL_VMM_RUN_DIR", run_dir.as_path())];
    let args = ["run", "--kernel", guest.to_str().unwrap(), "--memory", "16"];
    for attempt in ["probe", "cache"] {
        let mut vmm = Vmm::spawn_with(&args, &env, Duration::from_secs(120));
        let called = vmm.wait_for(VMCALL_CALLING, BOOT);
        let errors = vmm.errors();
        if attempt == "probe" {
            if errors.contains("probe failed") {
                // A host too busy to give the probe vCPU a core has no verdict to cache.
                skip(
                    "auto_probes_once_caches_the_verdict_and_the_guest_vmcall_follows_it",
                    &format!("the probe was inconclusive on this busy host: {errors}"),
                );
                return;
            }
            assert!(errors.contains("(probe "), "{errors}");
            assert!(
                run_dir.join("hypercall-probe").is_file(),
                "no cache file after a probe: {errors}"
            );
        } else {
            assert!(errors.contains("(cached in "), "{errors}");
        }
        if errors.contains("hypercalls return on this host") {
            vmm.wait_for_from(called, VMCALL_RETURNED, Duration::from_secs(30));
            assert!(errors.contains("answered -1000"), "{errors}");
            assert_eq!(vmm.wait_exit(BOOT).code(), Some(VMCALL_RETURNED_STATUS));
        } else {
            assert!(
                errors.contains("PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD hidden")
                    && errors.contains("VMCALL raises #UD"),
                "{errors}"
            );
            vmm.wait_for_from(called, VMCALL_UD, Duration::from_secs(30));
            vmm.send(b"q");
            assert_eq!(vmm.wait_exit(BOOT).code(), Some(VMCALL_UD_STATUS));
        }
    }
}

/// The harness's watchdog ends a VMM that outlives its deadline (an idle guest never exits),
/// and the wait fails saying so, with the output so far.
#[test]
#[ignore = "needs /dev/kvm"]
fn the_test_watchdog_kills_a_vmm_past_its_deadline() {
    require_kvm("the_test_watchdog_kills_a_vmm_past_its_deadline");
    let dir = scratch("watchdog");
    let guest = test_guest(&dir);
    let mut vmm = Vmm::spawn_with_deadline(
        &[
            "run",
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "halt",
        ],
        Duration::from_secs(3),
    );
    let began = std::time::Instant::now();
    let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vmm.wait_exit(Duration::from_secs(60))
    }))
    .expect_err("an idle guest never exits by itself");
    let message = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("killed by the test watchdog"), "{message}");
    assert!(
        message.contains(READY_BANNER),
        "the output so far: {message}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "{:?}",
        began.elapsed()
    );
}

/// The CPUID a booted guest really has (read back from a snapshot of it) carries the paravirt
/// policy: the host's features minus the hypercall ones with `--pv-hypercalls off`, all the
/// passed-through ones with `on`.
#[test]
#[ignore = "needs /dev/kvm"]
fn the_guest_cpuid_shows_the_pv_features_the_policy_allows() {
    use lull_vmm::arch::cpuid::{hypercall_features, kvm_pv_features, pv_features_of};
    require_kvm("the_guest_cpuid_shows_the_pv_features_the_policy_allows");
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    let host = pv_features_of(supported.as_slice()).expect("the host's KVM leaves");
    let dir = scratch("pv-cpuid");
    let guest = test_guest(&dir);
    for (mode, hypercalls_return) in [("off", false), ("on", true)] {
        let socket = dir.join(format!("{mode}.sock"));
        let snapshot = dir.join(format!("snap-{mode}"));
        let _vmm = Vmm::spawn_with_deadline(
            &[
                "run",
                "--kernel",
                guest.to_str().unwrap(),
                "--cmdline",
                "halt",
                "--memory",
                "16",
                "--vcpus",
                "2",
                "--api-sock",
                socket.to_str().unwrap(),
                "--pv-hypercalls",
                mode,
            ],
            Duration::from_secs(120),
        );
        wait_for_socket(&socket, BOOT);
        let (ok, _, errors) = client(&[
            "snapshot",
            "--api",
            socket.to_str().unwrap(),
            "--path",
            snapshot.to_str().unwrap(),
        ]);
        assert!(ok, "{errors}");
        let state = lull_vmm::snapshot::read_state(&snapshot).unwrap();
        for vcpu in &state.vcpus {
            let shown = pv_features_of(&vcpu.cpuid).expect("KVM leaves shown");
            assert_eq!(shown, kvm_pv_features(host, hypercalls_return), "{mode}");
            assert_eq!(
                hypercall_features(shown) != 0,
                hypercalls_return && hypercall_features(host) != 0
            );
        }
    }
}
