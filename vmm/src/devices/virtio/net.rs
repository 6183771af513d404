//! virtio-net (virtio 1.2 §5.1) on a host TAP device: one RX and one TX queue, MAC and link
//! status in the configuration space, no offloads, no mergeable RX buffers.
//!
//! Every packet carries the 12-byte `struct virtio_net_hdr` of VERSION_1 devices; the TAP is
//! opened with the same header size (IFF_VNET_HDR, TUNSETVNETHDRSZ), so headers pass through
//! unchanged (with no offload negotiated they say "no checksum, no GSO"). RX fills one chain
//! per frame (num_buffers = 1); a frame read while the guest has no RX buffer is held until it
//! posts one (the RX queue notification), so the TAP is not read meanwhile. A frame larger than
//! the chain it lands in is dropped and the chain returned empty.

use std::fs::File;
use std::io::{self, Read, Write};

use crate::vstate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_queue::{Queue, QueueT};

use super::queue::{add_used, pop_chain, ChainError, Reader, Writer};
use super::sys;

/// `struct virtio_net_hdr` with num_buffers (always present with VERSION_1).
pub const VNET_HEADER_BYTES: usize = 12;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Largest frame a TAP hands over or takes (64 KiB IP packet + Ethernet/VLAN header).
const MAX_FRAME_BYTES: usize = 65_535 + 18;
/// Largest TX chain: header and frame.
const MAX_TX_CHAIN_BYTES: u64 = (VNET_HEADER_BYTES + MAX_FRAME_BYTES) as u64;
/// Largest RX chain accepted (the driver's buffers; only the first frame-size bytes are used).
const MAX_RX_CHAIN_BYTES: u64 = 1 << 20;

/// Where frames go: a TAP in the VMM, a buffer in tests.
pub trait FrameIo: Read + Write + Send {
    /// The descriptor the worker waits on for readability (None: never readable by event).
    fn raw_fd(&self) -> Option<std::os::fd::RawFd>;
}

impl FrameIo for File {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

/// The TAP's place while another process has it (a migration source after the hand-over):
/// nothing to read, and what the guest sends is dropped (its vCPUs are paused then anyway).
struct Detached;

impl Read for Detached {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Detached {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the TAP was handed over",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FrameIo for Detached {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// How long [`Net::reattach`] waits for another process to let go of the TAP.
const REATTACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Counters of what the device did (for tests and diagnostics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames dropped: larger than the guest's RX buffer, or the TAP refused them.
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// A virtio-net backend.
pub struct Net {
    io: Box<dyn FrameIo>,
    tap: String,
    mac: [u8; 6],
    frame: Vec<u8>,
    /// Length of a frame in `frame` waiting for an RX buffer.
    held: Option<usize>,
    tx: Vec<u8>,
    /// The TAP was handed over ([`Net::detach`]).
    detached: bool,
    pub counters: NetCounters,
}

/// Saved form: which TAP (reopened on restore), the MAC, and a held frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub tap: String,
    pub mac: [u8; 6],
    pub held_frame: Option<Vec<u8>>,
}

/// Why a TAP could not be used.
#[derive(Debug, thiserror::Error)]
#[error("--net tap={tap}: cannot open the TAP device: {source}")]
pub struct NetError {
    pub tap: String,
    pub source: io::Error,
}

/// A locally administered unicast MAC derived from the TAP name (stable across runs).
pub fn default_mac(tap: &str) -> [u8; 6] {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tap.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    let h = hash.to_be_bytes();
    [0x06, 0x4c, h[0], h[1], h[2], h[3]]
}

impl Net {
    /// Opens the TAP device `tap`.
    pub fn open(tap: &str, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let file = sys::open_tap(tap, VNET_HEADER_BYTES as i32).map_err(|source| NetError {
            tap: tap.to_string(),
            source,
        })?;
        Ok(Self::with_io(
            Box::new(file),
            tap,
            mac.unwrap_or_else(|| default_mac(tap)),
        ))
    }

    /// A device on any frame source/sink (tests).
    pub fn with_io(io: Box<dyn FrameIo>, tap: &str, mac: [u8; 6]) -> Self {
        Self {
            io,
            tap: tap.to_string(),
            mac,
            frame: vec![0; VNET_HEADER_BYTES + MAX_FRAME_BYTES],
            held: None,
            tx: Vec::with_capacity(VNET_HEADER_BYTES + MAX_FRAME_BYTES),
            detached: false,
            counters: NetCounters::default(),
        }
    }

    pub fn tap(&self) -> &str {
        &self.tap
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn host_fd(&self) -> Option<std::os::fd::RawFd> {
        self.io.raw_fd()
    }

    pub fn device_id(&self) -> u32 {
        VIRTIO_ID_NET
    }

    pub fn features(&self) -> u64 {
        (1u64 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS)
    }

    /// `struct virtio_net_config`: mac, status, max_virtqueue_pairs, mtu.
    pub fn config(&self) -> Vec<u8> {
        let mut config = vec![0u8; 12];
        config[0..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config
    }

    pub fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    /// A device reset drops a held frame (the guest's buffers are gone).
    pub fn reset(&mut self) {
        self.held = None;
    }

    /// Sends every available TX chain to the TAP.
    pub fn transmit(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, ChainError> {
        let ring = |e: virtio_queue::Error| ChainError::Ring(e.to_string());
        let mut used = false;
        loop {
            queue.disable_notification(memory).map_err(ring)?;
            while let Some(chain) = pop_chain(queue, memory, MAX_TX_CHAIN_BYTES)? {
                if !chain.writable.is_empty() {
                    return Err(ChainError::Layout {
                        head: chain.head,
                        what: "TX chain has device-writable buffers",
                    });
                }
                let bytes = chain.readable_bytes() as usize;
                if bytes < VNET_HEADER_BYTES {
                    return Err(ChainError::Layout {
                        head: chain.head,
                        what: "TX chain shorter than the virtio-net header",
                    });
                }
                self.tx.resize(bytes, 0);
                if !Reader::new(memory, &chain.readable).read_exact(&mut self.tx) {
                    return Err(ChainError::Ring("TX buffer unreadable".into()));
                }
                // One write is one frame for a TAP. A full TAP queue (EAGAIN) or an error
                // drops the frame, as a real link would.
                match self.io.write(&self.tx) {
                    Ok(_) => self.counters.tx_frames += 1,
                    Err(_) => self.counters.tx_dropped += 1,
                }
                add_used(queue, memory, chain.head, 0)?;
                used = true;
            }
            if !queue.enable_notification(memory).map_err(ring)? {
                return Ok(used);
            }
        }
    }

    /// Moves frames from the TAP into RX chains until the TAP is empty or the guest has no
    /// more buffers (then the frame is held and the RX notification re-enabled).
    pub fn receive(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<bool, ChainError> {
        let ring = |e: virtio_queue::Error| ChainError::Ring(e.to_string());
        let mut used = false;
        queue.disable_notification(memory).map_err(ring)?;
        loop {
            let length = match self.held.take() {
                Some(length) => length,
                None => match self.io.read(&mut self.frame) {
                    Ok(length) if length > VNET_HEADER_BYTES => length,
                    Ok(0) => break,
                    Ok(_) => continue, // a runt: nothing to deliver
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // WouldBlock: the TAP is empty
                },
            };
            let chain = match pop_chain(queue, memory, MAX_RX_CHAIN_BYTES)? {
                Some(chain) => chain,
                None => {
                    self.held = Some(length);
                    // Ask for a notification when buffers come; if some came meanwhile, go on.
                    if queue.enable_notification(memory).map_err(ring)? {
                        queue.disable_notification(memory).map_err(ring)?;
                        continue;
                    }
                    return Ok(used);
                }
            };
            if !chain.readable.is_empty() {
                return Err(ChainError::Layout {
                    head: chain.head,
                    what: "RX chain has device-readable buffers",
                });
            }
            // num_buffers = 1: the TAP leaves these two bytes alone.
            self.frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = if chain.writable_bytes() >= length as u64 {
                if !Writer::new(memory, &chain.writable).write_all(&self.frame[..length]) {
                    return Err(ChainError::Ring("RX buffer unwritable".into()));
                }
                self.counters.rx_frames += 1;
                length as u32
            } else {
                self.counters.rx_dropped += 1;
                0
            };
            add_used(queue, memory, chain.head, written)?;
            used = true;
        }
        queue.enable_notification(memory).map_err(ring)?;
        Ok(used)
    }

    /// Closes the TAP (a migration source at the final pause: a TAP without IFF_MULTI_QUEUE
    /// takes one file at a time, and the destination opens it next). Frames the kernel still
    /// queued for it are dropped with it; a held frame stays in the saved state.
    pub fn detach(&mut self) {
        self.io = Box::new(Detached);
        self.detached = true;
    }

    /// Whether [`Net::detach`] was called and no [`Net::reattach`] since.
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    /// Opens the TAP again after [`Net::detach`] (the migration failed). Another process
    /// (a destination that is exiting) may still hold it for a moment: busy is retried for
    /// [`REATTACH_TIMEOUT`].
    pub fn reattach(&mut self) -> Result<(), NetError> {
        let deadline = std::time::Instant::now() + REATTACH_TIMEOUT;
        loop {
            match sys::open_tap(&self.tap, VNET_HEADER_BYTES as i32) {
                Ok(file) => {
                    self.io = Box::new(file);
                    self.detached = false;
                    return Ok(());
                }
                Err(source)
                    if source.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(NetError {
                        tap: self.tap.clone(),
                        source,
                    })
                }
            }
        }
    }

    pub fn save(&self) -> NetState {
        NetState {
            tap: self.tap.clone(),
            mac: self.mac,
            held_frame: self.held.map(|length| self.frame[..length].to_vec()),
        }
    }

    pub fn restore(state: &NetState) -> Result<Self, NetError> {
        let mut net = Self::open(&state.tap, Some(state.mac))?;
        net.restore_held(state);
        Ok(net)
    }

    fn restore_held(&mut self, state: &NetState) {
        if let Some(frame) = &state.held_frame {
            let length = frame.len().min(self.frame.len());
            self.frame[..length].copy_from_slice(&frame[..length]);
            self.held = Some(length);
        }
    }

    /// Restore onto a test frame source.
    #[cfg(test)]
    pub fn restore_with_io(state: &NetState, io: Box<dyn FrameIo>) -> Self {
        let mut net = Self::with_io(io, &state.tap, state.mac);
        net.restore_held(state);
        net
    }
}
