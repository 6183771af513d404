//! The receiving side: an incremental parser fed whatever bytes have arrived (fits a
//! non-blocking socket or an event loop), and a blocking adapter over `std::io::Read`.

use std::io::Read;

use crate::error::{FrameType, StreamError};
use crate::format::{
    check_header_prefix, decode_header, Limits, Reader, SourceInfo, StreamKind, FRAME_PREFIX_LEN,
    HEADER_LEN,
};
use crate::frame::{decode_payload, Frame};
use crate::order::{Order, Step};

/// What one step of decoding produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The header arrived and checked out: size guest memory and create vCPUs from it.
    Header(SourceInfo),
    /// A frame arrived, checked (CRC, limits, ranges, order).
    Frame(Frame),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    /// Waiting for a frame's tag and length.
    FramePrefix,
    /// Waiting for the rest of a frame of `total` bytes (prefix, payload, CRC).
    FrameBody {
        frame_type: FrameType,
        total: usize,
    },
}

/// Incremental stream decoder.
///
/// Feed it bytes with [`Decoder::push`] as they arrive, in chunks of any size; it returns
/// each header or frame once it is complete and checked. It buffers at most one frame, whose
/// length it checks against [`Limits::max_frame_len`] before buffering any of it. When the
/// input ends, [`Decoder::finish`] says whether the stream was complete. After an error the
/// decoder refuses further input.
#[derive(Debug)]
pub struct Decoder {
    kind: StreamKind,
    limits: Limits,
    stage: Stage,
    buffer: Vec<u8>,
    info: Option<SourceInfo>,
    order: Option<Order>,
    chain: crc32fast::Hasher,
    /// Frames accepted so far (the index of the next one).
    frames: u64,
    failed: bool,
}

impl Decoder {
    /// A decoder for a stream of `kind` (the one the peer is expected to send).
    pub fn new(kind: StreamKind, limits: Limits) -> Self {
        Self {
            kind,
            limits,
            stage: Stage::Header,
            buffer: Vec::new(),
            info: None,
            order: None,
            chain: crc32fast::Hasher::new(),
            frames: 0,
            failed: false,
        }
    }

    /// The header's source info, once it has arrived.
    pub fn info(&self) -> Option<&SourceInfo> {
        self.info.as_ref()
    }

    /// Whether `End` or `Cancel` arrived.
    pub fn is_ended(&self) -> bool {
        self.order.as_ref().is_some_and(Order::is_ended)
    }

    /// Bytes the decoder holds allocated for a partial frame: at most the frame overhead plus
    /// `max_frame_len` (for tests and metrics).
    pub fn buffer_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Consumes bytes from the front of `input` until one event is complete or `input` runs out.
    /// Returns how many bytes were consumed and the event, if any; call again with the rest
    /// of `input` (which may be empty of events, but never loses bytes).
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), StreamError> {
        if self.failed {
            return Err(StreamError::AfterError);
        }
        let result = self.push_inner(input);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Pushes all of `input`, handing each event to `on_event`. Stops at the first error.
    pub fn push_all(
        &mut self,
        mut input: &[u8],
        mut on_event: impl FnMut(Event),
    ) -> Result<(), StreamError> {
        while !input.is_empty() {
            let (consumed, event) = self.push(input)?;
            input = input.get(consumed..).unwrap_or(&[]);
            if let Some(event) = event {
                on_event(event);
            }
        }
        Ok(())
    }

    /// Call when the input has ended: succeeds only after `End` or `Cancel` and with no bytes
    /// of a further frame buffered.
    pub fn finish(&self) -> Result<(), StreamError> {
        if self.failed {
            return Err(StreamError::AfterError);
        }
        let expected = match self.stage {
            Stage::Header => HEADER_LEN,
            Stage::FramePrefix => FRAME_PREFIX_LEN,
            Stage::FrameBody { total, .. } => total,
        };
        let buffered = self.buffer.len();
        if buffered > 0 || self.stage == Stage::Header {
            return Err(StreamError::Truncated {
                expected: expected as u64,
                got: buffered as u64,
            });
        }
        if !self.is_ended() {
            return Err(StreamError::EndMissing {
                frames: self.frames,
            });
        }
        Ok(())
    }

    fn push_inner(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), StreamError> {
        let mut consumed = 0usize;
        loop {
            let needed = match self.stage {
                Stage::Header => HEADER_LEN,
                Stage::FramePrefix => FRAME_PREFIX_LEN,
                Stage::FrameBody { total, .. } => total,
            };
            let available = input.get(consumed..).unwrap_or(&[]);
            let take = needed
                .saturating_sub(self.buffer.len())
                .min(available.len());
            self.buffer
                .extend_from_slice(available.get(..take).unwrap_or(&[]));
            consumed = consumed.saturating_add(take);
            let complete = self.buffer.len() >= needed;
            let event = match self.stage {
                Stage::Header => {
                    check_header_prefix(&self.buffer)?;
                    if complete {
                        Some(self.header()?)
                    } else {
                        None
                    }
                }
                Stage::FramePrefix => {
                    self.frame_prefix()?;
                    None
                }
                Stage::FrameBody { frame_type, total } if complete => {
                    Some(self.frame_body(frame_type, total)?)
                }
                Stage::FrameBody { .. } => None,
            };
            if event.is_some() || consumed >= input.len() {
                return Ok((consumed, event));
            }
        }
    }

    fn header(&mut self) -> Result<Event, StreamError> {
        let (info, crc) = decode_header(&self.buffer, self.kind, &self.limits)?;
        self.chain.update(&crc.to_le_bytes());
        self.order = Some(Order::new(&info));
        self.info = Some(info);
        self.buffer.clear();
        self.stage = Stage::FramePrefix;
        Ok(Event::Header(info))
    }

    /// Checks the tag as soon as it arrives and the length as soon as it is complete, so an
    /// unknown or oversized frame is refused before its payload is read or buffer space
    /// reserved for it.
    fn frame_prefix(&mut self) -> Result<(), StreamError> {
        let mut reader = Reader::new(&self.buffer);
        let Some(tag) = reader.u8() else {
            return Ok(());
        };
        let frame_type = FrameType::from_tag(tag).ok_or(StreamError::UnknownFrameType(tag))?;
        let Some(len) = reader.u32() else {
            return Ok(());
        };
        if len > self.limits.max_frame_len {
            return Err(StreamError::FrameTooLarge {
                len: u64::from(len),
                max: self.limits.max_frame_len,
            });
        }
        let total = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(FRAME_PREFIX_LEN)?.checked_add(4))
            .ok_or(StreamError::FrameTooLarge {
                len: u64::from(len),
                max: self.limits.max_frame_len,
            })?;
        // Exactly one frame's worth: the buffer never grows past the limit plus the overhead.
        self.buffer
            .reserve_exact(total.saturating_sub(self.buffer.len()));
        self.stage = Stage::FrameBody { frame_type, total };
        Ok(())
    }

    /// Checks a complete frame: CRC, then payload, then the order, then (for `End`) the stream
    /// checksum.
    fn frame_body(&mut self, frame_type: FrameType, total: usize) -> Result<Event, StreamError> {
        let frame_index = self.frames;
        let crc_at = total.saturating_sub(4);
        let covered = self.buffer.get(..crc_at).unwrap_or(&[]);
        let stored = Reader::new(self.buffer.get(crc_at..).unwrap_or(&[]))
            .u32()
            .unwrap_or(0);
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(StreamError::FrameChecksum {
                frame_index,
                stored,
                computed,
            });
        }
        let (Some(info), Some(order)) = (self.info.as_ref(), self.order.as_mut()) else {
            // Frames are only parsed after the header set both.
            return Err(StreamError::AfterError);
        };
        let payload = covered.get(FRAME_PREFIX_LEN..).unwrap_or(&[]);
        let frame = decode_payload(frame_type, payload, info, &self.limits, frame_index)?;
        let step = match &frame {
            Frame::MemoryPages(run) => Step::MemoryPages {
                round: run.round(),
                pages: run.len() as u64,
            },
            Frame::DirtyRoundEnd { round, .. } => Step::DirtyRoundEnd { round: *round },
            Frame::DeviceState { .. } => Step::DeviceState,
            Frame::VcpuState { index, .. } => Step::VcpuState { index: *index },
            Frame::PostcopySwitch { .. } => Step::PostcopySwitch,
            Frame::PageRequest { .. } => Step::PageRequest,
            Frame::End { total_pages, .. } => Step::End {
                total_pages: *total_pages,
            },
            Frame::Cancel { .. } => Step::Cancel,
        };
        if let Frame::End { checksum, .. } = frame {
            let computed = self.chain.clone().finalize();
            // An End out of order is reported as such, not as a checksum mismatch.
            if !order.is_ended() && checksum != computed {
                return Err(StreamError::StreamChecksum {
                    stored: checksum,
                    computed,
                });
            }
        }
        order.accept(step)?;
        self.chain.update(&stored.to_le_bytes());
        self.frames = self.frames.saturating_add(1);
        self.buffer.clear();
        self.stage = Stage::FramePrefix;
        Ok(Event::Frame(frame))
    }
}

/// A blocking decoder over any `Read` (a socket, a file, a pipe).
#[derive(Debug)]
pub struct StreamReader<R> {
    reader: R,
    decoder: Decoder,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<R: Read> StreamReader<R> {
    /// Reads with a 64 KiB buffer.
    pub fn new(reader: R, kind: StreamKind, limits: Limits) -> Self {
        Self {
            reader,
            decoder: Decoder::new(kind, limits),
            buffer: vec![0; 64 << 10].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The next header or frame; `Ok(None)` once the input has ended after `End` or `Cancel`.
    /// An input that ends anywhere else is `Truncated` or `EndMissing`.
    pub fn next_event(&mut self) -> Result<Option<Event>, StreamError> {
        loop {
            if self.start < self.end {
                let pending = self.buffer.get(self.start..self.end).unwrap_or(&[]);
                let (consumed, event) = self.decoder.push(pending)?;
                self.start = self.start.saturating_add(consumed).min(self.end);
                if event.is_some() {
                    return Ok(event);
                }
                continue;
            }
            let read = match self.reader.read(&mut self.buffer) {
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(StreamError::Io(error)),
            };
            if read == 0 {
                self.decoder.finish()?;
                return Ok(None);
            }
            self.start = 0;
            self.end = read.min(self.buffer.len());
        }
    }
}
