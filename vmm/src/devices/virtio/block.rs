//! virtio-blk (virtio 1.2 §5.2) on a raw image file: one request queue, requests served
//! synchronously by the device's worker thread.
//!
//! Requests: IN, OUT, FLUSH (fdatasync), GET_ID, DISCARD (a hole is punched) and WRITE_ZEROES
//! (zeroed in place, or a hole when the driver allows unmapping). A read-only disk offers
//! VIRTIO_BLK_F_RO and answers every write-type request with IOERR, leaving the file alone.
//! A request outside the disk or not a whole number of sectors is answered IOERR; a malformed
//! chain (no header, no status byte, too many segments or bytes) is a protocol violation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::vstate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::queue::{add_used, pop_chain, split_last_byte, Chain, ChainError, Reader, Writer};
use super::sys;

/// Sector size of the virtio-blk protocol (and the advertised logical block size).
pub const SECTOR_BYTES: u64 = 512;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments in one request (VIRTIO_BLK_F_SEG_MAX).
pub const SEG_MAX: u32 = 128;
/// Largest data segment (VIRTIO_BLK_F_SIZE_MAX).
pub const SIZE_MAX: u32 = 128 << 10;
/// Largest request chain: header, SEG_MAX full segments, status.
const MAX_CHAIN_BYTES: u64 = 16 + SEG_MAX as u64 * SIZE_MAX as u64 + 1;
/// DISCARD / WRITE_ZEROES limits: one segment of at most this many sectors.
const MAX_ZEROES_SECTORS: u32 = 1 << 21;
/// Data moves through this much host memory at a time.
const CHUNK_BYTES: usize = 128 << 10;
/// Bytes of the configuration space (`struct virtio_blk_config` up to write_zeroes_may_unmap).
const CONFIG_BYTES: usize = 60;

/// A virtio-blk backend.
pub struct Block {
    file: File,
    path: PathBuf,
    readonly: bool,
    capacity_sectors: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    chunk: Vec<u8>,
    /// Requests completed (any status), for tests and diagnostics.
    pub completed: u64,
    /// Test hook: `LULL_VMM_BLK_DELAY_MS=N` makes every request take N ms more (a slow disk),
    /// so a test can pause or snapshot with requests still queued. Read when the disk opens.
    test_delay: Option<std::time::Duration>,
}

/// Saved form: which file (reopened on restore) and what the guest was told about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub path: PathBuf,
    pub readonly: bool,
    pub capacity_sectors: u64,
}

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("--disk path={path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("--disk path={path}: cannot write it back (fdatasync): {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("--disk path={path}: is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("--disk path={path}: is {found} sectors now but {expected} in the snapshot; the guest would see another disk")]
    SizeChanged {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
}

impl Block {
    /// Opens `path` (read-only if asked: then the file is never opened for writing).
    pub fn open(path: &Path, readonly: bool) -> Result<Self, BlockError> {
        let open_error = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(open_error)?;
        let metadata = file.metadata().map_err(open_error)?;
        if !metadata.is_file() {
            return Err(BlockError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let serial = format!("lull{:x}-{:x}", metadata.dev(), metadata.ino());
        let length = serial.len().min(id.len());
        id[..length].copy_from_slice(&serial.as_bytes()[..length]);
        Ok(Self {
            file,
            path,
            readonly,
            capacity_sectors: metadata.len() / SECTOR_BYTES,
            id,
            chunk: vec![0; CHUNK_BYTES],
            completed: 0,
            test_delay: std::env::var("LULL_VMM_BLK_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(std::time::Duration::from_millis),
        })
    }

    /// Makes every write the guest was answered for durable in the file (fdatasync), so that
    /// another host's lull-vmm opening the same image (a migration destination) reads it.
    pub fn sync(&self) -> Result<(), BlockError> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| BlockError::Sync {
            path: self.path.clone(),
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    pub fn device_id(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    pub fn features(&self) -> u64 {
        let mut features = (1u64 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_DISCARD)
            | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        if self.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    /// `struct virtio_blk_config`, little-endian.
    pub fn config(&self) -> Vec<u8> {
        let mut config = vec![0u8; CONFIG_BYTES];
        let mut put = |offset: usize, bytes: &[u8]| {
            config[offset..offset + bytes.len()].copy_from_slice(bytes)
        };
        put(0, &self.capacity_sectors.to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_BYTES as u32).to_le_bytes());
        put(36, &MAX_ZEROES_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &1u32.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_ZEROES_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        config
    }

    pub fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    /// Serves every available request of the request queue, or stops after the one in
    /// progress once `preempt` is set (a pause waits; the rest stay available in the ring,
    /// with notifications off, for the resume to serve); whether any was completed.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        memory: &GuestMemoryMmap,
        preempt: &AtomicBool,
    ) -> Result<bool, ChainError> {
        let ring = |e: virtio_queue::Error| ChainError::Ring(e.to_string());
        let mut used = false;
        loop {
            queue.disable_notification(memory).map_err(ring)?;
            while let Some(chain) = pop_chain(queue, memory, MAX_CHAIN_BYTES)? {
                if let Some(delay) = self.test_delay {
                    std::thread::sleep(delay);
                }
                let written = self.execute(&chain, memory)?;
                add_used(queue, memory, chain.head, written)?;
                self.completed += 1;
                used = true;
                if preempt.load(Ordering::Acquire) {
                    return Ok(used);
                }
            }
            if !queue.enable_notification(memory).map_err(ring)? {
                return Ok(used);
            }
        }
    }

    /// Executes one request; returns the bytes written into the chain (status included).
    fn execute(&mut self, chain: &Chain, memory: &GuestMemoryMmap) -> Result<u32, ChainError> {
        let layout = |what| ChainError::Layout {
            head: chain.head,
            what,
        };
        if chain.readable.len() + chain.writable.len() > SEG_MAX as usize + 2 {
            return Err(layout("more data segments than seg_max"));
        }
        let mut reader = Reader::new(memory, &chain.readable);
        let mut header = [0u8; 16];
        if !reader.read_exact(&mut header) {
            return Err(layout(
                "no 16-byte request header in device-readable buffers",
            ));
        }
        let (data, status_at) =
            split_last_byte(&chain.writable).ok_or(layout("no device-writable status byte"))?;
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let mut writer = Writer::new(memory, &data);
        let status = match kind {
            VIRTIO_BLK_T_IN => self.read(sector, &mut writer),
            VIRTIO_BLK_T_OUT => self.write(sector, &mut reader),
            VIRTIO_BLK_T_FLUSH => self.flush(),
            VIRTIO_BLK_T_GET_ID => {
                let length = writer.remaining().min(self.id.len() as u64) as usize;
                if writer.write_all(&self.id[..length]) {
                    VIRTIO_BLK_S_OK
                } else {
                    VIRTIO_BLK_S_IOERR
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.zeroes(kind == VIRTIO_BLK_T_DISCARD, &mut reader)
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        };
        memory
            .write_obj(status as u8, status_at)
            .map_err(|e| ChainError::Ring(e.to_string()))?;
        Ok(writer.written() as u32 + 1)
    }

    /// Byte range of a request of `bytes` at `sector`, if whole sectors inside the disk.
    fn range(&self, sector: u64, bytes: u64) -> Option<u64> {
        if !bytes.is_multiple_of(SECTOR_BYTES) {
            return None;
        }
        let end = sector.checked_add(bytes / SECTOR_BYTES)?;
        // Lazily: `sector * 512` overflows for the sectors this refuses.
        (end <= self.capacity_sectors).then(|| sector * SECTOR_BYTES)
    }

    fn read(&mut self, sector: u64, writer: &mut Writer) -> u32 {
        let bytes = writer.remaining();
        let Some(mut offset) = self.range(sector, bytes) else {
            return VIRTIO_BLK_S_IOERR;
        };
        let mut left = bytes;
        while left > 0 {
            let take = left.min(CHUNK_BYTES as u64) as usize;
            let chunk = &mut self.chunk[..take];
            if self.file.read_exact_at(chunk, offset).is_err() || !writer.write_all(chunk) {
                return VIRTIO_BLK_S_IOERR;
            }
            offset += take as u64;
            left -= take as u64;
        }
        VIRTIO_BLK_S_OK
    }

    fn write(&mut self, sector: u64, reader: &mut Reader) -> u32 {
        if self.readonly {
            return VIRTIO_BLK_S_IOERR;
        }
        let bytes = reader.remaining();
        let Some(mut offset) = self.range(sector, bytes) else {
            return VIRTIO_BLK_S_IOERR;
        };
        let mut left = bytes;
        while left > 0 {
            let take = left.min(CHUNK_BYTES as u64) as usize;
            let chunk = &mut self.chunk[..take];
            if !reader.read_exact(chunk) || self.file.write_all_at(chunk, offset).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            offset += take as u64;
            left -= take as u64;
        }
        VIRTIO_BLK_S_OK
    }

    fn flush(&self) -> u32 {
        if self.readonly || self.file.sync_data().is_ok() {
            VIRTIO_BLK_S_OK
        } else {
            VIRTIO_BLK_S_IOERR
        }
    }

    /// DISCARD (`discard`) or WRITE_ZEROES: one 16-byte segment
    /// {sector: u64, num_sectors: u32, flags: u32}.
    fn zeroes(&mut self, discard: bool, reader: &mut Reader) -> u32 {
        if self.readonly {
            return VIRTIO_BLK_S_IOERR;
        }
        if reader.remaining() != 16 {
            return VIRTIO_BLK_S_UNSUPP; // more than max_*_seg segments
        }
        let mut segment = [0u8; 16];
        if !reader.read_exact(&mut segment) {
            return VIRTIO_BLK_S_IOERR;
        }
        let sector = u64::from_le_bytes(segment[0..8].try_into().expect("8 bytes"));
        let sectors = u32::from_le_bytes(segment[8..12].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(segment[12..16].try_into().expect("4 bytes"));
        let known_flags = if discard {
            0
        } else {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        };
        if flags & !known_flags != 0 || sectors > MAX_ZEROES_SECTORS {
            return VIRTIO_BLK_S_UNSUPP;
        }
        let bytes = u64::from(sectors) * SECTOR_BYTES;
        let Some(offset) = self.range(sector, bytes) else {
            return VIRTIO_BLK_S_IOERR;
        };
        if bytes == 0 {
            return VIRTIO_BLK_S_OK;
        }
        let punch = discard || flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        match sys::fallocate_zero(&self.file, offset, bytes, punch) {
            Ok(()) => VIRTIO_BLK_S_OK,
            // A discard is a hint: a file system without hole punching ignores it.
            Err(_) if discard => VIRTIO_BLK_S_OK,
            Err(_) => self.write_zero_bytes(offset, bytes),
        }
    }

    fn write_zero_bytes(&mut self, mut offset: u64, bytes: u64) -> u32 {
        self.chunk.fill(0);
        let mut left = bytes;
        while left > 0 {
            let take = left.min(CHUNK_BYTES as u64) as usize;
            if self.file.write_all_at(&self.chunk[..take], offset).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            offset += take as u64;
            left -= take as u64;
        }
        VIRTIO_BLK_S_OK
    }

    pub fn save(&self) -> BlockState {
        BlockState {
            path: self.path.clone(),
            readonly: self.readonly,
            capacity_sectors: self.capacity_sectors,
        }
    }

    /// Reopens the saved disk; refuses one whose size changed since the snapshot.
    pub fn restore(state: &BlockState) -> Result<Self, BlockError> {
        let block = Self::open(&state.path, state.readonly)?;
        if block.capacity_sectors != state.capacity_sectors {
            return Err(BlockError::SizeChanged {
                path: state.path.clone(),
                found: block.capacity_sectors,
                expected: state.capacity_sectors,
            });
        }
        Ok(block)
    }
}
