//! Test support: stream builders and a whole-input decode helper.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support module"
)]

use lull_migration_stream::{Decoder, Encoder, Event, Limits, SourceInfo, StreamError, StreamKind};

pub const PAGE: usize = 4096;

/// A 1 MiB, 2-vCPU source.
pub fn source() -> SourceInfo {
    SourceInfo {
        kind: StreamKind::Migration,
        page_size: PAGE as u32,
        vcpu_count: 2,
        memory_bytes: 1 << 20,
    }
}

/// A small complete stream: a pre-copy round of three pages (one zero), one device, two vCPUs.
/// Frame indexes: 0 pages, 1 round end, 2 device, 3 vCPU 0, 4 vCPU 1, 5 End.
pub fn sample_stream() -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = Encoder::start(source(), Limits::default(), &mut out).unwrap();
    let mut memory = vec![0u8; 3 * PAGE];
    memory[5] = 0xaa;
    memory[2 * PAGE + 100] = 0x55;
    encoder.memory_pages(0, 4, &memory, &mut out).unwrap();
    encoder.dirty_round_end(0, 3, 0, &mut out).unwrap();
    encoder
        .device_state("serial", b"com1 state", &mut out)
        .unwrap();
    encoder
        .vcpu_state(0, b"vcpu 0 registers", &mut out)
        .unwrap();
    encoder
        .vcpu_state(1, b"vcpu 1 registers", &mut out)
        .unwrap();
    encoder.end(&mut out).unwrap();
    out
}

/// Decodes all of `bytes`, pushed in chunks of `chunk` bytes, and checks the stream ended.
pub fn decode_all(
    bytes: &[u8],
    kind: StreamKind,
    limits: Limits,
    chunk: usize,
) -> Result<Vec<Event>, StreamError> {
    let mut decoder = Decoder::new(kind, limits);
    let mut events = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        decoder.push_all(piece, |event| events.push(event))?;
    }
    decoder.finish()?;
    Ok(events)
}

/// Byte offsets where each frame of a well-formed stream starts (after the header).
pub fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = lull_migration_stream::HEADER_LEN;
    while at + 5 <= bytes.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        at += lull_migration_stream::FRAME_OVERHEAD + len;
    }
    offsets
}

/// Re-seals the frame at `offset` after a test edited it: its CRC is recomputed, so the
/// decoder gets past the CRC to the checks behind it.
pub fn reseal_frame(bytes: &mut [u8], offset: usize) {
    let len = u32::from_le_bytes(bytes[offset + 1..offset + 5].try_into().unwrap()) as usize;
    let crc_at = offset + 5 + len;
    let crc = crc32fast::hash(&bytes[offset..crc_at]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A raw frame with a correct CRC.
pub fn raw_frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![tag];
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}
