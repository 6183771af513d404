//! Host tests: a fake device that reads the available ring from the same memory and writes used
//! elements, honest or not.

use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::*;

const BASE: u64 = 0x10_0000;

fn queue<T>(size: u16, event_idx: bool) -> SplitQueue<VecMemory, T> {
    let layout = QueueLayout::contiguous(size, BASE).unwrap();
    let len = usize::try_from(QueueLayout::contiguous_bytes(size)).unwrap();
    SplitQueue::new(VecMemory::new(BASE, len), layout, event_idx)
}

/// A descriptor as the device reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
}

/// The device's side of the rings.
#[derive(Debug, Default)]
struct FakeDevice {
    last_avail: u16,
    used_idx: u16,
}

impl FakeDevice {
    /// Takes every newly available chain, walking its descriptors.
    fn take_avail<T>(&mut self, q: &SplitQueue<VecMemory, T>) -> Vec<(u16, Vec<Desc>)> {
        let layout = *q.layout();
        let mem = q.memory();
        let avail_idx = mem.read_u16(layout.avail_idx());
        let mut chains = Vec::new();
        while self.last_avail != avail_idx {
            let slot = self.last_avail & (layout.size() - 1);
            let head = mem.read_u16(layout.avail_ring(slot));
            let mut descs = Vec::new();
            let mut index = head;
            for _ in 0..layout.size() {
                let addr = layout.desc(index);
                let desc = Desc {
                    addr: mem.read_u64(addr),
                    len: mem.read_u32(addr + 8),
                    flags: mem.read_u16(addr + 12),
                };
                descs.push(desc);
                if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                index = mem.read_u16(addr + 14);
            }
            chains.push((head, descs));
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        chains
    }

    /// Publishes a used element (honest or not).
    fn complete<T>(&mut self, q: &mut SplitQueue<VecMemory, T>, id: u32, len: u32) {
        let layout = *q.layout();
        let slot = self.used_idx & (layout.size() - 1);
        let mem = q.memory_mut();
        mem.write_u32(layout.used_elem(slot), id);
        mem.write_u32(layout.used_elem(slot) + 4, len);
        self.used_idx = self.used_idx.wrapping_add(1);
        mem.write_u16(layout.used_idx(), self.used_idx);
    }

    /// Whether the device would interrupt after moving its used index from `old` to `new`.
    fn would_interrupt<T>(
        q: &SplitQueue<VecMemory, T>,
        event_idx: bool,
        old: u16,
        new: u16,
    ) -> bool {
        let layout = *q.layout();
        if event_idx {
            vring_need_event(q.memory().read_u16(layout.used_event()), new, old)
        } else {
            q.memory().read_u16(layout.avail_flags()) & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

#[test]
fn layout_follows_the_spec_and_refuses_bad_ones() {
    let l = QueueLayout::contiguous(256, 0x1000).unwrap();
    assert_eq!(l.desc_addr(), 0x1000);
    assert_eq!(l.avail_addr(), 0x1000 + 16 * 256);
    // 6 + 2 * 256 = 518 bytes of available ring, rounded up to 4 for the used ring.
    assert_eq!(l.used_addr(), 0x1000 + 16 * 256 + 520);
    assert_eq!(l.used_event(), l.avail_addr() + 4 + 2 * 256);
    assert_eq!(l.avail_event(), l.used_addr() + 4 + 8 * 256);
    assert_eq!(
        QueueLayout::contiguous_bytes(256),
        16 * 256 + 520 + 6 + 8 * 256
    );
    assert!(QueueLayout::contiguous(MAX_QUEUE_SIZE, 0).is_ok());

    for size in [0, 3, 100, 65535] {
        assert_eq!(
            QueueLayout::contiguous(size, 0),
            Err(Error::InvalidSize(size))
        );
    }
    assert_eq!(
        QueueLayout::new(8, 0x1008, 0x2000, 0x3000),
        Err(Error::Misaligned {
            what: "descriptor table",
            addr: 0x1008,
            align: 16
        })
    );
    assert!(matches!(
        QueueLayout::new(8, 0x1000, 0x2001, 0x3000),
        Err(Error::Misaligned { align: 2, .. })
    ));
    assert!(matches!(
        QueueLayout::new(8, 0x1000, 0x2000, 0x3002),
        Err(Error::Misaligned { align: 4, .. })
    ));
    // The available ring starts inside the descriptor table (8 × 16 = 128 bytes).
    assert_eq!(
        QueueLayout::new(8, 0x1000, 0x1070, 0x3000),
        Err(Error::Overlap)
    );
    assert_eq!(
        QueueLayout::new(8, 0x1000, 0x2000, u64::MAX - 3),
        Err(Error::AddressOverflow { what: "used ring" })
    );
}

#[test]
fn add_writes_a_chain_the_device_can_walk() {
    let mut q = queue::<u32>(8, false);
    let mut dev = FakeDevice::default();
    let head = q
        .add(
            &[Segment::new(0xa000, 16), Segment::new(0xb000, 8)],
            &[Segment::new(0xc000, 512), Segment::new(0xd000, 1)],
            7,
        )
        .unwrap();
    assert_eq!(q.num_free(), 4);
    assert_eq!(q.in_flight(), 1);
    let chains = dev.take_avail(&q);
    assert_eq!(
        chains,
        [(
            head,
            vec![
                Desc {
                    addr: 0xa000,
                    len: 16,
                    flags: VIRTQ_DESC_F_NEXT
                },
                Desc {
                    addr: 0xb000,
                    len: 8,
                    flags: VIRTQ_DESC_F_NEXT
                },
                Desc {
                    addr: 0xc000,
                    len: 512,
                    flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE
                },
                Desc {
                    addr: 0xd000,
                    len: 1,
                    flags: VIRTQ_DESC_F_WRITE
                },
            ]
        )]
    );
    // Nothing is changed by a refused add.
    assert_eq!(q.add(&[], &[], 0), Err(Error::EmptyChain));
    assert_eq!(
        q.add(&[Segment::new(1, 0)], &[], 0),
        Err(Error::ZeroLengthSegment)
    );
    let five = [Segment::new(0x1000, 1); 5];
    assert_eq!(
        q.add(&five, &[], 0),
        Err(Error::QueueFull { needed: 5, free: 4 })
    );
    assert_eq!(q.num_free(), 4);
    assert!(dev.take_avail(&q).is_empty());

    // The device writes 513 bytes (all of it); the chain comes back with its token.
    dev.complete(&mut q, head.into(), 513);
    assert_eq!(q.pop_used(), Ok(Some((7, 513))));
    assert_eq!(q.pop_used(), Ok(None));
    assert_eq!(q.num_free(), 8);
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn out_of_order_completions_return_the_right_tokens_and_descriptors() {
    let mut q = queue::<&str>(4, false);
    let mut dev = FakeDevice::default();
    let a = q
        .add(&[Segment::new(0x100, 4)], &[Segment::new(0x200, 4)], "a")
        .unwrap();
    let b = q.add(&[Segment::new(0x300, 4)], &[], "b").unwrap();
    let c = q.add(&[], &[Segment::new(0x400, 4)], "c").unwrap();
    assert_eq!(q.num_free(), 0);
    assert_eq!(
        q.add(&[Segment::new(0x500, 1)], &[], "d"),
        Err(Error::QueueFull { needed: 1, free: 0 })
    );
    assert_eq!(dev.take_avail(&q).len(), 3);
    dev.complete(&mut q, c.into(), 4);
    dev.complete(&mut q, a.into(), 2);
    assert_eq!(q.pop_used(), Ok(Some(("c", 4))));
    assert_eq!(q.pop_used(), Ok(Some(("a", 2))));
    assert_eq!(q.num_free(), 3);
    // Freed descriptors are reused: a 3-descriptor chain fits now.
    let d = q.add(&[Segment::new(0x600, 1); 3], &[], "d").unwrap();
    assert_eq!(q.num_free(), 0);
    dev.take_avail(&q);
    dev.complete(&mut q, b.into(), 0);
    dev.complete(&mut q, d.into(), 0);
    assert_eq!(q.pop_used(), Ok(Some(("b", 0))));
    assert_eq!(q.pop_used(), Ok(Some(("d", 0))));
    assert_eq!(q.num_free(), 4);
}

#[test]
fn notification_without_event_idx_follows_no_notify() {
    let mut q = queue::<u8>(8, false);
    assert_eq!(q.should_notify(), Ok(false), "nothing added");
    q.add(&[Segment::new(0x100, 1)], &[], 1).unwrap();
    assert_eq!(q.should_notify(), Ok(true));
    assert_eq!(q.should_notify(), Ok(false), "already notified");
    let flags = q.layout().used_flags();
    q.memory_mut().write_u16(flags, VRING_USED_F_NO_NOTIFY);
    q.add(&[Segment::new(0x100, 1)], &[], 2).unwrap();
    assert_eq!(
        q.should_notify(),
        Ok(false),
        "device asked not to be notified"
    );
    q.memory_mut().write_u16(flags, 0);
    q.add(&[Segment::new(0x100, 1)], &[], 3).unwrap();
    assert_eq!(q.should_notify(), Ok(true));
}

#[test]
fn notification_with_event_idx_follows_avail_event() {
    let mut q = queue::<u8>(8, true);
    let event = q.layout().avail_event();
    // The device wants a kick when index 0 → 1 is published (avail_event = 0).
    q.add(&[Segment::new(0x100, 1)], &[], 0).unwrap();
    assert_eq!(q.should_notify(), Ok(true));
    // It now asks to be kicked only once entry 3 is published (idx moving past 3).
    q.memory_mut().write_u16(event, 3);
    q.add(&[Segment::new(0x100, 1)], &[], 1).unwrap(); // idx 2
    assert_eq!(q.should_notify(), Ok(false));
    q.add(&[Segment::new(0x100, 1)], &[], 2).unwrap(); // idx 3
    assert_eq!(q.should_notify(), Ok(false));
    q.add(&[Segment::new(0x100, 1)], &[], 3).unwrap(); // idx 4: crosses 3
    assert_eq!(q.should_notify(), Ok(true));
    // A batch crossing the event in the middle notifies once.
    q.memory_mut().write_u16(event, 5);
    q.add(&[Segment::new(0x100, 1)], &[], 4).unwrap();
    q.add(&[Segment::new(0x100, 1)], &[], 5).unwrap();
    q.add(&[Segment::new(0x100, 1)], &[], 6).unwrap();
    assert_eq!(q.should_notify(), Ok(true));
    // The used ring's NO_NOTIFY flag is ignored with EVENT_IDX.
    let used_flags = q.layout().used_flags();
    q.memory_mut().write_u16(used_flags, VRING_USED_F_NO_NOTIFY);
    q.memory_mut().write_u16(event, 7);
    q.add(&[Segment::new(0x100, 1)], &[], 7).unwrap();
    assert_eq!(q.should_notify(), Ok(true));
}

#[test]
fn vring_need_event_matches_the_spec_formula_across_wrap() {
    assert!(vring_need_event(0, 1, 0));
    assert!(!vring_need_event(1, 1, 0));
    assert!(
        vring_need_event(65535, 1, 65534),
        "crossing 65535 while wrapping"
    );
    assert!(!vring_need_event(2, 1, 65534));
    assert!(vring_need_event(5, 10, 3));
    assert!(!vring_need_event(10, 10, 3));
}

#[test]
fn interrupt_suppression_both_ways_and_enable_reports_races() {
    for event_idx in [false, true] {
        let mut q = queue::<u8>(8, event_idx);
        let mut dev = FakeDevice::default();
        for t in 0..4 {
            q.add(&[], &[Segment::new(0x100, 1)], t).unwrap();
        }
        dev.take_avail(&q);
        assert!(
            FakeDevice::would_interrupt(&q, event_idx, 0, 1),
            "enabled by default"
        );
        q.disable_callbacks();
        dev.complete(&mut q, 0, 1);
        assert!(
            !FakeDevice::would_interrupt(&q, event_idx, 0, 1),
            "event_idx={event_idx}"
        );
        // Completion raced in while disabled: enable reports it.
        assert_eq!(q.enable_callbacks(), Ok(true));
        assert_eq!(q.pop_used(), Ok(Some((0, 1))));
        assert_eq!(q.enable_callbacks(), Ok(false));
        assert!(FakeDevice::would_interrupt(&q, event_idx, 1, 2));
        if event_idx {
            // Only the next completion interrupts, not a later one in the same batch.
            assert_eq!(q.memory().read_u16(q.layout().used_event()), 1);
            assert!(!FakeDevice::would_interrupt(&q, true, 2, 3));
        }
        dev.complete(&mut q, 1, 1);
        assert_eq!(q.pop_used(), Ok(Some((1, 1))));
        if event_idx {
            assert_eq!(
                q.memory().read_u16(q.layout().used_event()),
                2,
                "moved on by pop"
            );
        }
    }
}

#[test]
fn indices_wrap_past_65536_with_and_without_event_idx() {
    for event_idx in [false, true] {
        let mut q = queue::<u32>(8, event_idx);
        let mut dev = FakeDevice::default();
        let mut notifies = 0_u32;
        let mut outstanding = std::collections::VecDeque::new();
        for op in 0..70_000_u32 {
            // Keep 1 to 3 chains in flight, of 1 or 2 descriptors.
            let writable = [Segment::new(0x1000, 64)];
            let readable = [Segment::new(0x2000, 8)];
            let r: &[Segment] = if op % 2 == 0 { &readable } else { &[] };
            q.add(r, &writable, op).unwrap();
            if q.should_notify().unwrap() {
                notifies += 1;
                if event_idx {
                    // The device re-arms right after each kick for the next entry.
                    let idx = q.memory().read_u16(q.layout().avail_idx());
                    let event = q.layout().avail_event();
                    q.memory_mut().write_u16(event, idx);
                }
            }
            for (head, _) in dev.take_avail(&q) {
                outstanding.push_back((head, op));
            }
            if outstanding.len() >= 3 || op % 5 == 0 {
                let (head, token) = outstanding.pop_front().unwrap();
                dev.complete(&mut q, head.into(), op % 65);
                assert_eq!(q.pop_used(), Ok(Some((token, op % 65))));
            }
        }
        while let Some((head, token)) = outstanding.pop_front() {
            dev.complete(&mut q, head.into(), 0);
            assert_eq!(q.pop_used(), Ok(Some((token, 0))));
        }
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.in_flight(), 0);
        // The ring indices really wrapped.
        assert_eq!(dev.last_avail, (70_000 % 65_536) as u16);
        assert_eq!(q.memory().read_u16(q.layout().avail_idx()), dev.last_avail);
        if event_idx {
            assert!(notifies > 0 && notifies <= 70_000);
        } else {
            assert_eq!(notifies, 70_000);
        }
    }
}

#[test]
fn bad_used_ids_break_the_queue() {
    // Out of range, a non-head member of a chain, a free descriptor, a completed chain.
    type BadId = fn(u16) -> u32;
    let cases: [(&str, BadId); 4] = [
        ("out of range", |_| 8),
        ("huge", |_| u32::MAX),
        ("chain member", |head| u32::from(head) + 1),
        ("free descriptor", |_| 7),
    ];
    for (what, id) in cases {
        let mut q = queue::<u8>(8, false);
        let mut dev = FakeDevice::default();
        let head = q
            .add(&[Segment::new(0x100, 1)], &[Segment::new(0x200, 4)], 1)
            .unwrap();
        dev.take_avail(&q);
        let bad = id(head);
        dev.complete(&mut q, bad, 0);
        assert_eq!(q.pop_used(), Err(Error::BadUsedId { id: bad }), "{what}");
        assert!(q.is_broken());
        assert_eq!(q.pop_used(), Err(Error::Broken));
    }

    // Completing the same chain twice.
    let mut q = queue::<u8>(8, false);
    let mut dev = FakeDevice::default();
    let a = q.add(&[Segment::new(0x100, 1)], &[], 1).unwrap();
    q.add(&[Segment::new(0x100, 1)], &[], 2).unwrap();
    dev.take_avail(&q);
    dev.complete(&mut q, a.into(), 0);
    assert_eq!(q.pop_used(), Ok(Some((1, 0))));
    dev.complete(&mut q, a.into(), 0);
    assert_eq!(q.pop_used(), Err(Error::BadUsedId { id: a.into() }));
    assert_eq!(q.num_free(), 7, "nothing freed twice");
}

#[test]
fn bad_used_length_breaks_the_queue_until_reset() {
    let mut q = queue::<u8>(8, true);
    let mut dev = FakeDevice::default();
    let head = q
        .add(
            &[Segment::new(0x100, 100)],
            &[Segment::new(0x200, 4), Segment::new(0x300, 4)],
            1,
        )
        .unwrap();
    q.add(&[Segment::new(0x100, 1)], &[], 2).unwrap();
    dev.take_avail(&q);
    // Readable bytes do not count: 9 > 8 writable.
    dev.complete(&mut q, head.into(), 9);
    assert_eq!(
        q.pop_used(),
        Err(Error::BadUsedLength {
            id: head.into(),
            len: 9,
            writable: 8
        })
    );
    assert_eq!(q.pop_used(), Err(Error::Broken));
    assert_eq!(q.add(&[Segment::new(0x100, 1)], &[], 3), Err(Error::Broken));
    assert_eq!(q.should_notify(), Err(Error::Broken));
    assert_eq!(q.enable_callbacks(), Err(Error::Broken));
    assert_eq!(q.has_used(), Err(Error::Broken));

    let mut tokens = q.reset();
    tokens.sort_unstable();
    assert_eq!(tokens, [1, 2], "in-flight tokens come back");
    assert!(!q.is_broken());
    assert_eq!(q.num_free(), 8);
    let mut dev = FakeDevice::default();
    let head = q.add(&[], &[Segment::new(0x200, 8)], 4).unwrap();
    dev.take_avail(&q);
    dev.complete(&mut q, head.into(), 8);
    assert_eq!(q.pop_used(), Ok(Some((4, 8))));
}

#[test]
fn used_index_jumping_ahead_breaks_the_queue() {
    let mut q = queue::<u8>(8, false);
    let used_idx = q.layout().used_idx();
    q.add(&[Segment::new(0x100, 1)], &[], 1).unwrap();
    q.add(&[Segment::new(0x100, 1)], &[], 2).unwrap();
    // Two in flight; the device claims three completions.
    q.memory_mut().write_u16(used_idx, 3);
    assert_eq!(
        q.pop_used(),
        Err(Error::BadUsedIndex {
            used_idx: 3,
            last_used_idx: 0,
            in_flight: 2
        })
    );
    assert!(q.is_broken());

    // A jump of more than the queue size, even with a full queue, and a step backwards (which
    // is a jump of nearly 65,536).
    for bogus in [9_u16, 0xffff] {
        let mut q = queue::<u8>(8, false);
        for t in 0..8 {
            q.add(&[Segment::new(0x100, 1)], &[], t).unwrap();
        }
        q.memory_mut().write_u16(used_idx, bogus);
        assert!(
            matches!(q.has_used(), Err(Error::BadUsedIndex { .. })),
            "{bogus}"
        );
        assert_eq!(q.enable_callbacks(), Err(Error::Broken));
    }
}

#[derive(Default)]
struct FakeTransport {
    status: u8,
    status_writes: Vec<u8>,
    device_features: u64,
    driver_features: u64,
    refuse_features: bool,
    reset_stuck_for: u32,
    delays: u32,
    selected: u16,
    num_queues: u16,
    max_size: u16,
    queues: Vec<(u16, u64, u64, u64, bool, u16)>,
    /// Vectors the device can allocate; others read back NO_VECTOR.
    vectors: BTreeSet<u16>,
    queue_vector: u16,
    config_vector: u16,
}

impl Transport for FakeTransport {
    fn read_status(&mut self) -> u8 {
        if self.reset_stuck_for > 0 {
            self.reset_stuck_for -= 1;
            return STATUS_DRIVER_OK;
        }
        self.status
    }
    fn write_status(&mut self, status: u8) {
        self.status_writes.push(status);
        self.status = if status & STATUS_FEATURES_OK != 0 && self.refuse_features {
            status & !STATUS_FEATURES_OK
        } else {
            status
        };
    }
    fn read_device_features(&mut self, select: u32) -> u32 {
        (self.device_features >> (32 * select)) as u32
    }
    fn write_driver_features(&mut self, select: u32, features: u32) {
        self.driver_features |= u64::from(features) << (32 * select);
    }
    fn num_queues(&mut self) -> u16 {
        self.num_queues
    }
    fn select_queue(&mut self, queue: u16) {
        self.selected = queue;
        self.queues.push((queue, 0, 0, 0, false, 0));
    }
    fn queue_max_size(&mut self) -> u16 {
        self.max_size
    }
    fn set_queue_size(&mut self, size: u16) {
        self.queues.last_mut().unwrap().5 = size;
    }
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        let q = self.queues.last_mut().unwrap();
        (q.1, q.2, q.3) = (desc, driver, device);
    }
    fn set_queue_enable(&mut self, enable: bool) {
        self.queues.last_mut().unwrap().4 = enable;
    }
    fn queue_notify_off(&mut self) -> u16 {
        self.selected * 2
    }
    fn write_queue_msix_vector(&mut self, vector: u16) {
        self.queue_vector = if self.vectors.contains(&vector) {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        };
    }
    fn read_queue_msix_vector(&mut self) -> u16 {
        self.queue_vector
    }
    fn write_config_msix_vector(&mut self, vector: u16) {
        self.config_vector = if self.vectors.contains(&vector) {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        };
    }
    fn read_config_msix_vector(&mut self) -> u16 {
        self.config_vector
    }
    fn delay(&mut self) {
        self.delays += 1;
    }
}

fn transport() -> FakeTransport {
    FakeTransport {
        device_features: VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | 1,
        num_queues: 2,
        max_size: 256,
        vectors: [0, 1, 2].into_iter().collect(),
        ..Default::default()
    }
}

#[test]
fn initialisation_runs_the_status_sequence_and_sets_up_queues() {
    let mut t = transport();
    let layout = QueueLayout::contiguous(256, 0x4000).unwrap();
    let mut init = DeviceInit::begin(&mut t, 10).unwrap();
    let features = init
        .negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | 1 << 5)
        .unwrap();
    assert_eq!(features, VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX);
    assert_eq!(init.stage(), InitStage::FeaturesOk);
    init.set_config_vector(0).unwrap();
    let setup = init.setup_queue(1, &layout, Some(2)).unwrap();
    assert_eq!(
        setup,
        QueueSetup {
            queue: 1,
            notify_off: 2,
            msix_vector: 2
        }
    );
    assert_eq!(init.finish(), Ok(features));
    assert_eq!(
        t.status_writes,
        [
            0,
            STATUS_ACKNOWLEDGE,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        ]
    );
    assert_eq!(t.driver_features, features);
    assert_eq!(
        t.queues,
        [(
            1,
            layout.desc_addr(),
            layout.avail_addr(),
            layout.used_addr(),
            true,
            256
        )]
    );
}

#[test]
fn initialisation_failures_write_failed() {
    let last = |t: &FakeTransport| *t.status_writes.last().unwrap();
    // No VERSION_1 offered: a legacy device.
    let mut t = FakeTransport {
        device_features: VIRTIO_F_RING_EVENT_IDX,
        ..transport()
    };
    let mut init = DeviceInit::begin(&mut t, 10).unwrap();
    assert_eq!(
        init.negotiate(VIRTIO_F_VERSION_1),
        Err(InitError::NoVersion1)
    );
    assert_eq!(
        init.negotiate(VIRTIO_F_VERSION_1),
        Err(InitError::WrongStage)
    );
    assert_ne!(last(&t) & STATUS_FAILED, 0);

    // The device clears FEATURES_OK.
    let mut t = FakeTransport {
        refuse_features: true,
        ..transport()
    };
    let mut init = DeviceInit::begin(&mut t, 10).unwrap();
    assert_eq!(
        init.negotiate(VIRTIO_F_VERSION_1),
        Err(InitError::FeaturesNotAccepted {
            features: VIRTIO_F_VERSION_1
        })
    );
    assert_ne!(last(&t) & STATUS_FAILED, 0);

    // Packed rings asked for.
    let mut t = transport();
    let mut init = DeviceInit::begin(&mut t, 10).unwrap();
    assert_eq!(
        init.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_PACKED),
        Err(InitError::PackedRingUnsupported)
    );

    // MSI-X vector the device cannot allocate reads back NO_VECTOR.
    let layout = QueueLayout::contiguous(64, 0x4000).unwrap();
    let mut t = transport();
    let mut init = DeviceInit::begin(&mut t, 10).unwrap();
    init.negotiate(VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(
        init.setup_queue(0, &layout, Some(9)),
        Err(InitError::VectorNotAllocated {
            queue: Some(0),
            vector: 9,
            read_back: VIRTIO_MSI_NO_VECTOR
        })
    );
    assert_eq!(
        init.finish(),
        Err(InitError::WrongStage),
        "no DRIVER_OK after a failure"
    );
    assert_ne!(last(&t) & STATUS_FAILED, 0);
    assert!(t.status_writes.iter().all(|s| s & STATUS_DRIVER_OK == 0));

    let mut t = transport();
    let mut init = DeviceInit::begin(&mut t, 10).unwrap();
    init.negotiate(VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(
        init.set_config_vector(7),
        Err(InitError::VectorNotAllocated {
            queue: None,
            vector: 7,
            read_back: VIRTIO_MSI_NO_VECTOR
        })
    );

    // Queue too large, queue out of range, queue unavailable.
    let big = QueueLayout::contiguous(512, 0x4000).unwrap();
    for (queue, layout, max, want) in [
        (
            0,
            big,
            256,
            InitError::QueueTooLarge {
                queue: 0,
                size: 512,
                max: 256,
            },
        ),
        (2, layout, 256, InitError::QueueUnavailable { queue: 2 }),
        (1, layout, 0, InitError::QueueUnavailable { queue: 1 }),
    ] {
        let mut t = FakeTransport {
            max_size: max,
            ..transport()
        };
        let mut init = DeviceInit::begin(&mut t, 10).unwrap();
        init.negotiate(VIRTIO_F_VERSION_1).unwrap();
        assert_eq!(init.setup_queue(queue, &layout, None), Err(want));
        assert_ne!(last(&t) & STATUS_FAILED, 0);
    }

    // Out of order: a queue before features.
    let mut t = transport();
    let mut init = DeviceInit::begin(&mut t, 10).unwrap();
    assert_eq!(
        init.setup_queue(0, &layout, None),
        Err(InitError::WrongStage)
    );
}

#[test]
fn reset_waits_for_zero_with_a_bound() {
    let mut t = FakeTransport {
        reset_stuck_for: 3,
        ..transport()
    };
    reset_device(&mut t, 5).unwrap();
    assert_eq!(t.delays, 3);

    let mut t = FakeTransport {
        reset_stuck_for: 100,
        ..transport()
    };
    assert_eq!(
        reset_device(&mut t, 5),
        Err(InitError::ResetTimeout {
            status: STATUS_DRIVER_OK
        })
    );
    assert_eq!(t.delays, 5);
    assert!(DeviceInit::begin(&mut t, 5).is_err());
}

/// One step of the random sequences below.
#[derive(Clone, Debug)]
enum Op {
    /// Add a chain of this many readable and writable segments.
    Add(u8, u8),
    /// The device completes the oldest outstanding chain, writing this fraction of its bytes.
    Complete(u8),
    /// The device completes the newest outstanding chain (out of order).
    CompleteNewest,
    /// The device writes a used element with this id and length.
    BadElem(u32, u32),
    /// The device writes this used index.
    BadIdx(u16),
    /// The device writes this avail_event / used flags.
    Scribble(u16),
    Notify,
    Disable,
    Enable,
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4_u8, 0..4_u8).prop_map(|(r, w)| Op::Add(r, w)),
        6 => (0..=4_u8).prop_map(Op::Complete),
        2 => Just(Op::CompleteNewest),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(i, l)| Op::BadElem(i % 20, l % 40)),
        1 => any::<u16>().prop_map(Op::BadIdx),
        1 => any::<u16>().prop_map(Op::Scribble),
        1 => Just(Op::Notify),
        1 => Just(Op::Disable),
        1 => Just(Op::Enable),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the device does: no panic; while the queue is healthy the free count is the
    /// size minus the descriptors of the chains in flight; once broken every call says so;
    /// honest completions return the right token and length.
    #[test]
    fn random_sequences_never_panic_and_keep_counts(event_idx: bool, ops in prop::collection::vec(op(), 1..120)) {
        const SIZE: u16 = 8;
        let mut q = queue::<u32>(SIZE, event_idx);
        let mut dev = FakeDevice::default();
        // Outstanding chains as the device sees them: (head, descriptors, writable, token).
        let mut outstanding: Vec<(u16, u16, u32, u32)> = Vec::new();
        let mut descs_in_flight = 0_u16;
        let mut next_token = 0_u32;
        for op in ops {
            let broken_before = q.is_broken();
            match op {
                Op::Add(r, w) => {
                    let readable = vec![Segment::new(0x1000, 16); r.into()];
                    let writable = vec![Segment::new(0x2000, 32); w.into()];
                    let token = next_token;
                    next_token += 1;
                    match q.add(&readable, &writable, token) {
                        Ok(_) => {
                            let n = u16::from(r + w);
                            descs_in_flight += n;
                            for (head, descs) in dev.take_avail(&q) {
                                prop_assert_eq!(descs.len(), usize::from(n));
                                outstanding.push((head, n, 32 * u32::from(w), token));
                            }
                        }
                        Err(Error::EmptyChain) => prop_assert_eq!(r + w, 0),
                        Err(Error::QueueFull { .. }) => prop_assert!(u16::from(r + w) > SIZE - descs_in_flight),
                        Err(Error::Broken) => prop_assert!(broken_before),
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                }
                Op::Complete(_) | Op::CompleteNewest if outstanding.is_empty() || broken_before => {}
                Op::Complete(_) | Op::CompleteNewest => {
                    let (index, fraction) = match op {
                        Op::Complete(f) => (0, u32::from(f)),
                        _ => (outstanding.len() - 1, 4),
                    };
                    let (head, n, writable, token) = outstanding.remove(index);
                    let len = writable * fraction / 4;
                    dev.complete(&mut q, head.into(), len);
                    prop_assert_eq!(q.pop_used(), Ok(Some((token, len))));
                    descs_in_flight -= n;
                }
                Op::BadElem(id, len) => {
                    dev.complete(&mut q, id, len);
                    let honest = outstanding.iter().position(|o| u32::from(o.0) == id && len <= o.2);
                    match q.pop_used() {
                        Ok(Some((token, got))) => {
                            let i = honest.unwrap();
                            prop_assert_eq!((token, got), (outstanding[i].3, len));
                            descs_in_flight -= outstanding[i].1;
                            outstanding.remove(i);
                        }
                        Ok(None) => prop_assert!(false, "a published element was not seen"),
                        Err(_) => prop_assert!(honest.is_none() || broken_before),
                    }
                }
                Op::BadIdx(v) => {
                    // Every completion so far was popped, so the driver stands at the device's
                    // index; anything past the chains in flight is a lie.
                    let in_flight = u16::try_from(outstanding.len()).unwrap();
                    let ahead = in_flight + 1 + v % (u16::MAX - in_flight);
                    let idx = dev.used_idx.wrapping_add(ahead);
                    let used_idx = q.layout().used_idx();
                    q.memory_mut().write_u16(used_idx, idx);
                    let result = q.has_used();
                    if broken_before {
                        prop_assert_eq!(result, Err(Error::Broken));
                    } else {
                        prop_assert!(matches!(result, Err(Error::BadUsedIndex { .. })), "{:?}", result);
                    }
                }
                Op::Scribble(v) => {
                    let (event, flags) = (q.layout().avail_event(), q.layout().used_flags());
                    q.memory_mut().write_u16(event, v);
                    q.memory_mut().write_u16(flags, v);
                }
                Op::Notify => { let _ = q.should_notify(); }
                Op::Disable => q.disable_callbacks(),
                Op::Enable => { let _ = q.enable_callbacks(); }
                Op::Reset => {
                    let mut tokens = q.reset();
                    tokens.sort_unstable();
                    let mut want: Vec<u32> = outstanding.iter().map(|o| o.3).collect();
                    want.sort_unstable();
                    if !broken_before {
                        prop_assert_eq!(tokens, want);
                    }
                    outstanding.clear();
                    descs_in_flight = 0;
                    dev = FakeDevice::default();
                }
            }
            if q.is_broken() {
                prop_assert_eq!(q.pop_used(), Err(Error::Broken));
                prop_assert_eq!(q.add(&[Segment::new(1, 1)], &[], 0), Err(Error::Broken));
            } else {
                prop_assert_eq!(q.num_free(), SIZE - descs_in_flight);
                prop_assert_eq!(usize::from(q.in_flight()), outstanding.len());
            }
        }
        // Whatever happened, a reset gives back a full, healthy queue.
        q.reset();
        prop_assert_eq!(q.num_free(), SIZE);
        prop_assert!(!q.is_broken());
    }
}
