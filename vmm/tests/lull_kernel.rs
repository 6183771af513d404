//! Integration tests that boot the real Lull kernel (ELF from `LULL_KERNEL`, which
//! `cargo xtask test` sets) on /dev/kvm and drive its serial shell. They are ignored (counted
//! as skipped) unless run with `--ignored`, which `cargo xtask test` does where KVM is usable;
//! run so, they fail, saying why, when /dev/kvm or LULL_KERNEL is missing. Guest kernel code may run emulated (~5 MIPS) on
//! these machines, so each test does little in the guest.

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const PROMPT: &str = "lull> ";
const BOOT: Duration = Duration::from_secs(120);
/// The megabyte command line costs the guest tens of millions of instructions (copying,
/// parsing, hashing it) under this host's instruction emulator (~2 M/s): 195 s for the whole
/// test on a quiet host, more when the other KVM tests run beside it.
const MEGABYTE: Duration = Duration::from_secs(400);

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn boots_to_the_shell_and_runs_a_command() {
    let kernel = lull_kernel("boots_to_the_shell_and_runs_a_command");
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
    ]);
    let prompt = vmm.wait_for(PROMPT, BOOT);
    vmm.send(b"uptime\r");
    let answered = vmm.wait_for_from(prompt, PROMPT, BOOT);
    assert!(uptime_seconds(&vmm.output()[..answered], prompt) > 0.0);
    vmm.send(b"poweroff\r");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0), "ACPI S5 exits 0");
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn megabyte_command_line_reaches_the_kernel_intact() {
    let kernel = lull_kernel("megabyte_command_line_reaches_the_kernel_intact");
    let dir = scratch("kernel-cmdline");
    let mut cmdline = b"lulltest.pad=".to_vec();
    cmdline.resize(1 << 20, b'p');
    let path = dir.join("cmdline");
    std::fs::write(&path, &cmdline).unwrap();
    let digest: String = Sha256::digest(&cmdline)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--cmdline-file",
        path.to_str().unwrap(),
    ]);
    let prompt = vmm.wait_for(PROMPT, MEGABYTE);
    vmm.send(b"cmdline\r");
    vmm.wait_for_from(
        prompt,
        &format!("length={} sha256={digest}", cmdline.len()),
        MEGABYTE,
    );
    vmm.send(b"poweroff\r");
    assert_eq!(vmm.wait_exit(MEGABYTE).code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn snapshot_then_restore_in_a_new_process_keeps_the_shell_and_uptime() {
    let kernel = lull_kernel("snapshot_then_restore_in_a_new_process_keeps_the_shell_and_uptime");
    let dir = scratch("kernel-snapshot");
    let (snapshot, before) = lull_snapshot(&kernel, &dir);

    let mut restored = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
    restored.send(b"uptime\r");
    let answered = restored.wait_for(PROMPT, BOOT);
    let after = uptime_seconds(&restored.output()[..answered], 0);
    assert!(
        after >= before,
        "monotonic time went backwards: {before} -> {after}"
    );
    assert!(
        !restored.output().contains("Lull version"),
        "restored, not rebooted"
    );
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn power_button_shuts_the_kernel_down_cleanly() {
    let kernel = lull_kernel("power_button_shuts_the_kernel_down_cleanly");
    let dir = scratch("kernel-button");
    let socket = dir.join("api.sock");
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--api-sock",
        socket.to_str().unwrap(),
    ]);
    vmm.wait_for(PROMPT, BOOT);
    wait_for_socket(&socket, BOOT);
    let (ok, _, errors) = client(&["power-button", "--api", socket.to_str().unwrap()]);
    assert!(ok, "{errors}");
    let status = vmm.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "console:\n{}", vmm.output());
}

/// Firecracker passes no RSDP address in `hvm_start_info`; Lull must find the tables lull-vmm
/// put at 0xe0000 by scanning the BIOS areas (reading the EBDA pointer in page 0, which its
/// page tables leave unmapped, once faulted right after the `cpu:` line).
#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn boots_without_an_rsdp_hint_and_finds_acpi_by_scanning() {
    let kernel = lull_kernel("boots_without_an_rsdp_hint_and_finds_acpi_by_scanning");
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--no-rsdp-hint",
    ]);
    vmm.wait_for(PROMPT, BOOT);
    let output = vmm.output();
    let line = output
        .lines()
        .find(|line| line.contains("ACPI: RSDP at "))
        .unwrap_or_else(|| panic!("no ACPI line\n--- console ---\n{output}"));
    eprintln!("{line}");
    assert!(line.contains("ACPI: RSDP at 0xe0000 "), "{line}");
    assert!(line.contains("FACP") && line.contains("APIC"), "{line}");
    vmm.send(b"poweroff\r");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0), "ACPI S5 exits 0");
}
