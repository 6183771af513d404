//! Fuzz harness on stable Rust: random bytes and mutated valid streams go into the decoder in
//! random chunks. It must return events or a typed error (never panic), allocate nothing larger
//! than one frame under the limits, and decide the same way whatever the chunking.
//!
//! A short slice (`LULL_FUZZ_CASES`, default 2,500 cases per property) runs with `cargo test`.
//! Run it for a given time with `LULL_FUZZ_SECS`: each property then draws fresh cases in
//! batches until that many seconds have passed and prints how many it ran, e.g. ten minutes:
//! `LULL_FUZZ_SECS=600 cargo test --release -p lull-migration-stream --test fuzz -- --nocapture`
//! (the two properties run in parallel, one per test thread). A failure names the batch seed;
//! `LULL_FUZZ_SEED=<seed>` with `LULL_FUZZ_CASES=<batch>` replays that batch.

mod support;

use std::time::{Duration, Instant};

use lull_migration_stream::{
    Decoder, Encoder, Limits, SourceInfo, StreamKind, FRAME_OVERHEAD, HEADER_LEN,
};
use proptest::prelude::*;
use proptest::test_runner::{RngSeed, TestCaseResult, TestRunner};
use support::{decode_all, PAGE};

/// Cases per property unless `LULL_FUZZ_CASES` says otherwise (a few seconds in a debug build).
const DEFAULT_CASES: u32 = 2500;
/// Cases per batch when running for a duration (about a second each in release, so a run
/// overshoots its time by about that).
const BATCH_CASES: u32 = 2_000;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn config(cases: u32, seed: Option<u64>) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: seed.map_or(RngSeed::Random, RngSeed::Fixed),
        // Failures are reported with their seed; no regression file is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs `test` on values of `strategy`: `LULL_FUZZ_CASES` cases (default 2,500), or batches of
/// fresh cases for `LULL_FUZZ_SECS` seconds. Panics with the shrunk failing input and the seed
/// that replays it.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult) {
    let run = |cases: u32, seed: Option<u64>| {
        if let Err(failure) = TestRunner::new(config(cases, seed)).run(&strategy, &test) {
            let replay = seed.map_or(String::new(), |seed| {
                format!(" (replay: LULL_FUZZ_SEED={seed} LULL_FUZZ_CASES={cases})")
            });
            panic!("{name}: {failure}{replay}");
        }
    };
    let Some(seconds) = env::<u64>("LULL_FUZZ_SECS") else {
        run(
            env("LULL_FUZZ_CASES").unwrap_or(DEFAULT_CASES),
            env("LULL_FUZZ_SEED"),
        );
        return;
    };
    let started = Instant::now();
    let mut seed = env("LULL_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64)
    });
    let mut cases = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        run(BATCH_CASES, Some(seed));
        cases += u64::from(BATCH_CASES);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    eprintln!(
        "{name}: {cases} cases in {:.0} s, no failure",
        started.elapsed().as_secs_f64()
    );
}

/// Small limits, so that a decoder allocating what a hostile length field announces (up to
/// 4 GiB) would stand out against them.
fn limits() -> Limits {
    Limits {
        max_frame_len: 40 << 10,
        max_pages_per_frame: 8,
        max_name_len: 16,
        max_reason_len: 64,
        max_vcpus: 8,
    }
}

/// The most buffer the decoder may hold: one frame.
fn allocation_bound() -> usize {
    limits().max_frame_len as usize + FRAME_OVERHEAD
}

#[derive(Debug, Clone)]
struct StreamPlan {
    requests: bool,
    /// Per page run: each page zero (0) or filled with one non-zero byte.
    runs: Vec<(u64, Vec<u8>)>,
    vcpus: u32,
    devices: Vec<(String, Vec<u8>)>,
    postcopy: bool,
    cancel: bool,
}

fn plans() -> impl Strategy<Value = StreamPlan> {
    (
        any::<bool>(),
        prop::collection::vec(
            (
                0u64..64,
                prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..4),
            ),
            0..4,
        ),
        1u32..4,
        prop::collection::vec(
            ("[a-z]{0,8}", prop::collection::vec(any::<u8>(), 0..24)),
            0..3,
        ),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(requests, runs, vcpus, devices, postcopy, cancel)| StreamPlan {
                requests,
                runs,
                vcpus,
                devices,
                postcopy,
                cancel,
            },
        )
}

fn info(kind: StreamKind, vcpus: u32) -> SourceInfo {
    SourceInfo {
        kind,
        page_size: PAGE as u32,
        vcpu_count: vcpus,
        memory_bytes: 64 * PAGE as u64,
    }
}

/// The valid stream a plan describes, and its kind.
fn build(plan: &StreamPlan) -> (Vec<u8>, StreamKind) {
    let mut out = Vec::new();
    if plan.requests {
        let info = info(StreamKind::PageRequests, plan.vcpus);
        let mut encoder = Encoder::start(info, limits(), &mut out).unwrap();
        for (gfn, _) in &plan.runs {
            encoder.page_request(*gfn, &mut out).unwrap();
        }
        encoder.end(&mut out).unwrap();
        return (out, StreamKind::PageRequests);
    }
    let mut encoder =
        Encoder::start(info(StreamKind::Migration, plan.vcpus), limits(), &mut out).unwrap();
    let memory = |fills: &[u8]| {
        let mut memory = vec![0u8; fills.len() * PAGE];
        for (page, fill) in memory.chunks_mut(PAGE).zip(fills) {
            page[usize::from(*fill) * 7] = *fill;
        }
        memory
    };
    let (precopy, postcopy) = plan.runs.split_at(if plan.postcopy {
        plan.runs.len() / 2
    } else {
        plan.runs.len()
    });
    for (gfn, fills) in precopy {
        encoder
            .memory_pages(
                0,
                (*gfn).min(64 - fills.len() as u64),
                &memory(fills),
                &mut out,
            )
            .unwrap();
    }
    encoder.dirty_round_end(0, 0, 0, &mut out).unwrap();
    for (name, bytes) in &plan.devices {
        encoder.device_state(name, bytes, &mut out).unwrap();
    }
    for index in 0..plan.vcpus {
        encoder
            .vcpu_state(index, &[index as u8; 10], &mut out)
            .unwrap();
    }
    if plan.postcopy {
        encoder
            .postcopy_switch(postcopy.len() as u64, &mut out)
            .unwrap();
        for (gfn, fills) in postcopy {
            encoder
                .memory_pages(
                    1,
                    (*gfn).min(64 - fills.len() as u64),
                    &memory(fills),
                    &mut out,
                )
                .unwrap();
        }
    }
    if plan.cancel {
        encoder.cancel("fuzz", &mut out).unwrap();
    } else {
        encoder.end(&mut out).unwrap();
    }
    (out, StreamKind::Migration)
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        value: u8,
    },
    /// Overwrite four bytes with a little-endian u32 (hits length fields, counts, indexes).
    SetWord {
        at: usize,
        value: u32,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
    },
    Truncate {
        len: usize,
    },
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let position = any::<prop::sample::Index>();
    let mutation = prop_oneof![
        (position.clone(), 0u8..8).prop_map(|(at, bit)| (at, Mutation::FlipBit { at: 0, bit })),
        (position.clone(), any::<u8>())
            .prop_map(|(at, value)| (at, Mutation::SetByte { at: 0, value })),
        (
            position.clone(),
            prop_oneof![
                any::<u32>(),
                Just(0),
                Just(u32::MAX),
                0u32..300,
                Just(40 << 10)
            ]
        )
            .prop_map(|(at, value)| (at, Mutation::SetWord { at: 0, value })),
        (position.clone(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| (at, Mutation::Insert { at: 0, bytes })),
        (position.clone(), 1usize..64).prop_map(|(at, len)| (at, Mutation::Delete { at: 0, len })),
        (position.clone(), 1usize..64)
            .prop_map(|(at, len)| (at, Mutation::Duplicate { at: 0, len })),
        position.prop_map(|at| (at, Mutation::Truncate { len: 0 })),
    ];
    // Positions are drawn as indexes and resolved against the stream being mutated.
    prop::collection::vec(mutation, 1..5).prop_map(|mutations| {
        mutations
            .into_iter()
            .map(|(index, mutation)| match mutation {
                Mutation::FlipBit { bit, .. } => Mutation::FlipBit {
                    at: index.index(usize::MAX),
                    bit,
                },
                Mutation::SetByte { value, .. } => Mutation::SetByte {
                    at: index.index(usize::MAX),
                    value,
                },
                Mutation::SetWord { value, .. } => Mutation::SetWord {
                    at: index.index(usize::MAX),
                    value,
                },
                Mutation::Insert { bytes, .. } => Mutation::Insert {
                    at: index.index(usize::MAX),
                    bytes,
                },
                Mutation::Delete { len, .. } => Mutation::Delete {
                    at: index.index(usize::MAX),
                    len,
                },
                Mutation::Duplicate { len, .. } => Mutation::Duplicate {
                    at: index.index(usize::MAX),
                    len,
                },
                Mutation::Truncate { .. } => Mutation::Truncate {
                    len: index.index(usize::MAX),
                },
            })
            .collect()
    })
}

/// Where a drawn position lands: seven times in eight past the header, where the frames are.
fn place(at: usize, len: usize) -> usize {
    match len.checked_sub(HEADER_LEN) {
        Some(frames) if frames > 0 && !at.is_multiple_of(8) => HEADER_LEN + (at / 8) % frames,
        _ => at % len.max(1),
    }
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len().max(1);
    match mutation {
        Mutation::FlipBit { at, bit } => {
            if let Some(byte) = bytes.get_mut(place(*at, len)) {
                *byte ^= 1 << bit;
            }
        }
        Mutation::SetByte { at, value } => {
            if let Some(byte) = bytes.get_mut(place(*at, len)) {
                *byte = *value;
            }
        }
        Mutation::SetWord { at, value } => {
            let at = place(*at, len);
            if let Some(word) = bytes.get_mut(at..at + 4) {
                word.copy_from_slice(&value.to_le_bytes());
            }
        }
        Mutation::Insert {
            at,
            bytes: inserted,
        } => {
            let at = place(*at, bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Delete { at, len: count } => {
            let at = place(*at, len);
            let end = (at + count).min(bytes.len());
            bytes.drain(at.min(end)..end);
        }
        Mutation::Duplicate { at, len: count } => {
            let at = place(*at, len);
            let end = (at + count).min(bytes.len());
            let copy = bytes[at.min(end)..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Truncate { len: keep } => bytes.truncate(place(*keep, len)),
    }
}

/// Recomputes every frame CRC that the (mutated) length fields still let us find, so the
/// decoder gets past the CRC to the payload, range and order checks.
fn reseal(bytes: &mut [u8]) {
    let mut at = HEADER_LEN;
    while let Some(length) = bytes.get(at + 1..at + 5) {
        let length = u32::from_le_bytes(length.try_into().unwrap()) as usize;
        let Some(crc_at) = (at + 5).checked_add(length) else {
            return;
        };
        if crc_at + 4 > bytes.len() {
            return;
        }
        support::reseal_frame(bytes, at);
        at = crc_at + 4;
    }
}

/// Decodes `bytes` with the given chunk sizes (cycled), checking after every chunk that the
/// decoder holds no more than one frame's worth of buffer (a hostile length is never
/// allocated); then checks that whole-input and byte-at-a-time decoding come to the same
/// outcome.
fn check_decoder(bytes: &[u8], kind: StreamKind, chunks: &[usize]) -> Result<(), TestCaseError> {
    let mut decoder = Decoder::new(kind, limits());
    let mut events = 0usize;
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    let chunked = loop {
        if rest.is_empty() {
            break decoder.finish();
        }
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(size);
        rest = tail;
        let pushed = decoder.push_all(piece, |_| events += 1);
        prop_assert!(
            decoder.buffer_capacity() <= allocation_bound(),
            "the decoder holds {} bytes; the limits allow {}",
            decoder.buffer_capacity(),
            allocation_bound()
        );
        if let Err(error) = pushed {
            break Err(error);
        }
    };
    let chunked = chunked.map(|()| events);
    let whole = decode_all(bytes, kind, limits(), usize::MAX);
    let bytewise = decode_all(bytes, kind, limits(), 1);
    prop_assert_eq!(format!("{whole:?}"), format!("{bytewise:?}"));
    match (&whole, &chunked) {
        (Ok(events), Ok(frames)) => prop_assert_eq!(events.len(), *frames),
        (Err(a), Err(b)) => prop_assert_eq!(format!("{a:?}"), format!("{b:?}")),
        _ => prop_assert!(false, "whole: {:?}, chunked: {:?}", whole, chunked),
    }
    Ok(())
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..8, 8usize..5000], 1..6)
}

/// Arbitrary bytes, half of the time behind a valid header so they reach the frame parser.
#[test]
fn fuzz_random_bytes() {
    let inputs = (
        prop::option::of((any::<bool>(), 1u32..8)),
        prop::collection::vec(any::<u8>(), 0..2048),
        chunk_sizes(),
    );
    fuzz("fuzz_random_bytes", inputs, |(header, body, chunks)| {
        let mut bytes = Vec::new();
        let kind = match header {
            Some((requests, vcpus)) => {
                let kind = if requests {
                    StreamKind::PageRequests
                } else {
                    StreamKind::Migration
                };
                Encoder::start(info(kind, vcpus), limits(), &mut bytes).unwrap();
                kind
            }
            None => StreamKind::Migration,
        };
        bytes.extend_from_slice(&body);
        check_decoder(&bytes, kind, &chunks)
    });
}

/// Valid streams, mutated; with `reseal` the frame CRCs are recomputed afterwards.
#[test]
fn fuzz_mutated_streams() {
    let inputs = (plans(), mutations(), any::<bool>(), chunk_sizes());
    fuzz(
        "fuzz_mutated_streams",
        inputs,
        |(plan, mutations, reseal_crcs, chunks)| {
            let (original, kind) = build(&plan);
            // The unmutated stream decodes.
            prop_assert!(decode_all(&original, kind, limits(), 4096).is_ok());
            let mut bytes = original;
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            if reseal_crcs {
                reseal(&mut bytes);
            }
            check_decoder(&bytes, kind, &chunks)
        },
    );
}
