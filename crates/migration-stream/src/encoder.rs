//! The sending side: appends the header and frames to a caller's buffer, refusing anything the
//! decoder would refuse (so a bug in the source shows up there, not at the destination).

use crate::error::{FrameType, StreamError};
use crate::format::{Limits, SourceInfo, FRAME_PREFIX_LEN};
use crate::frame::{
    check_gfn, check_page_run, check_text, check_vcpu, page_markers, CANCEL_REASON,
    DATA_PAGE_MARKER, DEVICE_NAME, PAGE_RUN_HEADER_LEN,
};
use crate::order::{Order, Step};

/// Writes one stream. Every method appends whole frames to `out` and leaves `out` untouched
/// when it returns an error; the caller sends `out`'s bytes however it likes (a blocking
/// socket, a non-blocking one, a file) and may clear it in between.
#[derive(Debug, Clone)]
pub struct Encoder {
    info: SourceInfo,
    limits: Limits,
    order: Order,
    /// The stream checksum so far: CRC-32 over the header's and every frame's CRC.
    chain: crc32fast::Hasher,
}

impl Encoder {
    /// Starts a stream for `info`, appending its header to `out`.
    pub fn start(info: SourceInfo, limits: Limits, out: &mut Vec<u8>) -> Result<Self, StreamError> {
        info.validate(&limits)?;
        let header = info.encode();
        let mut chain = crc32fast::Hasher::new();
        chain.update(header.get(header.len().saturating_sub(4)..).unwrap_or(&[]));
        out.extend_from_slice(&header);
        Ok(Self {
            info,
            limits,
            order: Order::new(&info),
            chain,
        })
    }

    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// Sends `memory`, the guest pages from `first_gfn` on (whole pages, at most
    /// `max_pages_per_frame`), in dirty round `round`. All-zero pages cost one marker byte.
    pub fn memory_pages(
        &mut self,
        round: u32,
        first_gfn: u64,
        memory: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let markers = page_markers(self.info.page_size, memory)?;
        let count = markers.len() as u64;
        if count == 0 {
            return Err(StreamError::PagesNotWhole {
                len: 0,
                page_size: self.info.page_size,
            });
        }
        check_page_run(&self.info, &self.limits, first_gfn, count)?;
        let data_pages = markers.iter().filter(|m| **m == DATA_PAGE_MARKER).count();
        let data_len = data_pages.saturating_mul(usize::try_from(self.info.page_size).unwrap_or(0));
        let payload_len = PAGE_RUN_HEADER_LEN
            .saturating_add(markers.len())
            .saturating_add(data_len);
        let payload_len = self.check_len(payload_len)?;
        self.order.accept(Step::MemoryPages {
            round,
            pages: count,
        })?;
        let start = self.begin(FrameType::MemoryPages, payload_len, out);
        out.extend_from_slice(&round.to_le_bytes());
        out.extend_from_slice(&first_gfn.to_le_bytes());
        // `count` fits: check_page_run bounded it by a u32 limit.
        out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&markers);
        let page_size = usize::try_from(self.info.page_size).unwrap_or(usize::MAX);
        for (page, marker) in memory.chunks(page_size).zip(&markers) {
            if *marker == DATA_PAGE_MARKER {
                out.extend_from_slice(page);
            }
        }
        self.finish(start, out);
        Ok(())
    }

    /// Closes dirty round `round`.
    pub fn dirty_round_end(
        &mut self,
        round: u32,
        pages_sent: u64,
        pages_left_estimate: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        self.order.accept(Step::DirtyRoundEnd { round })?;
        let start = self.begin(FrameType::DirtyRoundEnd, 20, out);
        out.extend_from_slice(&round.to_le_bytes());
        out.extend_from_slice(&pages_sent.to_le_bytes());
        out.extend_from_slice(&pages_left_estimate.to_le_bytes());
        self.finish(start, out);
        Ok(())
    }

    /// Sends the saved state of the device called `name`.
    pub fn device_state(
        &mut self,
        name: &str,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        check_text(DEVICE_NAME, name.as_bytes(), self.limits.max_name_len)?;
        let name_len = u16::try_from(name.len()).map_err(|_| StreamError::NameTooLong {
            what: DEVICE_NAME,
            len: name.len() as u64,
            max: u32::from(u16::MAX),
        })?;
        let payload_len = self.check_len(
            2usize
                .saturating_add(name.len())
                .saturating_add(bytes.len()),
        )?;
        self.order.accept(Step::DeviceState)?;
        let start = self.begin(FrameType::DeviceState, payload_len, out);
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(bytes);
        self.finish(start, out);
        Ok(())
    }

    /// Sends the saved state of vCPU `index`.
    pub fn vcpu_state(
        &mut self,
        index: u32,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        check_vcpu(&self.info, index)?;
        let payload_len = self.check_len(4usize.saturating_add(bytes.len()))?;
        self.order.accept(Step::VcpuState { index })?;
        let start = self.begin(FrameType::VcpuState, payload_len, out);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(bytes);
        self.finish(start, out);
        Ok(())
    }

    /// Switches to post-copy: the destination may run the guest; `pages_left` pages follow.
    pub fn postcopy_switch(
        &mut self,
        pages_left: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        self.order.accept(Step::PostcopySwitch)?;
        let start = self.begin(FrameType::PostcopySwitch, 8, out);
        out.extend_from_slice(&pages_left.to_le_bytes());
        self.finish(start, out);
        Ok(())
    }

    /// (Page-request stream.) Asks the source for guest page `gfn`.
    pub fn page_request(&mut self, gfn: u64, out: &mut Vec<u8>) -> Result<(), StreamError> {
        check_gfn(&self.info, gfn)?;
        self.order.accept(Step::PageRequest)?;
        let start = self.begin(FrameType::PageRequest, 8, out);
        out.extend_from_slice(&gfn.to_le_bytes());
        self.finish(start, out);
        Ok(())
    }

    /// Ends the stream with the page (or request) count and the stream checksum.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let total_pages = self.order.items();
        let checksum = self.chain.clone().finalize();
        self.order.accept(Step::End { total_pages })?;
        let start = self.begin(FrameType::End, 12, out);
        out.extend_from_slice(&total_pages.to_le_bytes());
        out.extend_from_slice(&checksum.to_le_bytes());
        self.finish(start, out);
        Ok(())
    }

    /// Abandons the migration, telling the receiver why.
    pub fn cancel(&mut self, reason: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        check_text(CANCEL_REASON, reason.as_bytes(), self.limits.max_reason_len)?;
        let payload_len = self.check_len(reason.len())?;
        self.order.accept(Step::Cancel)?;
        let start = self.begin(FrameType::Cancel, payload_len, out);
        out.extend_from_slice(reason.as_bytes());
        self.finish(start, out);
        Ok(())
    }

    /// Whether `End` or `Cancel` was written.
    pub fn is_ended(&self) -> bool {
        self.order.is_ended()
    }

    fn check_len(&self, len: usize) -> Result<u32, StreamError> {
        match u32::try_from(len) {
            Ok(len) if len <= self.limits.max_frame_len => Ok(len),
            _ => Err(StreamError::FrameTooLarge {
                len: len as u64,
                max: self.limits.max_frame_len,
            }),
        }
    }

    /// Appends the tag and length; returns where the frame starts.
    fn begin(&self, frame_type: FrameType, payload_len: u32, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.reserve(
            FRAME_PREFIX_LEN
                .saturating_add(usize::try_from(payload_len).unwrap_or(0))
                .saturating_add(4),
        );
        out.push(frame_type.tag());
        out.extend_from_slice(&payload_len.to_le_bytes());
        start
    }

    /// Appends the CRC of the frame that starts at `start` and links it into the stream checksum.
    fn finish(&mut self, start: usize, out: &mut Vec<u8>) {
        let crc = crc32fast::hash(out.get(start..).unwrap_or(&[])).to_le_bytes();
        self.chain.update(&crc);
        out.extend_from_slice(&crc);
    }
}
