//! A real Linux bzImage on /dev/kvm (`LULL_BZIMAGE`, e.g. Debian's vmlinuz; ignored, so
//! counted as skipped, unless run with `--ignored`, which `cargo xtask test` does only when it
//! has an image and KVM). These machines emulate guest kernel code at a few MIPS, so Linux cannot
//! boot here in useful time; the test checks what the boot protocol decides: the kernel's own
//! 32-bit entry code ran on the zero page lull-vmm wrote and switched the vCPU to 64-bit long
//! mode with paging (its decompressor's first steps), seen in a snapshot's vCPU state.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const EFER_LMA: u64 = 1 << 10;
const CR0_PG: u64 = 1 << 31;

fn bzimage(test: &str) -> PathBuf {
    require_kvm(test);
    match std::env::var_os("LULL_BZIMAGE") {
        Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
        _ => panic!("{test}: LULL_BZIMAGE does not name a Linux bzImage (e.g. a vmlinuz)"),
    }
}

#[test]
#[ignore = "needs /dev/kvm and LULL_BZIMAGE"]
fn linux_bzimage_starts_and_enters_long_mode() {
    let image = bzimage("linux_bzimage_starts_and_enters_long_mode");
    let dir = scratch("linux-bzimage");
    let socket = dir.join("api.sock");
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        image.to_str().unwrap(),
        "--memory",
        "256",
        "--cmdline",
        "console=ttyS0 earlyprintk=serial",
        "--api-sock",
        socket.to_str().unwrap(),
    ]);
    wait_for_socket(&socket, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snapshot = dir.join("snap");
        let (ok, _, errors) = client(&[
            "snapshot",
            "--api",
            socket.to_str().unwrap(),
            "--path",
            snapshot.to_str().unwrap(),
        ]);
        assert!(ok, "{errors}\n{}", vmm.errors());
        let state = lull_vmm::snapshot::read_state(&snapshot).unwrap();
        let sregs = state.vcpus[0].sregs;
        if sregs.efer & EFER_LMA != 0 && sregs.cr0 & CR0_PG != 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not in long mode: rip {:#x} cr0 {:#x} efer {:#x}\n{}",
            state.vcpus[0].regs.rip,
            sregs.cr0,
            sregs.efer,
            vmm.errors()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !vmm.errors().contains("failed"),
        "the vCPU failed: {}",
        vmm.errors()
    );
    vmm.kill();
}
