//! The block layer on a real virtio-blk device (QEMU's `null-co` driver behind virtio-blk-pci on
//! q35 and virtio-blk-device on microvm; suites without a disk skip): more requests than the
//! queue has slots complete, unbind with requests in flight completes each of them with an
//! error and loses nothing, and 200 unbind/bind cycles leave every counter as it was with
//! traffic resuming. Data integrity against real files is judged from the host (e2e).

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::leaks::{quiet_snapshot, settles_to, sys_write};
use super::TestResult;
use crate::block::{self, BlockError, Disk, Op};
use crate::drivers::virtio::blk::DRIVER;
use crate::fs::procfs;

const UNBIND: &str = "/sys/bus/virtio/drivers/virtio_blk/unbind";
const BIND: &str = "/sys/bus/virtio/drivers/virtio_blk/bind";

/// The first virtio-blk disk (bound again if an earlier test left it unbound), or a skip.
fn virtio_disk() -> Result<Arc<Disk>, super::Failure> {
    let find = || {
        block::disks()
            .into_iter()
            .find(|disk| disk.info().driver == DRIVER)
    };
    if let Some(disk) = find() {
        return Ok(disk);
    }
    let candidate = (0..8)
        .map(|i| alloc::format!("virtio{i}"))
        .find(|name| crate::drivers::virtio::device(name).is_some_and(|d| d.id().device == 2));
    match candidate {
        Some(name) => {
            let _ = sys_write(BIND, &name);
            find().ok_or_else(|| {
                alloc::format!("{name} is a virtio-blk device but does not bind").into()
            })
        }
        None => skip!("no virtio-blk disk (QEMU: -device virtio-blk-pci / virtio-blk-device)"),
    }
}

/// Unbinds with `count` reads in flight and waits for each: `(completed, cancelled)`.
fn unbind_under_reads(disk: &Disk, device: &str, count: u64) -> Result<(u64, u64), String> {
    let reads = start_reads(disk, count)?;
    sys_write(UNBIND, device)?;
    let (mut ok, mut gone) = (0, 0);
    for (i, request) in reads.iter().enumerate() {
        match request.wait() {
            Ok(()) => ok += 1,
            Err(BlockError::Gone(_)) => gone += 1,
            Err(error) => return Err(alloc::format!("request {i}: {error}")),
        }
    }
    Ok((ok, gone))
}

/// Starts `count` 4 KiB reads spread over the disk.
fn start_reads(disk: &Disk, count: u64) -> Result<Vec<Arc<block::Request>>, String> {
    let blocks = disk.bytes() / 4096;
    (0..count)
        .map(|i| {
            disk.start(Op::Read, (i * 7 % blocks) * 4096, 4096, |_| {})
                .map_err(|e| alloc::format!("read {i}: {e}"))
        })
        .collect()
}

pub fn virtio_blk_more_requests_than_slots_complete() -> TestResult {
    let disk = virtio_disk()?;
    let reads = start_reads(&disk, 200)?;
    for (i, request) in reads.iter().enumerate() {
        request
            .wait()
            .map_err(|e| alloc::format!("read {i} of 200: {e}"))?;
    }
    let write = disk
        .start(Op::Write, 0, 64 << 10, |buffer| {
            buffer.write_bytes(0, &[0x5a; 512]);
        })
        .map_err(|e| alloc::format!("64 KiB write: {e}"))?;
    write
        .wait()
        .map_err(|e| alloc::format!("64 KiB write: {e}"))?;
    disk.flush().map_err(|e| alloc::format!("flush: {e}"))?;
    let mut sector = [0u8; 512];
    disk.read(disk.bytes() - 512, &mut sector)
        .map_err(|e| alloc::format!("last sector: {e}"))?;
    let beyond = disk.read(disk.bytes(), &mut sector);
    ensure!(
        matches!(beyond, Err(BlockError::Range(_))),
        "a read past the end gave {beyond:?}"
    );
    let misaligned = disk.read(100, &mut sector);
    ensure!(
        matches!(misaligned, Err(BlockError::Range(_))),
        "a misaligned read gave {misaligned:?}"
    );
    let stats = procfs::read("/proc/diskstats").map_err(|e| alloc::format!("{e}"))?;
    ensure!(
        stats.contains(disk.name()),
        "/proc/diskstats lacks {}:\n{stats}",
        disk.name()
    );
    Ok(())
}

pub fn virtio_blk_unbind_with_requests_in_flight_loses_nothing() -> TestResult {
    let disk = virtio_disk()?;
    let device = disk.info().device;
    let name = String::from(disk.name());
    drop(disk);
    // A warm-up round (the wait's timer site, lazily grown tables), then the baseline with
    // the driver unbound.
    let warm = block::disk(&name).map_err(|e| alloc::format!("{e}"))?;
    unbind_under_reads(&warm, &device, 120)?;
    drop(warm);
    let before = quiet_snapshot();
    sys_write(BIND, &device)?;
    let disk = block::disk(&name).map_err(|e| alloc::format!("after bind: {e}"))?;
    let (ok, gone) = unbind_under_reads(&disk, &device, 120)?;
    ensure!(ok + gone == 120, "{ok} completed, {gone} cancelled of 120");
    // (In a block: its error text is on the heap, counted by the snapshot below.)
    {
        let after = disk.start(Op::Read, 0, 4096, |_| {}).map(|_| ());
        ensure!(
            matches!(after, Err(BlockError::Gone(_))),
            "a request to the unbound disk gave {after:?}"
        );
    }
    ensure!(
        block::disk(&name).is_err(),
        "{name} is still listed after unbind"
    );
    drop(disk);
    settles_to(before, "unbind with requests in flight")?;
    sys_write(BIND, &device)?;
    let disk = block::disk(&name).map_err(|e| alloc::format!("after rebind: {e}"))?;
    let mut sector = [0u8; 512];
    disk.read(0, &mut sector)
        .map_err(|e| alloc::format!("read after rebind: {e}"))?;
    Ok(())
}

pub fn virtio_blk_unbind_bind_200_times_leaks_nothing() -> TestResult {
    let disk = virtio_disk()?;
    let device = disk.info().device;
    let name = String::from(disk.name());
    drop(disk);
    sys_write(UNBIND, &device)?;
    sys_write(BIND, &device)?;
    sys_write(UNBIND, &device)?;
    let before = quiet_snapshot();
    for round in 0..200 {
        sys_write(BIND, &device).map_err(|e| alloc::format!("round {round}: {e}"))?;
        sys_write(UNBIND, &device).map_err(|e| alloc::format!("round {round}: {e}"))?;
    }
    settles_to(before, "200 unbind/bind cycles")?;
    sys_write(BIND, &device)?;
    let disk = block::disk(&name).map_err(|e| alloc::format!("after 200 rebinds: {e}"))?;
    let reads = start_reads(&disk, 40)?;
    for (i, request) in reads.iter().enumerate() {
        request
            .wait()
            .map_err(|e| alloc::format!("read {i} after 200 rebinds: {e}"))?;
    }
    Ok(())
}
