//! The data path without QEMU: this test is the vhost-user front-end (the vhost crate's
//! `Frontend`) and the guest driver at once. It shares memfd memory with the back-end, lays out
//! both split virtqueues by hand, and checks the requests' answers, the event queue's
//! completions driven from the control socket, and that bad chains do not stop the device.

mod common;

use std::time::{Duration, Instant};

use common::{backend, connect, log_of, wait_for, Control, TempDir};
use lull_virtio_gpio::{
    irq_type, Message, IRQ_STATUS_VALID, MSG_GET_NAMES, MSG_GET_VALUE, MSG_IRQ_TYPE,
    MSG_SET_DIRECTION, MSG_SET_VALUE, STATUS_ERR, STATUS_OK, VIRTIO_F_VERSION_1, VIRTIO_GPIO_F_IRQ,
};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A split virtqueue the test drives as a guest driver would.
struct Ring {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    kick: EventFd,
    call: EventFd,
}

impl Ring {
    fn new(base: u64) -> Self {
        Self {
            base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QUEUE_SIZE)
    }
    fn used(&self) -> u64 {
        self.base + 0x400
    }

    /// Makes a chain of (address, length, device-writable) available and kicks; its head.
    fn add(&mut self, mem: &GuestMemoryMmap, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in buffers.iter().enumerate() {
            let index = (self.next_desc + i as u16) % QUEUE_SIZE;
            let last = i + 1 == buffers.len();
            let flags = if write { VRING_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VRING_DESC_F_NEXT };
            let next = (index + 1) % QUEUE_SIZE;
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            desc[14..].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&desc, GuestAddress(self.desc() + 16 * u64::from(index)))
                .unwrap();
        }
        self.next_desc = (self.next_desc + buffers.len() as u16) % QUEUE_SIZE;
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        // used_event (read by the back-end under EVENT_IDX): notify from the next used entry.
        let used_event = self.avail() + 4 + 2 * u64::from(QUEUE_SIZE);
        mem.write_obj(self.used_seen, GuestAddress(used_event))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
        self.kick.write(1).unwrap();
        head
    }

    /// Waits for the next used entry: (head, written length).
    fn wait_used(&mut self, mem: &GuestMemoryMmap, what: &str) -> (u16, u32) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let idx: u16 = mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
            if idx != self.used_seen {
                let entry = self.used() + 4 + 8 * u64::from(self.used_seen % QUEUE_SIZE);
                let id: u32 = mem.read_obj(GuestAddress(entry)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(entry + 4)).unwrap();
                self.used_seen = self.used_seen.wrapping_add(1);
                // The back-end signalled the call eventfd for it.
                wait_for(
                    "the used-buffer notification",
                    Duration::from_secs(10),
                    || self.call.read().is_ok(),
                );
                return (id as u16, len);
            }
            assert!(Instant::now() < end, "{what}: no used buffer within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn nothing_used(&self, mem: &GuestMemoryMmap) -> bool {
        let idx: u16 = mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
        idx == self.used_seen
    }
}

/// A request at 0x10000, its response at 0x11000.
fn request(mem: &GuestMemoryMmap, ring: &mut Ring, message: Message, response_len: u32) -> Vec<u8> {
    mem.write_slice(&message.encode(), GuestAddress(0x10000))
        .unwrap();
    mem.write_slice(&vec![0xee; response_len as usize], GuestAddress(0x11000))
        .unwrap();
    let head = ring.add(mem, &[(0x10000, 8, false), (0x11000, response_len, true)]);
    let (used, len) = ring.wait_used(mem, &message.to_string());
    assert_eq!(used, head);
    let mut response = vec![0; len as usize];
    mem.read_slice(&mut response, GuestAddress(0x11000))
        .unwrap();
    response
}

fn msg(kind: u16, gpio: u16, value: u32) -> Message {
    Message { kind, gpio, value }
}

#[test]
fn requests_and_events_through_the_vrings() {
    data_path(false);
}

#[test]
fn requests_and_events_through_the_vrings_with_event_idx() {
    data_path(true);
}

fn data_path(event_idx: bool) {
    let dir = TempDir::new("frontend");
    let mut process = backend(&dir, &["--lines", "amp-enable,button,led0"]);
    let mut control = Control::connect(&dir.join("control.sock"));

    let stream = connect(&dir.join("gpio.sock"));
    let mut frontend = Frontend::from_stream(stream, 2);
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    let wanted =
        VIRTIO_F_VERSION_1 | VIRTIO_GPIO_F_IRQ | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    assert_eq!(features & wanted, wanted, "{features:#x}");
    let wanted = wanted
        | if event_idx {
            VIRTIO_RING_F_EVENT_IDX
        } else {
            0
        };
    assert_eq!(features & wanted, wanted, "{features:#x}");
    frontend.set_features(wanted).unwrap();
    let protocol = frontend.get_protocol_features().unwrap();
    assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
    frontend.set_protocol_features(protocol).unwrap();
    assert_eq!(frontend.get_queue_num().unwrap(), 2);
    let (_, config) = frontend
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0; 8])
        .unwrap();
    // ngpio 3, names "amp-enable\0button\0led0\0" (23 bytes).
    assert_eq!(config, [3, 0, 0, 0, 23, 0, 0, 0]);

    // Guest memory: a memfd both processes map.
    let fd = memfd_create(c"lull-gpio-test", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(MEM_SIZE as u64).unwrap();
    let mapping = MmapRegion::from_file(FileOffset::new(file, 0), MEM_SIZE).unwrap();
    let region = GuestRegionMmap::new(mapping, GuestAddress(0)).unwrap();
    let info = VhostUserMemoryRegionInfo::from_guest_region(&region).unwrap();
    let userspace = info.userspace_addr;
    frontend.set_mem_table(&[info]).unwrap();
    let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();

    let mut rings = [Ring::new(0x1000), Ring::new(0x2000)];
    for (index, ring) in rings.iter().enumerate() {
        frontend.set_vring_num(index, QUEUE_SIZE).unwrap();
        let config = VringConfigData {
            queue_max_size: 256,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: userspace + ring.desc(),
            used_ring_addr: userspace + ring.used(),
            avail_ring_addr: userspace + ring.avail(),
            log_addr: None,
        };
        frontend.set_vring_addr(index, &config).unwrap();
        frontend.set_vring_base(index, 0).unwrap();
        frontend.set_vring_call(index, &ring.call).unwrap();
        frontend.set_vring_kick(index, &ring.kick).unwrap();
        frontend.set_vring_enable(index, true).unwrap();
    }
    let [requests, events] = &mut rings;

    // Names, then the amplifier driven high: value first, then direction.
    let names = request(&mem, requests, msg(MSG_GET_NAMES, 0, 0), 24);
    assert_eq!(names, b"\0amp-enable\0button\0led0\0");
    assert_eq!(
        request(&mem, requests, msg(MSG_SET_VALUE, 0, 1), 2),
        [STATUS_OK, 0]
    );
    assert_eq!(
        request(&mem, requests, msg(MSG_SET_DIRECTION, 0, 1), 2),
        [STATUS_OK, 0]
    );
    assert_eq!(control.send("get amp-enable"), "ok 1");
    // Refused by the device: a line that does not exist, and no room for GET_NAMES.
    assert_eq!(
        request(&mem, requests, msg(MSG_GET_VALUE, 3, 0), 2),
        [STATUS_ERR, 0]
    );
    assert_eq!(
        request(&mem, requests, msg(MSG_GET_NAMES, 0, 0), 2),
        [STATUS_ERR]
    );

    // A malformed request (3 bytes) and a descriptor outside guest memory: answered or
    // returned empty, and the queue goes on.
    let head = requests.add(&mem, &[(0x10000, 3, false), (0x11000, 2, true)]);
    assert_eq!(requests.wait_used(&mem, "short request"), (head, 2));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x11000)).unwrap(),
        STATUS_ERR
    );
    let head = requests.add(&mem, &[(1 << 40, 8, false), (0x11000, 2, true)]);
    assert_eq!(requests.wait_used(&mem, "bad address"), (head, 0));
    let head = requests.add(&mem, &[(0x11000, 2, true), (0x10000, 8, false)]);
    assert_eq!(requests.wait_used(&mem, "writable first"), (head, 0));

    // The button: an input with rising-edge interrupts, unmasked by an event buffer.
    assert_eq!(
        request(&mem, requests, msg(MSG_SET_DIRECTION, 1, 2), 2),
        [STATUS_OK, 0]
    );
    let rising = u32::from(irq_type::EDGE_RISING);
    assert_eq!(
        request(&mem, requests, msg(MSG_IRQ_TYPE, 1, rising), 2),
        [STATUS_OK, 0]
    );
    mem.write_obj(1u16, GuestAddress(0x20000)).unwrap();
    mem.write_obj(0xeeu8, GuestAddress(0x20010)).unwrap();
    let head = events.add(&mem, &[(0x20000, 2, false), (0x20010, 1, true)]);
    wait_for("the event buffer taken", Duration::from_secs(10), || {
        log_of(&dir).contains("line 1 (button) unmasked")
    });
    assert!(events.nothing_used(&mem));
    // Pressing the button completes it, VALID.
    assert_eq!(control.send("set button 1"), "ok");
    assert_eq!(events.wait_used(&mem, "the button's event"), (head, 1));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x20010)).unwrap(),
        IRQ_STATUS_VALID
    );
    // Masked now: release and press again latches the edge, delivered at the next unmask.
    assert_eq!(control.send("pulse button"), "ok");
    let head = events.add(&mem, &[(0x20000, 2, false), (0x20010, 1, true)]);
    assert_eq!(events.wait_used(&mem, "the latched edge"), (head, 1));
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(0x20010)).unwrap(),
        IRQ_STATUS_VALID
    );

    let log = log_of(&dir);
    for expected in [
        "SET_FEATURES",
        "GET_CONFIG offset 0 size 8",
        "SET_MEM_TABLE: 1 region(s)",
        "GET_NAMES gpio 0 value 0: ok (24 bytes)",
        "SET_DIRECTION gpio 0 value 1: ok 0",
        "line 0 (amp-enable) -> 1",
        "GET_VALUE gpio 3 value 0: error",
        "malformed request (3 bytes readable, 2 writable): error",
        "refused: readable descriptor at 0x10000000000",
        "refused: a readable descriptor after a writable one",
        "event line 1 (button): VALID",
    ] {
        assert!(log.contains(expected), "no `{expected}` in the log:\n{log}");
    }

    // The front-end goes away: the back-end exits cleanly.
    drop(frontend);
    let status = process.wait_timeout("the back-end after the disconnect", Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", log_of(&dir));
}

#[test]
fn keep_listening_serves_the_next_front_end() {
    let dir = TempDir::new("keep-listening");
    let mut process = backend(&dir, &["--keep-listening", "--ngpio", "2"]);
    for round in 1..=2 {
        let stream = connect(&dir.join("gpio.sock"));
        let mut frontend = Frontend::from_stream(stream, 2);
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        frontend
            .set_features(features & (VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES))
            .unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        frontend.set_protocol_features(protocol).unwrap();
        let (_, config) = frontend
            .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0; 8])
            .unwrap();
        // --ngpio 2: lines gpio0 and gpio1, "gpio0\0gpio1\0" (12 bytes).
        assert_eq!(config, [2, 0, 0, 0, 12, 0, 0, 0], "round {round}");
        drop(frontend);
        let logged = |n| log_of(&dir).matches("front-end disconnected").count() == n;
        let end = Instant::now() + Duration::from_secs(10);
        while !logged(round) {
            assert!(Instant::now() < end, "round {round}:\n{}", log_of(&dir));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(
        matches!(process.0.try_wait(), Ok(None)),
        "the back-end exited"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(process.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = process.wait_timeout("the back-end after SIGTERM", Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

const PROTOCOL_FEATURES: u64 = 1 << 30;
