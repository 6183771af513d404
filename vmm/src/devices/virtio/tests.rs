//! Transport register semantics and both devices' request processing against guest memory
//! in this process (vm-memory's GuestMemoryMmap), driven as a driver would.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::vstate::memory::GuestMemoryMmap;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};

use super::block::Block;
use super::mmio::MmioTransport;
use super::net::{FrameIo, Net, NetState};
use super::{Backend, BackendEvent, BackendState, Interrupt};

pub const MEMORY_BYTES: usize = 1 << 20;
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x3000;
pub const USED: u64 = 0x4000;
/// Queue n's rings are at DESC/AVAIL/USED + n * QUEUE_STRIDE.
pub const QUEUE_STRIDE: u64 = 0x4000;
pub const DATA: u64 = 0x20000;

#[derive(Default)]
pub struct FakeInterrupt(pub AtomicU32);

impl Interrupt for FakeInterrupt {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl FakeInterrupt {
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_BYTES)]).unwrap()
}

pub fn transport(
    backend: Backend,
    memory: &GuestMemoryMmap,
) -> (MmioTransport, Arc<FakeInterrupt>) {
    let interrupt = Arc::new(FakeInterrupt::default());
    let transport =
        MmioTransport::new("test".into(), backend, memory.clone(), interrupt.clone()).unwrap();
    (transport, interrupt)
}

pub fn read32(transport: &MmioTransport, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    transport.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

pub fn write32(transport: &mut MmioTransport, offset: u32, value: u32) {
    transport.write(u64::from(offset), &value.to_le_bytes());
}

/// Negotiates `features` (their low and high words) and sets FEATURES_OK; returns the status.
pub fn negotiate(transport: &mut MmioTransport, features: u64) -> u32 {
    write32(transport, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(
        transport,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    for word in 0..2 {
        write32(transport, VIRTIO_MMIO_DRIVER_FEATURES_SEL, word);
        write32(
            transport,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * word)) as u32,
        );
    }
    write32(
        transport,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    read32(transport, VIRTIO_MMIO_STATUS)
}

/// Sets queue `index` up at its rings (size `size`) and makes it ready.
pub fn setup_queue(transport: &mut MmioTransport, index: u32, size: u16) {
    let stride = u64::from(index) * QUEUE_STRIDE;
    write32(transport, VIRTIO_MMIO_QUEUE_SEL, index);
    write32(transport, VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
    for (low, address) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, DESC + stride),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL + stride),
        (VIRTIO_MMIO_QUEUE_USED_LOW, USED + stride),
    ] {
        write32(transport, low, address as u32);
        write32(transport, low + 4, (address >> 32) as u32);
    }
    write32(transport, VIRTIO_MMIO_QUEUE_READY, 1);
}

pub fn driver_ok(transport: &mut MmioTransport) {
    let status = read32(transport, VIRTIO_MMIO_STATUS);
    write32(
        transport,
        VIRTIO_MMIO_STATUS,
        status | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}

pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
pub const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// Brings a device to DRIVER_OK with its queues of `size` descriptors.
pub fn bring_up(transport: &mut MmioTransport, features: u64, size: u16) {
    assert_ne!(
        negotiate(transport, features) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    for index in 0..transport.queues().len() as u32 {
        setup_queue(transport, index, size);
    }
    driver_ok(transport);
    assert_eq!(
        read32(transport, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_DRIVER_OK
    );
}

/// The driver side of one split queue in guest memory.
pub struct Ring {
    pub queue: u64,
    pub size: u16,
    pub next_desc: u16,
    pub avail_idx: u16,
}

impl Ring {
    pub fn new(queue: u32, size: u16) -> Self {
        Self {
            queue: u64::from(queue),
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn base(&self, ring: u64) -> u64 {
        ring + self.queue * QUEUE_STRIDE
    }

    pub fn write_desc(
        &self,
        memory: &GuestMemoryMmap,
        index: u16,
        address: u64,
        len: u32,
        flags: u32,
        next: u16,
    ) {
        let at = GuestAddress(self.base(DESC) + u64::from(index) * 16);
        memory.write_obj(address, at).unwrap();
        memory.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        memory
            .write_obj(flags as u16, GuestAddress(at.0 + 12))
            .unwrap();
        memory.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Adds a chain of (address, len, device-writable) buffers; returns its head.
    pub fn add(&mut self, memory: &GuestMemoryMmap, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(address, len, writable)) in buffers.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(memory, index, address, len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + buffers.len() as u16) % self.size;
        self.publish(memory, head);
        head
    }

    /// Puts `head` on the avail ring and bumps its index.
    pub fn publish(&mut self, memory: &GuestMemoryMmap, head: u16) {
        let slot = self.base(AVAIL) + 4 + 2 * u64::from(self.avail_idx % self.size);
        memory.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        memory
            .write_obj(self.avail_idx, GuestAddress(self.base(AVAIL) + 2))
            .unwrap();
    }

    pub fn used_idx(&self, memory: &GuestMemoryMmap) -> u16 {
        memory.read_obj(GuestAddress(self.base(USED) + 2)).unwrap()
    }

    /// Used element n: (id, len).
    pub fn used(&self, memory: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.base(USED) + 4 + 8 * u64::from(n % self.size);
        (
            memory.read_obj(GuestAddress(at)).unwrap(),
            memory.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// EVENT_IDX: the driver wants an interrupt once the used index passes `index`.
    pub fn set_used_event(&self, memory: &GuestMemoryMmap, index: u16) {
        let at = self.base(AVAIL) + 4 + 2 * u64::from(self.size);
        memory.write_obj(index, GuestAddress(at)).unwrap();
    }
}

/// A disk image of `bytes` with a known pattern, removed when the returned path is dropped
/// (a device that opened it keeps its descriptor).
pub fn temp_disk(name: &str, bytes: usize) -> tempfile::TempPath {
    let path = tempfile::Builder::new()
        .prefix(&format!("lull-vmm-virtio-{name}-"))
        .suffix(".img")
        .tempfile()
        .unwrap()
        .into_temp_path();
    let content: Vec<u8> = (0..bytes).map(|i| (i / 512) as u8 ^ (i as u8)).collect();
    std::fs::write(&path, content).unwrap();
    path
}

fn block_device(
    name: &str,
    readonly: bool,
) -> (
    MmioTransport,
    Arc<FakeInterrupt>,
    GuestMemoryMmap,
    tempfile::TempPath,
) {
    let path = temp_disk(name, 64 * 512);
    let memory = memory();
    let block = Block::open(&path, readonly).unwrap();
    let (transport, interrupt) = transport(Backend::Block(block), &memory);
    (transport, interrupt, memory, path)
}

/// A block request: header at DATA, data at DATA+0x1000 (len bytes), status at DATA+0x100.
pub fn block_request(
    ring: &mut Ring,
    memory: &GuestMemoryMmap,
    kind: u32,
    sector: u64,
    data_len: u32,
    data_writable: bool,
    slot: u64,
) -> u16 {
    let base = DATA + slot * 0x10000;
    memory.write_obj(kind, GuestAddress(base)).unwrap();
    memory.write_obj(0u32, GuestAddress(base + 4)).unwrap();
    memory.write_obj(sector, GuestAddress(base + 8)).unwrap();
    memory
        .write_obj(0xffu8, GuestAddress(base + 0x100))
        .unwrap();
    let mut buffers = vec![(base, 16, false)];
    if data_len > 0 {
        buffers.push((base + 0x1000, data_len, data_writable));
    }
    buffers.push((base + 0x100, 1, true));
    ring.add(memory, &buffers)
}

fn status_of(memory: &GuestMemoryMmap, slot: u64) -> u8 {
    memory
        .read_obj(GuestAddress(DATA + slot * 0x10000 + 0x100))
        .unwrap()
}

fn notify(transport: &mut MmioTransport, queue: u32) {
    write32(transport, VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    // At least this write (DRIVER_OK also kicks every queue once).
    assert!(transport.queue_events()[queue as usize].read().unwrap() >= 1);
    transport.handle(BackendEvent::Queue(queue as usize));
}

#[test]
fn identification_registers() {
    let (transport, _, _, _) = block_device("ident", false);
    assert_eq!(read32(&transport, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read32(&transport, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read32(&transport, VIRTIO_MMIO_DEVICE_ID), 2);
    assert_eq!(read32(&transport, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    // Registers are 32-bit: a byte read of one reads 0.
    let mut byte = [0xaau8; 1];
    transport.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut byte);
    assert_eq!(byte, [0]);
    let mut unaligned = [0xaau8; 4];
    transport.read(2, &mut unaligned);
    assert_eq!(unaligned, [0; 4]);
}

#[test]
fn features_offer_version_1_and_event_idx_and_negotiation_is_checked() {
    let (mut transport, _, _, _) = block_device("features", false);
    write32(&mut transport, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(read32(&transport, VIRTIO_MMIO_DEVICE_FEATURES) & 1, 1); // bit 32
    write32(&mut transport, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = read32(&transport, VIRTIO_MMIO_DEVICE_FEATURES);
    assert_ne!(low & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    assert_ne!(low & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_ne!(low & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
    assert_eq!(low & (1 << VIRTIO_BLK_F_RO), 0);
    // Without VERSION_1, FEATURES_OK does not stick.
    assert_eq!(
        negotiate(&mut transport, EVENT_IDX) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    write32(&mut transport, VIRTIO_MMIO_STATUS, 0);
    // A feature not offered (INDIRECT_DESC, bit 28): refused.
    assert_eq!(
        negotiate(&mut transport, VERSION_1 | (1 << 28)) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    write32(&mut transport, VIRTIO_MMIO_STATUS, 0);
    assert_ne!(
        negotiate(&mut transport, VERSION_1 | EVENT_IDX) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    // Features cannot change after FEATURES_OK.
    write32(&mut transport, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write32(&mut transport, VIRTIO_MMIO_DRIVER_FEATURES, 0);
    assert_eq!(transport.save().driver_features, VERSION_1 | EVENT_IDX);
}

#[test]
fn status_only_grows_and_zero_resets() {
    let (mut transport, interrupt, _, _) = block_device("status", false);
    bring_up(&mut transport, VERSION_1, 16);
    let status = read32(&transport, VIRTIO_MMIO_STATUS);
    // Clearing a bit is ignored.
    write32(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE,
    );
    assert_eq!(read32(&transport, VIRTIO_MMIO_STATUS), status);
    // The driver cannot set NEEDS_RESET.
    write32(
        &mut transport,
        VIRTIO_MMIO_STATUS,
        status | VIRTIO_CONFIG_S_NEEDS_RESET,
    );
    assert_eq!(read32(&transport, VIRTIO_MMIO_STATUS), status);
    write32(&mut transport, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read32(&transport, VIRTIO_MMIO_STATUS), 0);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read32(&transport, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(transport.save().driver_features, 0);
    assert_eq!(interrupt.count(), 0);
}

#[test]
fn queue_registers_need_features_ok_and_a_stopped_queue() {
    let (mut transport, _, _, _) = block_device("queue-regs", false);
    // Before FEATURES_OK, queue set-up is ignored.
    setup_queue(&mut transport, 0, 16);
    assert_eq!(read32(&transport, VIRTIO_MMIO_QUEUE_READY), 0);
    negotiate(&mut transport, VERSION_1);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_NUM, 3); // not a power of 2: ignored
    assert_eq!(transport.queues()[0].state().size, 256);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_NUM, 512); // over the maximum: ignored
    assert_eq!(transport.queues()[0].state().size, 256);
    setup_queue(&mut transport, 0, 16);
    assert_eq!(read32(&transport, VIRTIO_MMIO_QUEUE_READY), 1);
    // A ready queue's addresses are fixed.
    write32(&mut transport, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    assert_eq!(transport.queues()[0].state().desc_table, DESC);
    // A queue index beyond the device's reads as absent.
    write32(&mut transport, VIRTIO_MMIO_QUEUE_SEL, 7);
    assert_eq!(read32(&transport, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

#[test]
fn config_space_has_capacity_limits_and_block_size() {
    let (transport, _, _, _) = block_device("config", false);
    let mut capacity = [0u8; 8];
    transport.read(0x100, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 64);
    let mut word = [0u8; 4];
    transport.read(0x100 + 20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    transport.read(0x100 + 12, &mut word);
    assert_eq!(u32::from_le_bytes(word), super::block::SEG_MAX);
    // Beyond the config space: zeros.
    transport.read(0x100 + 200, &mut word);
    assert_eq!(word, [0; 4]);
    assert_eq!(read32(&transport, VIRTIO_MMIO_CONFIG_GENERATION), 0);
}

#[test]
fn block_write_then_read_back_and_interrupt_protocol() {
    let (mut transport, interrupt, memory, path) = block_device("rw", false);
    bring_up(&mut transport, VERSION_1, 16);
    let mut ring = Ring::new(0, 16);
    let pattern: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
    memory
        .write_slice(&pattern, GuestAddress(DATA + 0x1000))
        .unwrap();
    block_request(&mut ring, &memory, VIRTIO_BLK_T_OUT, 3, 1024, false, 0);
    notify(&mut transport, 0);
    assert_eq!(status_of(&memory, 0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(ring.used_idx(&memory), 1);
    assert_eq!(ring.used(&memory, 0), (0, 1)); // only the status byte written
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[3 * 512..3 * 512 + 1024], &pattern[..]);
    // The interrupt: status bit 0, acknowledged by the driver.
    assert_eq!(interrupt.count(), 1);
    assert_eq!(
        read32(&transport, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    write32(
        &mut transport,
        VIRTIO_MMIO_INTERRUPT_ACK,
        VIRTIO_MMIO_INT_VRING,
    );
    assert_eq!(read32(&transport, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 3, 1024, true, 1);
    notify(&mut transport, 0);
    assert_eq!(status_of(&memory, 1), VIRTIO_BLK_S_OK as u8);
    assert_eq!(ring.used(&memory, 1), (3, 1025));
    let mut back = vec![0u8; 1024];
    memory
        .read_slice(&mut back, GuestAddress(DATA + 0x10000 + 0x1000))
        .unwrap();
    assert_eq!(back, pattern);
    // Unchanged sectors read what the file had.
    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 0, 512, true, 2);
    notify(&mut transport, 0);
    let mut sector0 = vec![0u8; 512];
    memory
        .read_slice(&mut sector0, GuestAddress(DATA + 0x20000 + 0x1000))
        .unwrap();
    assert_eq!(&sector0[..], &file[..512]);
    let _ = std::fs::remove_file(path);
}

#[test]
fn block_errors_flush_id_and_unsupported() {
    let (mut transport, _, memory, path) = block_device("errors", false);
    bring_up(&mut transport, VERSION_1, 32); // 7 chains of 3
    let mut ring = Ring::new(0, 32);
    // Past the end (64 sectors): IOERR, not a protocol violation.
    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 63, 1024, true, 0);
    // Not whole sectors.
    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 0, 100, true, 1);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_FLUSH, 0, 0, false, 2);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_GET_ID, 0, 20, true, 3);
    block_request(&mut ring, &memory, 0x1234, 0, 0, false, 4);
    // Sector numbers that overflow (sector + count, and sector * 512: found by the fuzzer).
    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, u64::MAX, 512, true, 5);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 1 << 60, 512, true, 6);
    notify(&mut transport, 0);
    assert_eq!(ring.used_idx(&memory), 7);
    assert_eq!(status_of(&memory, 6), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(status_of(&memory, 0), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(status_of(&memory, 1), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(status_of(&memory, 2), VIRTIO_BLK_S_OK as u8);
    assert_eq!(status_of(&memory, 3), VIRTIO_BLK_S_OK as u8);
    let mut id = [0u8; 4];
    memory
        .read_slice(&mut id, GuestAddress(DATA + 3 * 0x10000 + 0x1000))
        .unwrap();
    assert_eq!(&id, b"lull");
    assert_eq!(status_of(&memory, 4), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(status_of(&memory, 5), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    let _ = std::fs::remove_file(path);
}

#[test]
fn read_only_disk_refuses_writes_and_keeps_the_file() {
    let (mut transport, _, memory, path) = block_device("ro", true);
    let before = std::fs::read(&path).unwrap();
    write32(&mut transport, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_ne!(
        read32(&transport, VIRTIO_MMIO_DEVICE_FEATURES) & (1 << VIRTIO_BLK_F_RO),
        0
    );
    bring_up(&mut transport, VERSION_1 | (1 << VIRTIO_BLK_F_RO), 16);
    let mut ring = Ring::new(0, 16);
    memory
        .write_slice(&[0x55; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    block_request(&mut ring, &memory, VIRTIO_BLK_T_OUT, 0, 512, false, 0);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 0, 512, true, 1);
    notify(&mut transport, 0);
    assert_eq!(status_of(&memory, 0), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(status_of(&memory, 1), VIRTIO_BLK_S_OK as u8);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let _ = std::fs::remove_file(path);
}

#[test]
fn write_zeroes_and_discard_zero_the_range() {
    let (mut transport, _, memory, path) = block_device("zeroes", false);
    bring_up(&mut transport, VERSION_1, 16);
    let mut ring = Ring::new(0, 16);
    for (slot, (kind, sector, flags)) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, 2u64, 0u32),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            8,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        ),
        (VIRTIO_BLK_T_DISCARD, 16, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let segment = DATA + slot as u64 * 0x10000 + 0x1000;
        memory.write_obj(sector, GuestAddress(segment)).unwrap();
        memory.write_obj(4u32, GuestAddress(segment + 8)).unwrap();
        memory.write_obj(flags, GuestAddress(segment + 12)).unwrap();
        block_request(&mut ring, &memory, kind, 0, 16, false, slot as u64);
    }
    notify(&mut transport, 0);
    for slot in 0..3 {
        assert_eq!(status_of(&memory, slot), VIRTIO_BLK_S_OK as u8);
    }
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), 64 * 512);
    assert!(file[2 * 512..6 * 512].iter().all(|&b| b == 0));
    assert!(file[8 * 512..12 * 512].iter().all(|&b| b == 0));
    assert!(file[6 * 512..8 * 512].iter().any(|&b| b != 0));
    let _ = std::fs::remove_file(path);
}

/// Each malformed chain puts the device into NEEDS_RESET with a config interrupt; a reset
/// brings it back.
#[test]
fn bad_chains_need_reset_and_reset_recovers() {
    type Spoil = fn(&mut Ring, &GuestMemoryMmap);
    let cases: [(&str, Spoil); 8] = [
        ("loop", |ring, memory| {
            ring.write_desc(memory, 0, DATA, 16, VRING_DESC_F_NEXT, 1);
            ring.write_desc(
                memory,
                1,
                DATA + 0x100,
                1,
                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                0,
            );
            ring.publish(memory, 0);
        }),
        ("head out of range", |ring, memory| ring.publish(memory, 40)),
        ("next out of range", |ring, memory| {
            ring.write_desc(memory, 0, DATA, 16, VRING_DESC_F_NEXT, 999);
            ring.publish(memory, 0);
        }),
        ("outside RAM", |ring, memory| {
            ring.write_desc(memory, 0, DATA, 16, VRING_DESC_F_NEXT, 1);
            ring.write_desc(
                memory,
                1,
                (MEMORY_BYTES - 8) as u64,
                512,
                VRING_DESC_F_WRITE,
                0,
            );
            ring.publish(memory, 0);
        }),
        ("readable after writable", |ring, memory| {
            ring.add(memory, &[(DATA + 0x100, 1, true), (DATA, 16, false)]);
        }),
        ("indirect", |ring, memory| {
            ring.write_desc(memory, 0, DATA, 32, VRING_DESC_F_INDIRECT, 0);
            ring.publish(memory, 0);
        }),
        ("avail index too far ahead", |_, memory| {
            memory.write_obj(100u16, GuestAddress(AVAIL + 2)).unwrap();
        }),
        ("no status byte", |ring, memory| {
            ring.add(memory, &[(DATA, 16, false)]);
        }),
    ];
    for (name, spoil) in cases {
        let (mut transport, interrupt, memory, path) = block_device("bad", false);
        bring_up(&mut transport, VERSION_1, 16);
        let mut ring = Ring::new(0, 16);
        spoil(&mut ring, &memory);
        notify(&mut transport, 0);
        let status = read32(&transport, VIRTIO_MMIO_STATUS);
        assert_ne!(
            status & VIRTIO_CONFIG_S_NEEDS_RESET,
            0,
            "{name}: {status:#x}"
        );
        assert_eq!(
            read32(&transport, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
            VIRTIO_MMIO_INT_CONFIG,
            "{name}"
        );
        assert_eq!(interrupt.count(), 1, "{name}");
        assert_eq!(
            read32(&transport, VIRTIO_MMIO_CONFIG_GENERATION),
            1,
            "{name}"
        );
        // Nothing more happens until reset.
        notify(&mut transport, 0);
        assert_eq!(interrupt.count(), 1, "{name}");
        // Reset and a fresh set-up: the device works again.
        write32(&mut transport, VIRTIO_MMIO_STATUS, 0);
        for offset in (0..0x8000).step_by(8) {
            memory.write_obj(0u64, GuestAddress(DESC + offset)).unwrap();
        }
        bring_up(&mut transport, VERSION_1, 16);
        let mut ring = Ring::new(0, 16);
        block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 0, 512, true, 0);
        notify(&mut transport, 0);
        assert_eq!(status_of(&memory, 0), VIRTIO_BLK_S_OK as u8, "{name}");
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn rings_outside_ram_at_driver_ok_need_reset() {
    let (mut transport, interrupt, _, path) = block_device("ring-oob", false);
    negotiate(&mut transport, VERSION_1);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_NUM, 16);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_DESC_HIGH, 1); // 4 GiB: no RAM there
    write32(&mut transport, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_USED_LOW, USED as u32);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_READY, 1);
    driver_ok(&mut transport);
    assert_ne!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(interrupt.count(), 1);
    let _ = std::fs::remove_file(path);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let (mut transport, interrupt, memory, path) = block_device("event-idx", false);
    bring_up(&mut transport, VERSION_1 | EVENT_IDX, 16);
    assert!(transport.queues()[0].state().event_idx_enabled);
    let mut ring = Ring::new(0, 16);
    // The driver wants an interrupt only when used idx passes 2 (the 3rd completion).
    ring.set_used_event(&memory, 2);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_FLUSH, 0, 0, false, 0);
    notify(&mut transport, 0);
    assert_eq!(interrupt.count(), 0);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_FLUSH, 0, 0, false, 1);
    notify(&mut transport, 0);
    assert_eq!(interrupt.count(), 0);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_FLUSH, 0, 0, false, 2);
    notify(&mut transport, 0);
    assert_eq!(interrupt.count(), 1);
    // The device asks for the next kick at its next avail index (avail_event).
    let avail_event: u16 = memory.read_obj(GuestAddress(USED + 4 + 8 * 16)).unwrap();
    assert_eq!(avail_event, 3);
    let _ = std::fs::remove_file(path);
}

#[test]
fn notify_of_a_missing_queue_is_ignored() {
    let (mut transport, _, _, path) = block_device("notify", false);
    bring_up(&mut transport, VERSION_1, 16);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 5);
    write32(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, u32::MAX);
    transport.handle(BackendEvent::Queue(5));
    assert_eq!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    let _ = std::fs::remove_file(path);
}

/// Frames in (to the guest) and out (from the guest), in memory.
#[derive(Clone, Default)]
pub struct FakeTap {
    pub inbound: Arc<Mutex<VecDeque<Vec<u8>>>>,
    pub outbound: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Read for FakeTap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbound.lock().unwrap().pop_front() {
            Some(frame) => {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for FakeTap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.lock().unwrap().push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FrameIo for FakeTap {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

pub fn net_device() -> (MmioTransport, Arc<FakeInterrupt>, GuestMemoryMmap, FakeTap) {
    let memory = memory();
    let tap = FakeTap::default();
    let net = Net::with_io(Box::new(tap.clone()), "tap-test", [2, 0, 0, 0, 0, 1]);
    let (transport, interrupt) = transport(Backend::Net(net), &memory);
    (transport, interrupt, memory, tap)
}

fn frame(payload: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 12]; // virtio_net_hdr: no checksum, no GSO
    frame.extend((0..len).map(|i| payload ^ i as u8));
    frame
}

#[test]
fn net_config_has_the_mac_and_link_up() {
    let (transport, _, _, _) = net_device();
    assert_eq!(read32(&transport, VIRTIO_MMIO_DEVICE_ID), 1);
    let mut config = [0u8; 8];
    transport.read(0x100, &mut config);
    assert_eq!(&config[..6], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1);
    assert_eq!(transport.queues().len(), 2);
}

#[test]
fn net_transmits_whole_frames_with_their_header() {
    let (mut transport, interrupt, memory, tap) = net_device();
    bring_up(&mut transport, VERSION_1, 16);
    let mut tx = Ring::new(1, 16);
    let out = frame(0x42, 60);
    memory.write_slice(&out[..12], GuestAddress(DATA)).unwrap();
    memory
        .write_slice(&out[12..], GuestAddress(DATA + 0x800))
        .unwrap();
    tx.add(&memory, &[(DATA, 12, false), (DATA + 0x800, 60, false)]);
    notify(&mut transport, 1);
    assert_eq!(tap.outbound.lock().unwrap().as_slice(), &[out]);
    assert_eq!(tx.used_idx(&memory), 1);
    assert_eq!(interrupt.count(), 1);
    // A TX chain with a writable buffer is a protocol violation.
    tx.add(&memory, &[(DATA, 12, false), (DATA + 0x800, 60, true)]);
    notify(&mut transport, 1);
    assert_ne!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(tap.outbound.lock().unwrap().len(), 1);
}

#[test]
fn net_receives_into_rx_buffers_and_holds_a_frame_without_one() {
    let (mut transport, _, memory, tap) = net_device();
    bring_up(&mut transport, VERSION_1 | EVENT_IDX, 16);
    let mut rx = Ring::new(0, 16);
    let first = frame(1, 100);
    let second = frame(2, 200);
    tap.inbound.lock().unwrap().push_back(first.clone());
    tap.inbound.lock().unwrap().push_back(second.clone());
    rx.add(&memory, &[(DATA, 2048, true)]);
    transport.handle(BackendEvent::Host);
    assert_eq!(rx.used_idx(&memory), 1);
    assert_eq!(rx.used(&memory, 0), (0, first.len() as u32));
    let mut got = vec![0u8; first.len()];
    memory.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[12..], &first[12..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    // No buffer for the second: held, the TAP is not read further.
    tap.inbound.lock().unwrap().push_back(frame(3, 10));
    transport.handle(BackendEvent::Host);
    assert_eq!(tap.inbound.lock().unwrap().len(), 1);
    // The driver posts a buffer and notifies RX: the held frame goes first.
    rx.add(
        &memory,
        &[(DATA + 0x1000, 1024, true), (DATA + 0x2000, 1024, true)],
    );
    notify(&mut transport, 0);
    assert_eq!(rx.used_idx(&memory), 2);
    assert_eq!(rx.used(&memory, 1).1, second.len() as u32);
    let mut got = vec![0u8; second.len()];
    memory
        .read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(&got[12..], &second[12..]);
    // The third frame was read and held meanwhile (one chain for two frames).
    rx.add(&memory, &[(DATA + 0x3000, 1500, true)]);
    notify(&mut transport, 0);
    assert_eq!(rx.used(&memory, 2).1, 22);
    // A frame larger than the buffer is dropped and the buffer returned empty.
    tap.inbound.lock().unwrap().push_back(frame(4, 3000));
    rx.add(&memory, &[(DATA + 0x3000, 1500, true)]);
    transport.handle(BackendEvent::Host);
    assert_eq!(rx.used(&memory, 3).1, 0);
    // RX chains must be device-writable.
    tap.inbound.lock().unwrap().push_back(frame(5, 10));
    rx.add(&memory, &[(DATA, 100, false)]);
    notify(&mut transport, 0);
    assert_ne!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn paused_devices_do_nothing_and_catch_up_on_resume() {
    let (mut transport, _, memory, path) = block_device("pause", false);
    bring_up(&mut transport, VERSION_1, 16);
    let mut ring = Ring::new(0, 16);
    transport.pause();
    block_request(&mut ring, &memory, VIRTIO_BLK_T_FLUSH, 0, 0, false, 0);
    notify(&mut transport, 0);
    assert_eq!(ring.used_idx(&memory), 0);
    transport.resume();
    assert_eq!(ring.used_idx(&memory), 1);
    let _ = std::fs::remove_file(path);
}

#[test]
fn block_transport_state_round_trips() {
    let (mut transport, _, memory, path) = block_device("persist", false);
    bring_up(&mut transport, VERSION_1 | EVENT_IDX, 16);
    let mut ring = Ring::new(0, 16);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_FLUSH, 0, 0, false, 0);
    notify(&mut transport, 0);
    let state = transport.save();
    let bytes = postcard::to_allocvec(&state).unwrap();
    let decoded: super::mmio::TransportState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    let restored = <MmioTransport as crate::persist::Persist>::restore(
        super::TransportResources {
            name: "restored".into(),
            memory: memory.clone(),
            interrupt: Arc::new(FakeInterrupt::default()),
        },
        &decoded,
    )
    .unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.queues()[0].state().next_avail, 1);
    let _ = std::fs::remove_file(path);
}

#[test]
fn restore_refuses_a_disk_whose_size_changed() {
    let (transport, _, _, path) = block_device("resized", false);
    let state = transport.save();
    std::fs::write(&path, [0u8; 512]).unwrap();
    let Err(error) = Backend::restore(&state.backend) else {
        panic!("a resized disk restored");
    };
    assert!(error.to_string().contains("sectors now"), "{error}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn net_state_round_trips_with_a_held_frame() {
    let (mut transport, _, memory, tap) = net_device();
    bring_up(&mut transport, VERSION_1, 16);
    tap.inbound.lock().unwrap().push_back(frame(9, 64));
    transport.handle(BackendEvent::Host); // no RX buffer: held
    let state = transport.save();
    let BackendState::Net(net_state) = &state.backend else {
        panic!("not a net state");
    };
    assert_eq!(net_state.held_frame.as_deref(), Some(&frame(9, 64)[..]));
    let restored_net = Net::restore_with_io(net_state, Box::new(FakeTap::default()));
    let interrupt = Arc::new(FakeInterrupt::default());
    let mut restored = MmioTransport::new(
        "r".into(),
        Backend::Net(restored_net),
        memory.clone(),
        interrupt,
    )
    .unwrap();
    restored.apply(&state).unwrap();
    assert_eq!(restored.save(), state);
    // The held frame is delivered once the guest posts a buffer.
    let mut rx = Ring::new(0, 16);
    rx.add(&memory, &[(DATA, 2048, true)]);
    notify(&mut restored, 0);
    assert_eq!(rx.used(&memory, 0), (0, 76));
    let _: &NetState = net_state;
}

/// Requests made available but not served before the snapshot are served once after the
/// restore; those served before are not served again.
#[test]
fn snapshot_with_requests_in_flight_loses_and_doubles_none() {
    let (mut transport, _, memory, path) = block_device("inflight", false);
    bring_up(&mut transport, VERSION_1 | EVENT_IDX, 16);
    let mut ring = Ring::new(0, 16);
    for slot in 0..2 {
        memory
            .write_slice(
                &[slot as u8 + 1; 512],
                GuestAddress(DATA + slot * 0x10000 + 0x1000),
            )
            .unwrap();
        block_request(&mut ring, &memory, VIRTIO_BLK_T_OUT, slot, 512, false, slot);
    }
    notify(&mut transport, 0);
    // The VM pauses with two more requests queued and kicked but not yet served.
    transport.pause();
    for slot in 2..4 {
        memory
            .write_slice(
                &[slot as u8 + 1; 512],
                GuestAddress(DATA + slot * 0x10000 + 0x1000),
            )
            .unwrap();
        block_request(&mut ring, &memory, VIRTIO_BLK_T_OUT, slot, 512, false, slot);
    }
    write32(&mut transport, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    transport.handle(BackendEvent::Queue(0));
    let state = transport.save();
    // Guest memory is part of the snapshot: copy it as the snapshot would.
    let restored_memory = memory::copy(&memory);
    let interrupt = Arc::new(FakeInterrupt::default());
    let mut restored = <MmioTransport as crate::persist::Persist>::restore(
        super::TransportResources {
            name: "restored".into(),
            memory: restored_memory.clone(),
            interrupt: interrupt.clone(),
        },
        &state,
    )
    .unwrap();
    restored.kick_all();
    for index in 0..restored.queue_events().len() {
        if restored.queue_events()[index].read().is_ok() {
            restored.handle(BackendEvent::Queue(index));
        }
    }
    assert_eq!(ring.used_idx(&restored_memory), 4);
    let ids: Vec<u32> = (0..4).map(|n| ring.used(&restored_memory, n).0).collect();
    assert_eq!(ids, [0, 3, 6, 9]); // each chain once, in order
    let file = std::fs::read(&path).unwrap();
    for slot in 0..4usize {
        assert!(file[slot * 512..(slot + 1) * 512]
            .iter()
            .all(|&b| b == slot as u8 + 1));
    }
    if let Backend::Block(block) = &restored.backend {
        assert_eq!(block.completed, 2);
    }
    let _ = std::fs::remove_file(path);
}

mod memory {
    use crate::vstate::memory::GuestMemoryMmap;
    use vm_memory::{Bytes, GuestAddress};

    pub fn copy(memory: &GuestMemoryMmap) -> GuestMemoryMmap {
        let copy = super::memory();
        let mut bytes = vec![0u8; super::MEMORY_BYTES];
        memory.read_slice(&mut bytes, GuestAddress(0)).unwrap();
        copy.write_slice(&bytes, GuestAddress(0)).unwrap();
        copy
    }
}

#[test]
fn command_line_options_parse() {
    use super::{cmdline_fragment, parse_disk, parse_net, VirtioConfig};
    assert_eq!(
        parse_disk("path=/a.img,readonly"),
        Ok(VirtioConfig::Block {
            path: "/a.img".into(),
            readonly: true
        })
    );
    assert!(parse_disk("readonly").is_err());
    assert!(parse_disk("path=/a,bogus").is_err());
    assert_eq!(
        parse_net("tap=tap0,mac=02:00:00:00:00:09"),
        Ok(VirtioConfig::Net {
            tap: "tap0".into(),
            mac: Some([2, 0, 0, 0, 0, 9])
        })
    );
    assert!(parse_net("tap=tap0,mac=01:00:00:00:00:09").is_err()); // multicast
    assert!(parse_net("tap=tap0,mac=zz").is_err());
    assert!(parse_net("mac=02:00:00:00:00:09").is_err());
    assert!(parse_net("tap=a-name-that-is-too-long").is_err());
    assert_eq!(
        cmdline_fragment(2),
        " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
    );
}

#[test]
fn oversized_requests_need_reset() {
    // More data segments than seg_max (queue of 256 so the chain itself is legal).
    let (mut transport, _, memory, path) = block_device("segments", false);
    bring_up(&mut transport, VERSION_1, 256);
    let mut ring = Ring::new(0, 256);
    let mut buffers = vec![(DATA, 16, false)];
    buffers.extend(
        (0..super::block::SEG_MAX as u64 + 1).map(|i| (DATA + 0x1000 + i * 512, 512, true)),
    );
    buffers.push((DATA + 0x100, 1, true));
    ring.add(&memory, &buffers);
    notify(&mut transport, 0);
    assert_ne!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    let _ = std::fs::remove_file(path);
    // A TX chain longer than the largest frame.
    let (mut transport, _, memory, tap) = net_device();
    bring_up(&mut transport, VERSION_1, 16);
    let mut tx = Ring::new(1, 16);
    tx.add(
        &memory,
        &[(DATA, 12, false), (DATA + 0x1000, 70_000, false)],
    );
    notify(&mut transport, 1);
    assert_ne!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert!(tap.outbound.lock().unwrap().is_empty());
}

/// The pages in the device threads' dirty marks (live migration: KVM's log does not see them).
fn marked_pages(devices: &mut crate::vstate::dirty_log::DeviceDirty) -> Vec<u64> {
    let mut pages = Vec::new();
    for (index, word) in devices.collect()[0].iter().enumerate() {
        for bit in 0..64 {
            if word >> bit & 1 == 1 {
                pages.push(index as u64 * 64 + bit);
            }
        }
    }
    pages
}

#[test]
fn a_block_read_marks_its_data_status_and_used_ring_pages_and_nothing_else() {
    use crate::vstate::dirty_log::DeviceDirty;
    let (mut transport, _, memory, path) = block_device("dirty", false);
    bring_up(&mut transport, VERSION_1 | EVENT_IDX, 16);
    let mut ring = Ring::new(0, 16);
    // The driver's writes (request header, descriptors, avail ring) are the guest's own, which
    // KVM logs: forget them, then let the device serve the read (two pages of data).
    block_request(&mut ring, &memory, VIRTIO_BLK_T_IN, 0, 8192, true, 1);
    let mut devices = DeviceDirty::start(&memory);
    assert!(marked_pages(&mut devices).is_empty());
    notify(&mut transport, 0);
    assert_eq!(status_of(&memory, 1), VIRTIO_BLK_S_OK as u8);
    let slot = DATA + 0x10000;
    assert_eq!(
        marked_pages(&mut devices),
        vec![
            USED / 4096,            // used element, index and avail_event
            slot / 4096,            // the status byte (beside the header)
            (slot + 0x1000) / 4096, // the data read, two pages
            (slot + 0x2000) / 4096,
        ]
    );
    // A write request marks no data page (the device only reads it): status and used ring.
    let mut devices = DeviceDirty::start(&memory);
    block_request(&mut ring, &memory, VIRTIO_BLK_T_OUT, 0, 4096, false, 2);
    let _ = marked_pages(&mut devices);
    devices.clear(&[vec![u64::MAX; 4]]);
    notify(&mut transport, 0);
    assert_eq!(
        marked_pages(&mut devices),
        vec![USED / 4096, (DATA + 0x20000) / 4096]
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_received_frame_marks_its_rx_buffer_and_used_ring_pages() {
    use crate::vstate::dirty_log::DeviceDirty;
    let (mut transport, _, memory, tap) = net_device();
    bring_up(&mut transport, VERSION_1, 16);
    let mut rx = Ring::new(0, 16);
    rx.add(&memory, &[(DATA + 0x5000, 2048, true)]);
    let mut devices = DeviceDirty::start(&memory);
    tap.inbound.lock().unwrap().push_back(frame(9, 300));
    transport.handle(BackendEvent::Host);
    assert_eq!(rx.used_idx(&memory), 1);
    assert_eq!(
        marked_pages(&mut devices),
        vec![USED / 4096, (DATA + 0x5000) / 4096]
    );
}
