//! The stream header, the limits both ends enforce, and the little-endian readers the decoder
//! parses with (none of which can panic on short input).

use crate::error::StreamError;

/// First eight bytes of every migration stream.
pub const MAGIC: [u8; 8] = *b"LULLMIGR";

/// The stream layout this crate writes and reads; bump on any incompatible change.
/// 1: pre-copy and post-copy of guest RAM, vCPU, VM, serial and ACPI state.
/// 2: the virtio-mmio devices' state too (`DeviceState` "virtio"), which a version-1 reader
///    would refuse as an unknown device, and a version-1 writer never sends (its guests had
///    none: it refused to migrate them).
pub const FORMAT_VERSION: u32 = 2;

/// Size of the stream header: magic, version, kind, page size, vCPU count, memory size, CRC.
pub const HEADER_LEN: usize = 36;

/// Bytes a frame adds around its payload: tag (1), length (4), CRC-32 (4).
pub const FRAME_OVERHEAD: usize = 9;

/// Bytes before a frame's payload: tag and length.
pub(crate) const FRAME_PREFIX_LEN: usize = 5;

/// Smallest and largest guest page size a stream may announce (4 KiB pages to 2 MiB huge pages).
pub const MIN_PAGE_SIZE: u32 = 4096;
pub const MAX_PAGE_SIZE: u32 = 2 << 20;

/// Which direction a stream flows.
///
/// The source sends a [`StreamKind::Migration`] stream. In post-copy the destination sends a
/// [`StreamKind::PageRequests`] stream back (its header echoes the source's), carrying
/// `PageRequest` frames for pages the running guest faulted on. A decoder is told which kind it
/// reads, so two crossed sockets are refused at the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Migration,
    PageRequests,
}

impl StreamKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            Self::Migration => 0,
            Self::PageRequests => 1,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Migration),
            1 => Some(Self::PageRequests),
            _ => None,
        }
    }
}

impl core::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Migration => "migration (source to destination)",
            Self::PageRequests => "page-request (destination to source)",
        })
    }
}

/// What the header says about the source VM: enough for the destination to size guest memory
/// and create vCPUs before any page or state arrives, and to range-check every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceInfo {
    pub kind: StreamKind,
    /// Guest page size in bytes: a power of two from [`MIN_PAGE_SIZE`] to [`MAX_PAGE_SIZE`].
    pub page_size: u32,
    /// vCPUs of the source VM; `VcpuState` indexes are below it, and each comes exactly once.
    pub vcpu_count: u32,
    /// Guest memory size in bytes, a non-zero multiple of `page_size`. Every guest page frame
    /// number (gfn) in the stream is below `memory_bytes / page_size`.
    pub memory_bytes: u64,
}

impl SourceInfo {
    /// Guest pages: one more than the largest gfn a frame may name.
    pub fn pages(&self) -> u64 {
        self.memory_bytes
            .checked_div(u64::from(self.page_size))
            .unwrap_or(0)
    }

    /// Checks the fields against the format and `limits` (both ends run this).
    pub fn validate(&self, limits: &Limits) -> Result<(), StreamError> {
        let page_size = self.page_size;
        if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(StreamError::BadPageSize { page_size });
        }
        if self.memory_bytes == 0 || !self.memory_bytes.is_multiple_of(u64::from(page_size)) {
            return Err(StreamError::BadMemorySize {
                memory_bytes: self.memory_bytes,
                page_size,
            });
        }
        if self.vcpu_count == 0 || self.vcpu_count > limits.max_vcpus {
            return Err(StreamError::BadVcpuCount {
                vcpu_count: self.vcpu_count,
                max: limits.max_vcpus,
            });
        }
        Ok(())
    }

    /// The 36-byte header for this source.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut header = [0u8; HEADER_LEN];
        let mut writer = SliceWriter::new(&mut header);
        writer.put(&MAGIC);
        writer.put(&FORMAT_VERSION.to_le_bytes());
        writer.put(&self.kind.code().to_le_bytes());
        writer.put(&self.page_size.to_le_bytes());
        writer.put(&self.vcpu_count.to_le_bytes());
        writer.put(&self.memory_bytes.to_le_bytes());
        let crc = crc32fast::hash(writer.written());
        writer.put(&crc.to_le_bytes());
        header
    }
}

/// Checks as much of a header as has arrived, so a peer that is not a lull-vmm of this version
/// is refused after its first bytes rather than after a whole header.
pub(crate) fn check_header_prefix(prefix: &[u8]) -> Result<(), StreamError> {
    let magic_bytes = prefix.len().min(MAGIC.len());
    if prefix.get(..magic_bytes) != MAGIC.get(..magic_bytes) {
        return Err(StreamError::BadMagic);
    }
    if let Some(found) = Reader::new(prefix.get(MAGIC.len()..).unwrap_or(&[])).u32() {
        if found != 0 && found < FORMAT_VERSION {
            return Err(StreamError::OlderVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
        if found != FORMAT_VERSION {
            return Err(StreamError::UnsupportedVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
    }
    Ok(())
}

/// Parses and checks a whole header: magic, version, CRC, then the fields. Returns the source
/// info and the header's CRC (the first link of the stream checksum).
pub(crate) fn decode_header(
    header: &[u8],
    expected_kind: StreamKind,
    limits: &Limits,
) -> Result<(SourceInfo, u32), StreamError> {
    check_header_prefix(header)?;
    let mut reader = Reader::new(header);
    let truncated = || StreamError::Truncated {
        expected: HEADER_LEN as u64,
        got: header.len() as u64,
    };
    let covered = reader.take(HEADER_LEN - 4).ok_or_else(truncated)?;
    let stored = reader.u32().ok_or_else(truncated)?;
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(StreamError::HeaderChecksum { stored, computed });
    }
    let mut fields = Reader::new(covered.get(12..).unwrap_or(&[]));
    let (Some(kind), Some(page_size), Some(vcpu_count), Some(memory_bytes)) =
        (fields.u32(), fields.u32(), fields.u32(), fields.u64())
    else {
        return Err(truncated());
    };
    let kind = StreamKind::from_code(kind)
        .filter(|kind| *kind == expected_kind)
        .ok_or(StreamError::WrongStreamKind {
            expected: expected_kind,
            found: kind,
        })?;
    let info = SourceInfo {
        kind,
        page_size,
        vcpu_count,
        memory_bytes,
    };
    info.validate(limits)?;
    Ok((info, stored))
}

/// Hard limits on what a stream may contain. The decoder refuses anything beyond them before
/// allocating for it; the encoder refuses to write what a decoder with the same limits would
/// refuse. Both ends must use the same limits (the defaults, unless configured together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload in bytes; the decoder buffers at most one frame, so this also
    /// bounds its memory.
    pub max_frame_len: u32,
    /// Most pages in one `MemoryPages` frame.
    pub max_pages_per_frame: u32,
    /// Longest `DeviceState` name in bytes (UTF-8).
    pub max_name_len: u32,
    /// Longest `Cancel` reason in bytes (UTF-8).
    pub max_reason_len: u32,
    /// Most vCPUs a stream may announce.
    pub max_vcpus: u32,
}

impl Default for Limits {
    /// 4 MiB frames (256 pages of 4 KiB with their markers, or a 2 MiB huge page, or a device
    /// blob far larger than any lull-vmm device's state), 64-byte names, 4 KiB reasons, and
    /// 4096 vCPUs (KVM's own maximum).
    fn default() -> Self {
        Self {
            max_frame_len: 4 << 20,
            max_pages_per_frame: 256,
            max_name_len: 64,
            max_reason_len: 4096,
            max_vcpus: 4096,
        }
    }
}

/// Little-endian reads from a byte slice; each returns `None` when the bytes run out.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(count)?;
        self.rest = rest;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (taken, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*taken)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[byte]| byte)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Everything not read yet, without consuming it.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Everything not read yet, consumed.
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }
}

/// Sequential writes into a fixed array whose size the caller got right (the header).
struct SliceWriter<'a> {
    bytes: &'a mut [u8],
    position: usize,
}

impl<'a> SliceWriter<'a> {
    fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn put(&mut self, data: &[u8]) {
        let end = self.position.saturating_add(data.len());
        if let Some(target) = self.bytes.get_mut(self.position..end) {
            target.copy_from_slice(data);
            self.position = end;
        }
    }

    fn written(&self) -> &[u8] {
        self.bytes.get(..self.position).unwrap_or(&[])
    }
}
