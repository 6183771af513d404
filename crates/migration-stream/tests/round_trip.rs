//! Encode → decode gives back every frame type, byte sizes are as documented, and arbitrary
//! valid streams round-trip whatever the chunking.

mod support;

use lull_migration_stream::{
    Decoder, Encoder, Event, Frame, Limits, Page, PageRun, SourceInfo, StreamKind, StreamReader,
    FRAME_OVERHEAD, HEADER_LEN, PAGE_RUN_HEADER_LEN,
};
use proptest::prelude::*;
use support::{decode_all, source, PAGE};

/// Decodes `bytes` (in one push and byte by byte: the results must agree) and returns the frames.
fn frames(bytes: &[u8], kind: StreamKind) -> Vec<Frame> {
    let whole = decode_all(bytes, kind, Limits::default(), usize::MAX).unwrap();
    let bytewise = decode_all(bytes, kind, Limits::default(), 1).unwrap();
    assert_eq!(whole, bytewise);
    let mut events = whole.into_iter();
    assert!(matches!(events.next(), Some(Event::Header(info)) if info.kind == kind));
    events
        .map(|event| match event {
            Event::Frame(frame) => frame,
            Event::Header(_) => panic!("a second header"),
        })
        .collect()
}

fn end_frame(frames: &[Frame], total: u64) {
    assert!(
        matches!(frames.last(), Some(Frame::End { total_pages, .. }) if *total_pages == total),
        "{frames:?}"
    );
}

fn one_vcpu() -> SourceInfo {
    SourceInfo {
        vcpu_count: 1,
        ..source()
    }
}

#[test]
fn header_round_trips() {
    let mut out = Vec::new();
    let mut encoder = Encoder::start(one_vcpu(), Limits::default(), &mut out).unwrap();
    assert_eq!(out.len(), HEADER_LEN);
    assert_eq!(&out[..8], b"LULLMIGR");
    encoder.cancel("", &mut out).unwrap();
    let events = decode_all(&out, StreamKind::Migration, Limits::default(), 3).unwrap();
    assert_eq!(events[0], Event::Header(one_vcpu()));
}

#[test]
fn memory_pages_round_trip() {
    let mut memory = vec![0u8; 4 * PAGE];
    for (index, byte) in memory.iter_mut().enumerate().skip(PAGE) {
        *byte = (index % 251) as u8;
    }
    memory[2 * PAGE..3 * PAGE].fill(0);
    let mut out = Vec::new();
    let mut encoder = Encoder::start(one_vcpu(), Limits::default(), &mut out).unwrap();
    encoder.memory_pages(0, 200, &memory, &mut out).unwrap();
    encoder.dirty_round_end(0, 4, 0, &mut out).unwrap();
    encoder.vcpu_state(0, b"", &mut out).unwrap();
    encoder.end(&mut out).unwrap();
    let frames = frames(&out, StreamKind::Migration);
    let expected = PageRun::from_memory(0, 200, PAGE as u32, &memory).unwrap();
    assert_eq!(frames[0], Frame::MemoryPages(expected));
    let Frame::MemoryPages(run) = &frames[0] else {
        unreachable!()
    };
    let pages: Vec<_> = run.pages().collect();
    assert_eq!(pages[0], (200, Page::Zero));
    assert_eq!(pages[1], (201, Page::Data(&memory[PAGE..2 * PAGE])));
    assert_eq!(pages[2], (202, Page::Zero));
    assert_eq!(pages[3], (203, Page::Data(&memory[3 * PAGE..])));
    end_frame(&frames, 4);
}

#[test]
fn dirty_round_end_round_trips() {
    let mut out = Vec::new();
    let mut encoder = Encoder::start(one_vcpu(), Limits::default(), &mut out).unwrap();
    encoder.dirty_round_end(0, 0, 123_456, &mut out).unwrap();
    encoder
        .dirty_round_end(1, u64::MAX, u64::MAX - 1, &mut out)
        .unwrap();
    encoder.cancel("test", &mut out).unwrap();
    let frames = frames(&out, StreamKind::Migration);
    assert_eq!(
        frames[..2],
        [
            Frame::DirtyRoundEnd {
                round: 0,
                pages_sent: 0,
                pages_left_estimate: 123_456
            },
            Frame::DirtyRoundEnd {
                round: 1,
                pages_sent: u64::MAX,
                pages_left_estimate: u64::MAX - 1
            }
        ]
    );
}

#[test]
fn device_and_vcpu_state_round_trip() {
    let blob: Vec<u8> = (0..=255).collect();
    let mut out = Vec::new();
    let mut encoder = Encoder::start(source(), Limits::default(), &mut out).unwrap();
    encoder.device_state("acpi_pm", &blob, &mut out).unwrap();
    encoder.device_state("séria", b"", &mut out).unwrap();
    encoder.vcpu_state(1, &blob, &mut out).unwrap();
    encoder.vcpu_state(0, b"x", &mut out).unwrap();
    encoder.end(&mut out).unwrap();
    let frames = frames(&out, StreamKind::Migration);
    assert_eq!(
        frames[..4],
        [
            Frame::DeviceState {
                name: "acpi_pm".into(),
                bytes: blob.clone()
            },
            Frame::DeviceState {
                name: "séria".into(),
                bytes: vec![]
            },
            Frame::VcpuState {
                index: 1,
                bytes: blob
            },
            Frame::VcpuState {
                index: 0,
                bytes: b"x".to_vec()
            },
        ]
    );
    end_frame(&frames, 0);
}

#[test]
fn postcopy_switch_and_postcopy_pages_round_trip() {
    let mut out = Vec::new();
    let mut encoder = Encoder::start(one_vcpu(), Limits::default(), &mut out).unwrap();
    encoder.memory_pages(0, 0, &[1u8; PAGE], &mut out).unwrap();
    encoder.dirty_round_end(0, 1, 2, &mut out).unwrap();
    encoder.vcpu_state(0, b"regs", &mut out).unwrap();
    encoder.postcopy_switch(2, &mut out).unwrap();
    encoder.memory_pages(1, 7, &[2u8; PAGE], &mut out).unwrap();
    encoder.memory_pages(1, 3, &[0u8; PAGE], &mut out).unwrap();
    encoder.end(&mut out).unwrap();
    let frames = frames(&out, StreamKind::Migration);
    assert_eq!(frames[3], Frame::PostcopySwitch { pages_left: 2 });
    assert_eq!(
        frames[4],
        Frame::MemoryPages(PageRun::from_memory(1, 7, PAGE as u32, &[2u8; PAGE]).unwrap())
    );
    end_frame(&frames, 3);
}

#[test]
fn page_request_stream_round_trips() {
    let info = SourceInfo {
        kind: StreamKind::PageRequests,
        ..source()
    };
    let mut out = Vec::new();
    let mut encoder = Encoder::start(info, Limits::default(), &mut out).unwrap();
    for gfn in [0, 255, 17] {
        encoder.page_request(gfn, &mut out).unwrap();
    }
    encoder.end(&mut out).unwrap();
    let frames = frames(&out, StreamKind::PageRequests);
    assert_eq!(
        frames[..3],
        [
            Frame::PageRequest { gfn: 0 },
            Frame::PageRequest { gfn: 255 },
            Frame::PageRequest { gfn: 17 }
        ]
    );
    end_frame(&frames, 3);
}

#[test]
fn end_carries_the_verified_stream_checksum() {
    let bytes = support::sample_stream();
    let frames = frames(&bytes, StreamKind::Migration);
    let Some(Frame::End { checksum, .. }) = frames.last() else {
        panic!("no End")
    };
    // The chain: the header's CRC, then each frame's CRC but End's.
    let mut chain = crc32fast::Hasher::new();
    chain.update(&bytes[HEADER_LEN - 4..HEADER_LEN]);
    let offsets = support::frame_offsets(&bytes);
    for window in offsets.windows(2) {
        chain.update(&bytes[window[1] - 4..window[1]]);
    }
    assert_eq!(*checksum, chain.finalize());
    end_frame(&frames, 3);
}

#[test]
fn cancel_round_trips_and_ends_the_stream() {
    let mut out = Vec::new();
    let mut encoder = Encoder::start(one_vcpu(), Limits::default(), &mut out).unwrap();
    encoder.memory_pages(0, 0, &[9u8; PAGE], &mut out).unwrap();
    encoder
        .cancel("destination out of memory", &mut out)
        .unwrap();
    assert!(encoder.is_ended());
    let frames = frames(&out, StreamKind::Migration);
    assert_eq!(
        frames[1],
        Frame::Cancel {
            reason: "destination out of memory".into()
        }
    );
}

#[test]
fn zero_page_costs_only_its_marker() {
    let mut out = Vec::new();
    let mut encoder = Encoder::start(one_vcpu(), Limits::default(), &mut out).unwrap();
    let before = out.len();
    encoder
        .memory_pages(0, 0, &[0u8; 3 * PAGE], &mut out)
        .unwrap();
    // Three zero pages: overhead, run header, three one-byte markers. No page data.
    assert_eq!(out.len() - before, FRAME_OVERHEAD + PAGE_RUN_HEADER_LEN + 3);
    assert_eq!(out.len() - before, 28);

    let before = out.len();
    let mut memory = vec![0u8; 3 * PAGE];
    memory[PAGE + 4095] = 1;
    encoder.memory_pages(0, 3, &memory, &mut out).unwrap();
    // One data page among two zero pages: the data page alone adds its bytes.
    assert_eq!(
        out.len() - before,
        FRAME_OVERHEAD + PAGE_RUN_HEADER_LEN + 3 + PAGE
    );
}

#[test]
fn stream_reader_decodes_from_a_read_that_returns_a_byte_at_a_time() {
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buffer[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }
    let bytes = support::sample_stream();
    let mut reader = StreamReader::new(Trickle(&bytes), StreamKind::Migration, Limits::default());
    let mut events = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        events.push(event);
    }
    assert_eq!(
        events,
        decode_all(&bytes, StreamKind::Migration, Limits::default(), 4096).unwrap()
    );
    assert_eq!(events.len(), 7);
    assert!(reader.decoder().is_ended());
}

#[test]
fn push_returns_one_event_at_a_time_and_consumes_only_its_bytes() {
    let bytes = support::sample_stream();
    let mut decoder = Decoder::new(StreamKind::Migration, Limits::default());
    let (consumed, event) = decoder.push(&bytes).unwrap();
    assert_eq!(consumed, HEADER_LEN);
    assert!(matches!(event, Some(Event::Header(_))));
    let (consumed, event) = decoder.push(&bytes[HEADER_LEN..]).unwrap();
    assert_eq!(consumed, support::frame_offsets(&bytes)[1] - HEADER_LEN);
    assert!(matches!(event, Some(Event::Frame(Frame::MemoryPages(_)))));
    assert_eq!(decoder.push(&[]).unwrap(), (0, None));
}

/// One source action in an arbitrary stream.
#[derive(Debug, Clone)]
enum Action {
    /// Pages from `gfn` (kept in range), with each page zero or filled with a byte.
    Pages {
        gfn: u64,
        fills: Vec<u8>,
    },
    EndRound,
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let action = prop_oneof![
        3 => (0u64..256, prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..6))
            .prop_map(|(gfn, fills)| Action::Pages { gfn, fills }),
        1 => Just(Action::EndRound),
    ];
    prop::collection::vec(action, 0..12)
}

fn page_memory(fills: &[u8]) -> Vec<u8> {
    let mut memory = vec![0u8; fills.len() * PAGE];
    for (page, fill) in memory.chunks_mut(PAGE).zip(fills) {
        // A non-zero fill touches one byte, far into the page, to test zero detection too.
        page[PAGE - 1 - usize::from(*fill) % 16] = *fill;
    }
    memory
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_streams_round_trip(
        precopy in actions(),
        devices in prop::collection::vec(("[a-z_]{0,12}", prop::collection::vec(any::<u8>(), 0..64)), 0..4),
        vcpus in 1u32..5,
        postcopy in prop::option::of(prop::collection::vec((0u64..256, prop::collection::vec(any::<u8>(), 1..4)), 0..4)),
        cancel in prop::option::of("[ -~]{0,40}"),
        chunk in 1usize..5000,
    ) {
        let info = SourceInfo { vcpu_count: vcpus, ..source() };
        let pages = info.pages();
        let mut out = Vec::new();
        let mut expected = vec![Event::Header(info)];
        let mut encoder = Encoder::start(info, Limits::default(), &mut out).unwrap();
        let mut round = 0u32;
        let mut open = false;
        let mut total = 0u64;
        for action in &precopy {
            match action {
                Action::Pages { gfn, fills } => {
                    let gfn = (*gfn).min(pages - fills.len() as u64);
                    let memory = page_memory(fills);
                    encoder.memory_pages(round, gfn, &memory, &mut out).unwrap();
                    expected.push(Event::Frame(Frame::MemoryPages(
                        PageRun::from_memory(round, gfn, PAGE as u32, &memory).unwrap(),
                    )));
                    total += fills.len() as u64;
                    open = true;
                }
                Action::EndRound => {
                    encoder.dirty_round_end(round, total, 7, &mut out).unwrap();
                    expected.push(Event::Frame(Frame::DirtyRoundEnd { round, pages_sent: total, pages_left_estimate: 7 }));
                    round += 1;
                    open = false;
                }
            }
        }
        if open {
            encoder.dirty_round_end(round, total, 0, &mut out).unwrap();
            expected.push(Event::Frame(Frame::DirtyRoundEnd { round, pages_sent: total, pages_left_estimate: 0 }));
            round += 1;
        }
        for (name, bytes) in &devices {
            encoder.device_state(name, bytes, &mut out).unwrap();
            expected.push(Event::Frame(Frame::DeviceState { name: name.clone(), bytes: bytes.clone() }));
        }
        for index in (0..vcpus).rev() {
            let bytes = vec![index as u8; index as usize * 3];
            encoder.vcpu_state(index, &bytes, &mut out).unwrap();
            expected.push(Event::Frame(Frame::VcpuState { index, bytes }));
        }
        if let Some(runs) = &postcopy {
            encoder.postcopy_switch(runs.len() as u64, &mut out).unwrap();
            expected.push(Event::Frame(Frame::PostcopySwitch { pages_left: runs.len() as u64 }));
            for (gfn, fills) in runs {
                let gfn = (*gfn).min(pages - fills.len() as u64);
                let memory = page_memory(fills);
                encoder.memory_pages(round, gfn, &memory, &mut out).unwrap();
                expected.push(Event::Frame(Frame::MemoryPages(
                    PageRun::from_memory(round, gfn, PAGE as u32, &memory).unwrap(),
                )));
                total += fills.len() as u64;
            }
        }
        match &cancel {
            Some(reason) => {
                encoder.cancel(reason, &mut out).unwrap();
                expected.push(Event::Frame(Frame::Cancel { reason: reason.clone() }));
            }
            None => encoder.end(&mut out).unwrap(),
        }
        let decoded = decode_all(&out, StreamKind::Migration, Limits::default(), chunk).unwrap();
        if cancel.is_none() {
            let Some(Event::Frame(Frame::End { total_pages, checksum })) = decoded.last() else {
                panic!("no End: {decoded:?}");
            };
            prop_assert_eq!(*total_pages, total);
            expected.push(Event::Frame(Frame::End { total_pages: total, checksum: *checksum }));
        }
        prop_assert_eq!(decoded, expected);
    }
}
