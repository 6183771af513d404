//! The frames a stream carries after its header, and their payload encodings.

use crate::error::{FrameType, StreamError};
use crate::format::{Limits, Reader, SourceInfo};

/// Marker byte of a page that is all zeros: nothing else is sent for it.
pub const ZERO_PAGE_MARKER: u8 = 0;
/// Marker byte of a page whose `page_size` bytes follow (after all the markers).
pub const DATA_PAGE_MARKER: u8 = 1;

/// Bytes of a `MemoryPages` payload before its markers: round, first gfn, page count.
pub const PAGE_RUN_HEADER_LEN: usize = 16;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A run of contiguous guest pages sent in dirty round `round` (or after `PostcopySwitch`).
    MemoryPages(PageRun),
    /// The source finished dirty round `round`: `pages_sent` pages went out in it, and about
    /// `pages_left_estimate` are dirty again (the source's convergence measure).
    DirtyRoundEnd {
        round: u32,
        pages_sent: u64,
        pages_left_estimate: u64,
    },
    /// A device's saved state: an opaque `Persist` blob, named so the destination finds the
    /// device it belongs to.
    DeviceState { name: String, bytes: Vec<u8> },
    /// A vCPU's saved state: an opaque `Persist` blob.
    VcpuState { index: u32, bytes: Vec<u8> },
    /// The source is stopped and the destination may run the guest; `pages_left` pages still
    /// follow, pushed in the background or sent in answer to `PageRequest`s.
    PostcopySwitch { pages_left: u64 },
    /// (Page-request stream only.) The destination's guest faulted on `gfn`: send it first.
    PageRequest { gfn: u64 },
    /// The stream is complete: `total_pages` pages (or requests) were sent, and `checksum` is
    /// the stream checksum, which the decoder has already verified.
    End { total_pages: u64, checksum: u32 },
    /// The sender gave up; the receiver discards what it got.
    Cancel { reason: String },
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::MemoryPages(_) => FrameType::MemoryPages,
            Self::DirtyRoundEnd { .. } => FrameType::DirtyRoundEnd,
            Self::DeviceState { .. } => FrameType::DeviceState,
            Self::VcpuState { .. } => FrameType::VcpuState,
            Self::PostcopySwitch { .. } => FrameType::PostcopySwitch,
            Self::PageRequest { .. } => FrameType::PageRequest,
            Self::End { .. } => FrameType::End,
            Self::Cancel { .. } => FrameType::Cancel,
        }
    }
}

/// What a page of a [`PageRun`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page<'a> {
    /// All zeros (sent as a one-byte marker).
    Zero,
    /// The page's bytes, `page_size` of them.
    Data(&'a [u8]),
}

/// Contiguous guest pages `first_gfn..first_gfn + len()`, each either zero or data. The data of
/// the non-zero pages is kept in one buffer, in order, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRun {
    round: u32,
    first_gfn: u64,
    page_size: u32,
    markers: Vec<u8>,
    data: Vec<u8>,
}

impl PageRun {
    /// The run that `memory` (whole pages, starting at guest page `first_gfn`) is sent as: the
    /// all-zero pages become markers.
    pub fn from_memory(
        round: u32,
        first_gfn: u64,
        page_size: u32,
        memory: &[u8],
    ) -> Result<Self, StreamError> {
        let markers = page_markers(page_size, memory)?;
        let mut data = Vec::new();
        for (page, marker) in memory.chunks(page_size_usize(page_size)).zip(&markers) {
            if *marker == DATA_PAGE_MARKER {
                data.extend_from_slice(page);
            }
        }
        Ok(Self {
            round,
            first_gfn,
            page_size,
            markers,
            data,
        })
    }

    pub fn round(&self) -> u32 {
        self.round
    }

    pub fn first_gfn(&self) -> u64 {
        self.first_gfn
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Pages in the run.
    pub fn len(&self) -> usize {
        self.markers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.markers.is_empty()
    }

    /// How many of the pages are all zeros.
    pub fn zero_pages(&self) -> usize {
        self.markers
            .iter()
            .filter(|marker| **marker == ZERO_PAGE_MARKER)
            .count()
    }

    /// Each page with its guest page frame number.
    pub fn pages(&self) -> impl Iterator<Item = (u64, Page<'_>)> + '_ {
        let mut data = self.data.chunks(page_size_usize(self.page_size));
        (self.first_gfn..).zip(self.markers.iter().map(move |marker| {
            if *marker == ZERO_PAGE_MARKER {
                Page::Zero
            } else {
                // The decoder and `from_memory` keep one data chunk per data marker.
                data.next().map_or(Page::Zero, Page::Data)
            }
        }))
    }
}

fn page_size_usize(page_size: u32) -> usize {
    usize::try_from(page_size).unwrap_or(usize::MAX).max(1)
}

/// One marker per page of `memory`; refuses memory that is not whole pages.
pub(crate) fn page_markers(page_size: u32, memory: &[u8]) -> Result<Vec<u8>, StreamError> {
    let size = page_size_usize(page_size);
    if page_size == 0 || !memory.len().is_multiple_of(size) {
        return Err(StreamError::PagesNotWhole {
            len: memory.len() as u64,
            page_size,
        });
    }
    Ok(memory
        .chunks_exact(size)
        .map(|page| {
            if is_zero(page) {
                ZERO_PAGE_MARKER
            } else {
                DATA_PAGE_MARKER
            }
        })
        .collect())
}

/// Whether every byte is zero, sixteen at a time (the source runs this over every page).
fn is_zero(bytes: &[u8]) -> bool {
    let (chunks, rest) = bytes.as_chunks::<16>();
    chunks.iter().all(|chunk| u128::from_ne_bytes(*chunk) == 0) && rest.iter().all(|b| *b == 0)
}

/// Checks a run of `count` pages from `first_gfn` against the source and the limits.
pub(crate) fn check_page_run(
    info: &SourceInfo,
    limits: &Limits,
    first_gfn: u64,
    count: u64,
) -> Result<(), StreamError> {
    if count > u64::from(limits.max_pages_per_frame) {
        return Err(StreamError::TooManyPages {
            count,
            max: limits.max_pages_per_frame,
        });
    }
    let pages = info.pages();
    match first_gfn.checked_add(count) {
        Some(end) if end <= pages => Ok(()),
        _ => Err(StreamError::PageOutOfRange {
            gfn: first_gfn.max(pages),
            pages,
        }),
    }
}

pub(crate) fn check_gfn(info: &SourceInfo, gfn: u64) -> Result<(), StreamError> {
    let pages = info.pages();
    if gfn < pages {
        Ok(())
    } else {
        Err(StreamError::PageOutOfRange { gfn, pages })
    }
}

pub(crate) fn check_vcpu(info: &SourceInfo, index: u32) -> Result<(), StreamError> {
    if index < info.vcpu_count {
        Ok(())
    } else {
        Err(StreamError::VcpuOutOfRange {
            index,
            vcpu_count: info.vcpu_count,
        })
    }
}

pub(crate) fn check_text(what: &'static str, text: &[u8], max: u32) -> Result<(), StreamError> {
    if text.len() as u64 > u64::from(max) {
        return Err(StreamError::NameTooLong {
            what,
            len: text.len() as u64,
            max,
        });
    }
    Ok(())
}

pub(crate) const DEVICE_NAME: &str = "device name";
pub(crate) const CANCEL_REASON: &str = "cancel reason";

/// Decodes the payload of a frame whose CRC has been checked. `frame_index` names it in errors.
pub(crate) fn decode_payload(
    frame_type: FrameType,
    payload: &[u8],
    info: &SourceInfo,
    limits: &Limits,
    frame_index: u64,
) -> Result<Frame, StreamError> {
    let malformed = |reason| StreamError::MalformedFrame {
        frame_index,
        frame_type,
        reason,
    };
    let mut reader = Reader::new(payload);
    let frame = match frame_type {
        FrameType::MemoryPages => {
            let (Some(round), Some(first_gfn), Some(count)) =
                (reader.u32(), reader.u64(), reader.u32())
            else {
                return Err(malformed("shorter than its 16-byte run header"));
            };
            if count == 0 {
                return Err(malformed("a page run holds at least one page"));
            }
            check_page_run(info, limits, first_gfn, u64::from(count))?;
            let markers = usize::try_from(count)
                .ok()
                .and_then(|count| reader.take(count))
                .ok_or_else(|| malformed("shorter than its page markers"))?;
            let mut data_pages: u64 = 0;
            for marker in markers {
                match *marker {
                    ZERO_PAGE_MARKER => {}
                    DATA_PAGE_MARKER => data_pages = data_pages.saturating_add(1),
                    _ => return Err(malformed("a page marker is neither 0 (zero) nor 1 (data)")),
                }
            }
            let data = reader.take_rest();
            if Some(data.len() as u64) != data_pages.checked_mul(u64::from(info.page_size)) {
                return Err(malformed(
                    "its length does not match the data pages its markers announce",
                ));
            }
            Frame::MemoryPages(PageRun {
                round,
                first_gfn,
                page_size: info.page_size,
                markers: markers.to_vec(),
                data: data.to_vec(),
            })
        }
        FrameType::DirtyRoundEnd => {
            let (Some(round), Some(pages_sent), Some(pages_left_estimate)) =
                (reader.u32(), reader.u64(), reader.u64())
            else {
                return Err(malformed("shorter than its 20 bytes"));
            };
            Frame::DirtyRoundEnd {
                round,
                pages_sent,
                pages_left_estimate,
            }
        }
        FrameType::DeviceState => {
            let name_len = reader
                .u16()
                .ok_or_else(|| malformed("shorter than its name length"))?;
            let name = reader
                .take(usize::from(name_len))
                .ok_or_else(|| malformed("shorter than its name"))?;
            check_text(DEVICE_NAME, name, limits.max_name_len)?;
            let name = core::str::from_utf8(name)
                .map_err(|_| malformed("the device name is not UTF-8"))?;
            Frame::DeviceState {
                name: name.to_owned(),
                bytes: reader.take_rest().to_vec(),
            }
        }
        FrameType::VcpuState => {
            let index = reader
                .u32()
                .ok_or_else(|| malformed("shorter than its vCPU index"))?;
            check_vcpu(info, index)?;
            Frame::VcpuState {
                index,
                bytes: reader.take_rest().to_vec(),
            }
        }
        FrameType::PostcopySwitch => Frame::PostcopySwitch {
            pages_left: reader
                .u64()
                .ok_or_else(|| malformed("shorter than its 8 bytes"))?,
        },
        FrameType::PageRequest => {
            let gfn = reader
                .u64()
                .ok_or_else(|| malformed("shorter than its 8 bytes"))?;
            check_gfn(info, gfn)?;
            Frame::PageRequest { gfn }
        }
        FrameType::End => {
            let (Some(total_pages), Some(checksum)) = (reader.u64(), reader.u32()) else {
                return Err(malformed("shorter than its 12 bytes"));
            };
            Frame::End {
                total_pages,
                checksum,
            }
        }
        FrameType::Cancel => {
            let reason = reader.take_rest();
            check_text(CANCEL_REASON, reason, limits.max_reason_len)?;
            let reason =
                core::str::from_utf8(reason).map_err(|_| malformed("the reason is not UTF-8"))?;
            return Ok(Frame::Cancel {
                reason: reason.to_owned(),
            });
        }
    };
    if !reader.rest().is_empty() {
        return Err(malformed("bytes follow its fields"));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        let mut page = vec![0u8; 4096 + 5];
        assert!(is_zero(&page));
        for index in [0, 15, 16, 4095, 4096, 4100] {
            page[index] = 1;
            assert!(!is_zero(&page), "byte {index}");
            page[index] = 0;
        }
    }

    #[test]
    fn from_memory_refuses_partial_pages() {
        assert!(matches!(
            PageRun::from_memory(0, 0, 4096, &[0; 100]),
            Err(StreamError::PagesNotWhole {
                len: 100,
                page_size: 4096
            })
        ));
    }

    #[test]
    fn pages_yields_gfns_in_order_with_their_data() {
        let mut memory = vec![0u8; 3 * 4096];
        memory[4096] = 7;
        let run = PageRun::from_memory(2, 10, 4096, &memory).unwrap();
        let pages: Vec<_> = run.pages().collect();
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[0], (10, Page::Zero));
        assert_eq!(pages[1], (11, Page::Data(&memory[4096..8192])));
        assert_eq!(pages[2], (12, Page::Zero));
        assert_eq!(run.zero_pages(), 2);
    }
}
