//! A structure-aware fuzzer for the backends and the transport, in plain `cargo test`.
//!
//! Each case builds a guest RAM, a device (block on a scratch image, read-only or not, or net
//! on an in-memory TAP with random inbound frames, or gpio with random edges made through its
//! control channel), drives it to DRIVER_OK with random (mostly
//! plausible) features and queue set-ups, fills descriptor tables, avail rings and request
//! headers with random values biased towards the interesting edges (indices at the queue
//! size, buffers at the end of RAM, loops, INDIRECT, huge lengths, avail indices far ahead),
//! and then runs a random mix of notifications, TAP events, random register writes, resets,
//! pause/resume and save/apply. A case must finish (a watchdog fails the test if one runs for
//! more than 10 s: an endless loop), must not panic, must keep a read-only image unchanged and
//! every image's size, and a device in DEVICE_NEEDS_RESET must not complete anything until
//! reset; a gpio device's saved state must always restore.
//!
//! It runs for `LULL_FUZZ_SECS` seconds (default 3); `LULL_FUZZ_SEED` replays one case. A
//! failing case prints its seed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::vstate::memory::GuestMemoryMmap;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::block::Block;
use super::gpio::{Gpio, GpioConfig};
use super::mmio::MmioTransport;
use super::net::Net;
use super::tests::{
    memory, read32, write32, FakeInterrupt, FakeTap, AVAIL, DATA, DESC, EVENT_IDX, MEMORY_BYTES,
    QUEUE_STRIDE, USED, VERSION_1,
};
use super::{Backend, BackendEvent};

/// xorshift64*: small, fast, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A value near an edge of `0..=limit` more often than uniform.
    fn edgy(&mut self, limit: u64) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => limit,
            2 => limit.saturating_sub(1),
            3 => limit.saturating_add(1),
            4 => self.next(),
            _ => self.below(limit.saturating_add(1)),
        }
    }
}

const IMAGE_SECTORS: usize = 64;

/// How deep the cases went: used-ring entries written, devices put into needs-reset.
static COMPLETED: AtomicU64 = AtomicU64::new(0);
static RESETS_NEEDED: AtomicU64 = AtomicU64::new(0);
/// Of those, gpio's: requests answered, event buffers returned.
static GPIO_REQUESTS: AtomicU64 = AtomicU64::new(0);
static GPIO_EVENTS: AtomicU64 = AtomicU64::new(0);

struct Case {
    transport: MmioTransport,
    memory: GuestMemoryMmap,
    image: Option<(std::path::PathBuf, Vec<u8>, bool)>,
}

fn build_case(rng: &mut Rng, seed: u64) -> Case {
    let memory = memory();
    // Random bytes over the data area, so stale contents are not all zero.
    let mut noise = vec![0u8; 0x4000];
    for byte in noise.iter_mut() {
        *byte = rng.next() as u8;
    }
    memory.write_slice(&noise, GuestAddress(DATA)).unwrap();
    let interrupt = Arc::new(FakeInterrupt::default());
    let (backend, image) = if rng.chance(25) {
        let lines = ["amp-enable", "button", "", "irq"][..rng.below(4) as usize + 1]
            .iter()
            .map(|n| n.to_string())
            .collect();
        let config = GpioConfig {
            lines,
            control: None,
            log: Some("/dev/null".into()),
        };
        (Backend::Gpio(Gpio::open(&config).unwrap()), None)
    } else if rng.chance(55) {
        let path =
            std::env::temp_dir().join(format!("lull-vmm-fuzz-{}-{seed:x}.img", std::process::id()));
        let content: Vec<u8> = (0..IMAGE_SECTORS * 512).map(|i| (i * 13) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let readonly = rng.chance(30);
        let block = Block::open(&path, readonly).unwrap();
        (Backend::Block(block), Some((path, content, readonly)))
    } else {
        let tap = FakeTap::default();
        for _ in 0..rng.below(6) {
            let length = rng.edgy(3000) as usize % 70_000;
            tap.inbound
                .lock()
                .unwrap()
                .push_back((0..length).map(|i| i as u8).collect());
        }
        let net = Net::with_io(Box::new(tap), "fuzz", [2, 0, 0, 0, 0, 1]);
        (Backend::Net(net), None)
    };
    let transport = MmioTransport::new("fuzz".into(), backend, memory.clone(), interrupt).unwrap();
    Case {
        transport,
        memory,
        image,
    }
}

/// Negotiation and queue set-up with random deviations.
fn bring_up(rng: &mut Rng, case: &mut Case) {
    let t = &mut case.transport;
    write32(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    write32(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    let mut features = VERSION_1;
    if rng.chance(50) {
        features |= EVENT_IDX;
    }
    if matches!(t.backend, Backend::Gpio(_)) && rng.chance(80) {
        features |= lull_virtio_gpio::VIRTIO_GPIO_F_IRQ;
    }
    if rng.chance(10) {
        features = rng.next();
    }
    for word in 0..2 {
        write32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, word);
        write32(
            t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * word)) as u32,
        );
    }
    write32(t, VIRTIO_MMIO_STATUS, 0b1011);
    let queues = t.queues().len() as u32;
    for index in 0..queues {
        let stride = u64::from(index) * QUEUE_STRIDE;
        write32(t, VIRTIO_MMIO_QUEUE_SEL, index);
        let size = if rng.chance(90) {
            1u32 << rng.below(9)
        } else {
            rng.edgy(300) as u32
        };
        write32(t, VIRTIO_MMIO_QUEUE_NUM, size);
        for (register, address) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, DESC + stride),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL + stride),
            (VIRTIO_MMIO_QUEUE_USED_LOW, USED + stride),
        ] {
            let address = if rng.chance(92) {
                address
            } else {
                rng.edgy(MEMORY_BYTES as u64)
            };
            write32(t, register, address as u32);
            write32(t, register + 4, (address >> 32) as u32);
        }
        write32(t, VIRTIO_MMIO_QUEUE_READY, u32::from(rng.chance(95)));
    }
    write32(t, VIRTIO_MMIO_STATUS, 0b1111);
}

/// Random descriptor tables, avail rings and request contents: mostly well-formed chains for
/// the queue (so requests get past validation), mutated now and then, and some pure noise.
fn fill_queues(rng: &mut Rng, case: &Case) {
    let memory = &case.memory;
    let block = matches!(case.transport.backend, Backend::Block(_));
    let gpio = matches!(case.transport.backend, Backend::Gpio(_));
    for (queue_index, queue) in case.transport.queues().iter().enumerate() {
        let state = queue.state();
        let size = u64::from(state.size);
        let mut index = 0u64;
        while index < size {
            // (address, len, writable) of one chain.
            let mut chain: Vec<(u64, u32, bool)> = Vec::new();
            let data = |rng: &mut Rng| DATA + rng.below(0x3000);
            if rng.chance(80) {
                if gpio && queue_index == 0 {
                    chain.push((data(rng), 8, false));
                    chain.push((data(rng), [1, 2, 20][rng.below(3) as usize], true));
                } else if gpio {
                    chain.push((data(rng), 2, false));
                    chain.push((data(rng), 1, true));
                } else if block {
                    chain.push((data(rng), 16, false));
                    let writable = rng.chance(50);
                    for _ in 0..rng.below(3) {
                        chain.push((data(rng), 512 * rng.below(3) as u32, writable));
                    }
                    chain.push((data(rng), 1, true));
                } else {
                    let writable = queue_index == super::net::RX_QUEUE;
                    chain.push((data(rng), 12 + rng.below(1600) as u32, writable));
                    if rng.chance(30) {
                        chain.push((data(rng), rng.below(1600) as u32, writable));
                    }
                }
            } else {
                for _ in 0..rng.below(4) + 1 {
                    chain.push((data(rng), rng.below(2048) as u32, rng.chance(50)));
                }
            }
            for (i, &(address, len, writable)) in chain.iter().enumerate() {
                if index >= size {
                    break;
                }
                let mut address = address;
                let mut len = len;
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                let mut next = (index + 1) % size;
                if i + 1 < chain.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                if rng.chance(4) {
                    match rng.below(5) {
                        0 => address = rng.edgy(MEMORY_BYTES as u64),
                        1 => len = rng.next() as u32,
                        2 => flags ^= 1 << rng.below(3), // NEXT, WRITE or INDIRECT
                        3 => next = rng.edgy(size),
                        _ => flags |= VRING_DESC_F_INDIRECT,
                    }
                }
                let at = state.desc_table + index * 16;
                let _ = memory.write_obj(address, GuestAddress(at));
                let _ = memory.write_obj(len, GuestAddress(at + 8));
                let _ = memory.write_obj(flags as u16, GuestAddress(at + 12));
                let _ = memory.write_obj(next as u16, GuestAddress(at + 14));
                index += 1;
            }
        }
        let ahead = if rng.chance(90) {
            rng.below(size + 1)
        } else {
            rng.edgy(u64::from(u16::MAX))
        };
        let avail_idx = state.next_avail.wrapping_add(ahead as u16);
        for slot in 0..size {
            let head = if rng.chance(85) {
                rng.below(size)
            } else {
                rng.edgy(size)
            } as u16;
            let _ = memory.write_obj(head, GuestAddress(state.avail_ring + 4 + 2 * slot));
        }
        let _ = memory.write_obj(avail_idx, GuestAddress(state.avail_ring + 2));
        let _ = memory.write_obj(
            rng.next() as u16,
            GuestAddress(state.avail_ring + 4 + 2 * size),
        );
        if rng.chance(30) {
            let _ = memory.write_obj(1u16, GuestAddress(state.avail_ring)); // NO_INTERRUPT
        }
    }
    // Plausible gpio messages (type, line, value) and event line numbers.
    for _ in 0..8 {
        let at = DATA + rng.below(0x3000);
        let _ = memory.write_obj(rng.below(8) as u16, GuestAddress(at));
        let _ = memory.write_obj(rng.edgy(4) as u16, GuestAddress(at + 2));
        let _ = memory.write_obj(rng.edgy(8) as u32, GuestAddress(at + 4));
    }
    // Plausible block headers where buffers tend to point.
    for _ in 0..8 {
        let at = DATA + rng.below(0x3000);
        let kind = [
            VIRTIO_BLK_T_IN,
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_FLUSH,
            VIRTIO_BLK_T_GET_ID,
            VIRTIO_BLK_T_DISCARD,
            VIRTIO_BLK_T_WRITE_ZEROES,
            rng.next() as u32,
        ][rng.below(7) as usize];
        let _ = memory.write_obj(kind, GuestAddress(at));
        let _ = memory.write_obj(rng.edgy(IMAGE_SECTORS as u64), GuestAddress(at + 8));
    }
}

fn run_case(seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut case = build_case(&mut rng, seed);
    bring_up(&mut rng, &mut case);
    for _ in 0..rng.below(12) + 1 {
        if rng.chance(70) {
            fill_queues(&mut rng, &case);
        }
        let queues = case.transport.queues().len();
        let needs_reset_before = case.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
        let used_before: Vec<u16> = case
            .transport
            .queues()
            .iter()
            .map(|q| q.state().next_used)
            .collect();
        let operation = rng.below(20);
        match operation {
            0..=10 => {
                let index = rng.below(queues as u64 + 1) as u32;
                write32(&mut case.transport, VIRTIO_MMIO_QUEUE_NOTIFY, index);
                case.transport.handle(BackendEvent::Queue(index as usize));
            }
            11..=12 => {
                if let Backend::Gpio(gpio) = &case.transport.backend {
                    // The outside world: a random level or edge through the control channel.
                    let line = rng.edgy(4);
                    let command = match rng.below(3) {
                        0 => format!("set {line} {}", rng.below(2)),
                        1 => format!("pulse {line}"),
                        _ => "dump".to_string(),
                    };
                    let _ = gpio.chip().control_line(&command);
                }
                case.transport.handle(BackendEvent::Host)
            }
            13 => {
                let offset = rng.below(0x200) as u32;
                let value = rng.next() as u32;
                write32(&mut case.transport, offset, value);
                let _ = read32(&case.transport, offset);
            }
            14 => {
                let mut bytes = vec![0u8; rng.below(9) as usize];
                case.transport.read(rng.below(0x1000), &mut bytes);
                case.transport.write(rng.below(0x1000), &bytes);
            }
            15 => {
                write32(&mut case.transport, VIRTIO_MMIO_STATUS, 0);
                bring_up(&mut rng, &mut case);
            }
            16 => {
                case.transport.pause();
                case.transport.handle(BackendEvent::Queue(0));
                case.transport.resume();
            }
            17 => {
                let state = case.transport.save();
                case.transport.apply(&state).unwrap();
                assert_eq!(case.transport.save(), state);
                if let super::BackendState::Gpio(_) = &state.backend {
                    let restored = Backend::restore(&state.backend)
                        .unwrap_or_else(|e| panic!("a saved gpio state does not restore: {e}"));
                    assert_eq!(restored.save(), state.backend);
                }
            }
            _ => {
                write32(
                    &mut case.transport,
                    VIRTIO_MMIO_INTERRUPT_ACK,
                    rng.next() as u32,
                );
            }
        }
        // (A reset, operation 15, legitimately rewinds the rings.)
        if needs_reset_before
            && operation != 15
            && case.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
        {
            let used_after: Vec<u16> = case
                .transport
                .queues()
                .iter()
                .map(|q| q.state().next_used)
                .collect();
            assert_eq!(
                used_before, used_after,
                "a device needing reset completed work"
            );
        }
    }
    let used: u64 = case
        .transport
        .queues()
        .iter()
        .map(|q| u64::from(q.state().next_used))
        .sum();
    COMPLETED.fetch_add(used, Ordering::Relaxed);
    if let Backend::Gpio(_) = case.transport.backend {
        let used = |q: usize| u64::from(case.transport.queues()[q].state().next_used);
        GPIO_REQUESTS.fetch_add(used(0), Ordering::Relaxed);
        GPIO_EVENTS.fetch_add(used(1), Ordering::Relaxed);
    }
    if case.transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
        RESETS_NEEDED.fetch_add(1, Ordering::Relaxed);
    }
    if let Some((path, content, readonly)) = case.image.take() {
        let now = std::fs::read(&path).unwrap();
        assert_eq!(now.len(), content.len(), "the image changed size");
        if readonly {
            assert!(now == content, "a read-only image was written");
        }
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn fuzz_the_backends_with_hostile_queues() {
    if let Some(seed) = std::env::var("LULL_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        run_case(seed);
        return;
    }
    let seconds: u64 = std::env::var("LULL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let current = Arc::new(AtomicU64::new(0));
    let cases = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let worker = {
        let (current, cases) = (current.clone(), cases.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
            while started.elapsed() < Duration::from_secs(seconds) {
                let seed = rng.next();
                current.store(seed, Ordering::SeqCst);
                let outcome = std::panic::catch_unwind(|| run_case(seed));
                if let Err(panic) = outcome {
                    eprintln!("fuzz case failed; replay with LULL_FUZZ_SEED={seed:x}");
                    std::panic::resume_unwind(panic);
                }
                cases.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Watchdog: a case that runs for more than 10 s is an endless loop.
    let mut last = (0, Instant::now());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let done = cases.load(Ordering::SeqCst);
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            panic!(
                "fuzz case LULL_FUZZ_SEED={:x} has run for 10 s: an endless loop",
                current.load(Ordering::SeqCst)
            );
        }
    }
    worker
        .join()
        .expect("a fuzz case panicked (its seed is printed above)");
    let done = cases.load(Ordering::SeqCst);
    let completed = COMPLETED.load(Ordering::Relaxed);
    let resets = RESETS_NEEDED.load(Ordering::Relaxed);
    let (gpio_requests, gpio_events) = (
        GPIO_REQUESTS.load(Ordering::Relaxed),
        GPIO_EVENTS.load(Ordering::Relaxed),
    );
    eprintln!(
        "virtio fuzz: {done} cases in {seconds} s, {completed} buffers used ({gpio_requests} \
         gpio requests, {gpio_events} gpio event buffers), {resets} ended needing reset"
    );
    assert!(done > 0);
    // The generator must reach past the validation: some cases complete requests, some are
    // refused.
    if done >= 100 {
        assert!(
            completed > 0 && resets > 0 && gpio_requests > 0,
            "{completed} used, {resets} resets, {gpio_requests} gpio requests"
        );
    }
}
