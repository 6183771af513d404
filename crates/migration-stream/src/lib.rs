//! lull-migration-stream: the versioned, checksummed wire format of a live migration, with its
//! encoder and a decoder that refuses bad input with typed errors and never panics.
//!
//! lull-vmm's pre-copy live migration (`vmm/src/migration`) writes and reads it; post-copy
//! (`PostcopySwitch`, page requests) is in the format but not used yet.
//!
//! # The stream
//!
//! The source sends a header, then frames. All integers are little-endian; every CRC is
//! CRC-32/ISO-HDLC (zlib's, via crc32fast, as the snapshot envelope in `vmm-state-file`).
//!
//! Header (36 bytes):
//!
//! | offset | size | field | |
//! |---:|---:|---|---|
//! | 0 | 8 | magic | `b"LULLMIGR"` |
//! | 8 | 4 | format version | [`FORMAT_VERSION`] (2; 1 had no virtio device state, and is refused as [`StreamError::OlderVersion`]) |
//! | 12 | 4 | stream kind | 0 migration (source → destination), 1 page requests (back) |
//! | 16 | 4 | page size | power of two, 4 KiB to 2 MiB |
//! | 20 | 4 | vCPU count | 1 to [`Limits::max_vcpus`] |
//! | 24 | 8 | guest memory bytes | non-zero multiple of the page size |
//! | 32 | 4 | header CRC-32 | over bytes 0..32 |
//!
//! Frame (9 bytes + payload):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 1 | type tag ([`FrameType::tag`]) |
//! | 1 | 4 | payload length *n* (at most [`Limits::max_frame_len`]) |
//! | 5 | *n* | payload |
//! | 5 + *n* | 4 | CRC-32 over bytes 0..5 + *n* (tag, length and payload) |
//!
//! Payloads:
//!
//! | tag | frame | payload |
//! |---:|---|---|
//! | 1 | `MemoryPages` | round u32, first gfn u64, count *c* u32 (1 to [`Limits::max_pages_per_frame`]), *c* markers u8 (0 zero page, 1 data page), then the data pages' bytes in order |
//! | 2 | `DirtyRoundEnd` | round u32, pages sent u64, pages-left estimate u64 |
//! | 3 | `DeviceState` | name length u16, name (UTF-8, at most [`Limits::max_name_len`]), the device's opaque `Persist` blob (the rest) |
//! | 4 | `VcpuState` | vCPU index u32, the vCPU's opaque blob (the rest) |
//! | 5 | `PostcopySwitch` | pages still to come u64 |
//! | 6 | `PageRequest` | gfn u64 (page-request stream only) |
//! | 7 | `End` | total pages (or requests) u64, stream checksum u32 |
//! | 8 | `Cancel` | reason (UTF-8, at most [`Limits::max_reason_len`]; the whole payload) |
//!
//! A `MemoryPages` frame carries a run of contiguous pages; an all-zero page costs one marker
//! byte, so a run of *c* zero pages is a 25 + *c* byte frame.
//!
//! The stream checksum in `End` is the CRC-32 of the header's CRC followed by every earlier
//! frame's CRC (4 bytes each, in order). The frame CRCs already cover every byte; chaining them
//! catches what they cannot — a whole frame lost, repeated or reordered — without hashing the
//! guest's memory a second time.
//!
//! The order of frames (the diagram is in `src/order.rs`): pre-copy rounds of `MemoryPages` each closed
//! by a `DirtyRoundEnd` (rounds numbered from 0; the last is the stop-and-copy round), then
//! device and vCPU state (every vCPU exactly once), then `End`; or, for post-copy, the state,
//! `PostcopySwitch`, the remaining pages (numbered as the next round), then `End`. `Cancel`
//! may end a stream anywhere. In post-copy the destination sends a page-request stream back:
//! a header (echoing the source's), `PageRequest`s, `End`.
//!
//! # Use
//!
//! ```
//! use lull_migration_stream::{Decoder, Encoder, Event, Frame, Limits, SourceInfo, StreamKind};
//!
//! let info = SourceInfo { kind: StreamKind::Migration, page_size: 4096, vcpu_count: 1, memory_bytes: 1 << 20 };
//! let mut wire = Vec::new();
//! let mut encoder = Encoder::start(info, Limits::default(), &mut wire)?;
//! encoder.memory_pages(0, 16, &[0u8; 2 * 4096], &mut wire)?; // two zero pages: 27 bytes
//! encoder.dirty_round_end(0, 2, 0, &mut wire)?;
//! encoder.vcpu_state(0, b"registers", &mut wire)?;
//! encoder.end(&mut wire)?;
//!
//! // The receiver pushes whatever has arrived, in chunks of any size.
//! let mut decoder = Decoder::new(StreamKind::Migration, Limits::default());
//! let mut events = Vec::new();
//! for chunk in wire.chunks(7) {
//!     decoder.push_all(chunk, |event| events.push(event))?;
//! }
//! decoder.finish()?;
//! assert_eq!(events[0], Event::Header(info));
//! assert!(matches!(events.last(), Some(Event::Frame(Frame::End { total_pages: 2, .. }))));
//! # Ok::<(), lull_migration_stream::StreamError>(())
//! ```
//!
//! The decoder is incremental ([`Decoder::push`]) rather than built on `Read`, so a
//! non-blocking socket or an event loop can feed it whatever arrived without a thread per
//! migration; [`StreamReader`] wraps it for a blocking `Read`.
//!
//! # Limits and robustness
//!
//! Everything in a stream is input from another host. The decoder checks, before it allocates
//! or interprets: the magic (from the first byte), the version, each CRC, the frame type as soon
//! as its tag arrives, the length against [`Limits::max_frame_len`] before buffering the payload
//! (it holds at most one frame), pages per frame, every gfn against the guest memory size, vCPU
//! indexes, name lengths, and the order. Non-test code denies `indexing_slicing`, `unwrap`,
//! `expect`, `panic` and unchecked arithmetic (clippy), so no input reaches a panic.
//!
//! # Fuzzing
//!
//! `tests/fuzz.rs` feeds random bytes and mutated valid streams (bit flips, overwrites,
//! insertions, deletions, truncations; also mutations with the frame CRC recomputed, to reach
//! the payload checks) into the decoder in random chunks, and asserts it returns events or a
//! typed error, never panics, and never allocates more than the limits allow. `cargo test`
//! runs a short slice (2,500 cases per property); run it for a given time with
//!
//! ```text
//! LULL_FUZZ_SECS=600 cargo test --release -p lull-migration-stream --test fuzz -- --nocapture
//! ```
//!
//! (each of the two properties, in parallel, draws fresh cases for that long and prints how
//! many it ran: on 2026-12-02, ten minutes on the shared 2-core host were 2,902,000 random
//! inputs and 632,000 mutated streams, no failure). `LULL_FUZZ_CASES=N` runs N cases instead.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

mod decoder;
mod encoder;
mod error;
mod format;
mod frame;
mod order;

pub use decoder::{Decoder, Event, StreamReader};
pub use encoder::Encoder;
pub use error::{Expectation, FrameType, StreamError};
pub use format::{
    Limits, SourceInfo, StreamKind, FORMAT_VERSION, FRAME_OVERHEAD, HEADER_LEN, MAGIC,
    MAX_PAGE_SIZE, MIN_PAGE_SIZE,
};
pub use frame::{Frame, Page, PageRun, DATA_PAGE_MARKER, PAGE_RUN_HEADER_LEN, ZERO_PAGE_MARKER};
