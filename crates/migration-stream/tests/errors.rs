//! Each decode (and encode) error, provoked on purpose, with the fields and message a user
//! needs to act on it.

mod support;

use lull_migration_stream::{
    Decoder, Encoder, Event, Expectation, FrameType, Limits, SourceInfo, StreamError, StreamKind,
    FORMAT_VERSION, HEADER_LEN,
};
use support::{decode_all, frame_offsets, raw_frame, reseal_frame, sample_stream, source, PAGE};

fn decode(bytes: &[u8]) -> Result<Vec<Event>, StreamError> {
    decode_all(bytes, StreamKind::Migration, Limits::default(), usize::MAX)
}

/// A header for `info` followed by `frames` (raw), so tests can write what the encoder won't.
fn stream_of(info: SourceInfo, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::start(info, Limits::default(), &mut out).unwrap();
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out
}

fn page_run_payload(round: u32, gfn: u64, markers: &[u8], data: &[u8]) -> Vec<u8> {
    let mut payload = round.to_le_bytes().to_vec();
    payload.extend_from_slice(&gfn.to_le_bytes());
    payload.extend_from_slice(&(markers.len() as u32).to_le_bytes());
    payload.extend_from_slice(markers);
    payload.extend_from_slice(data);
    payload
}

#[test]
fn foreign_stream_is_bad_magic_from_its_first_byte() {
    let mut decoder = Decoder::new(StreamKind::Migration, Limits::default());
    assert!(matches!(
        decoder.push(b"GET / HTTP/1.1"),
        Err(StreamError::BadMagic)
    ));
    // After an error the decoder refuses more input rather than resynchronising on garbage.
    assert!(matches!(decoder.push(b"x"), Err(StreamError::AfterError)));
    let mut bytes = sample_stream();
    bytes[7] ^= 1;
    assert!(matches!(decode(&bytes), Err(StreamError::BadMagic)));
}

#[test]
fn wrong_version_names_both_versions() {
    let mut bytes = sample_stream();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    let error = decode(&bytes).unwrap_err();
    assert!(
        matches!(error, StreamError::UnsupportedVersion { found: 7, supported } if supported == FORMAT_VERSION),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("version 7") && message.contains(&format!("version {FORMAT_VERSION}")),
        "{message}"
    );
    // Refused as soon as the version field is complete, before the rest of the header.
    let mut decoder = Decoder::new(StreamKind::Migration, Limits::default());
    assert!(matches!(
        decoder.push(&bytes[..12]),
        Err(StreamError::UnsupportedVersion { found: 7, .. })
    ));
}

#[test]
fn an_older_version_is_refused_as_older_with_what_changed() {
    assert_eq!(
        FORMAT_VERSION, 2,
        "update the history in format.rs and this test"
    );
    let mut bytes = sample_stream();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let error = decode(&bytes).unwrap_err();
    assert!(
        matches!(
            error,
            StreamError::OlderVersion {
                found: 1,
                supported: 2
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("version 1 is from an older lull-vmm")
            && message.contains("virtio")
            && message.contains("upgrade the source"),
        "{message}"
    );
    // Version 0 never existed: not "older", just unsupported.
    bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        decode(&bytes),
        Err(StreamError::UnsupportedVersion { found: 0, .. })
    ));
}

#[test]
fn corrupted_header_field_is_a_header_checksum_error() {
    let mut bytes = sample_stream();
    bytes[24] ^= 0x10; // memory size
    assert!(matches!(
        decode(&bytes),
        Err(StreamError::HeaderChecksum { .. })
    ));
}

#[test]
fn crossed_connections_are_refused_at_the_header() {
    let bytes = sample_stream();
    let error = decode_all(&bytes, StreamKind::PageRequests, Limits::default(), 64).unwrap_err();
    assert!(matches!(
        error,
        StreamError::WrongStreamKind {
            expected: StreamKind::PageRequests,
            found: 0
        }
    ));
    assert!(error.to_string().contains("crossed"), "{error}");
}

#[test]
fn corrupted_byte_is_a_frame_checksum_error_naming_the_frame() {
    let bytes = sample_stream();
    let offsets = frame_offsets(&bytes);
    // A byte inside the device state's blob (frame 2), and the last byte of page data (frame 0).
    for (frame_index, at) in [(2u64, offsets[3] - 6), (0, offsets[1] - 5)] {
        let mut corrupted = bytes.clone();
        corrupted[at] ^= 0x01;
        let error = decode(&corrupted).unwrap_err();
        assert!(
            matches!(error, StreamError::FrameChecksum { frame_index: index, .. } if index == frame_index),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(&format!("frame {frame_index}")),
            "{error}"
        );
    }
}

#[test]
fn every_single_bit_flip_after_the_header_is_refused() {
    let bytes = sample_stream();
    for byte in HEADER_LEN..bytes.len() {
        for bit in 0..8 {
            let mut corrupted = bytes.clone();
            corrupted[byte] ^= 1 << bit;
            assert!(
                decode(&corrupted).is_err(),
                "flip of bit {bit} in byte {byte} went unnoticed"
            );
        }
    }
}

#[test]
fn truncated_stream_says_how_much_of_the_frame_arrived() {
    let bytes = sample_stream();
    let offsets = frame_offsets(&bytes);
    // Cut inside the device-state frame (frame 2), 3 bytes past its start.
    let cut = &bytes[..offsets[2] + 3];
    let frame_len = offsets[3] - offsets[2];
    let error = decode(cut).unwrap_err();
    assert!(
        matches!(
            error,
            StreamError::Truncated {
                expected: 5,
                got: 3
            }
        ),
        "{error:?}"
    );
    let cut = &bytes[..offsets[2] + 7];
    assert!(matches!(
        decode(cut),
        Err(StreamError::Truncated { expected, got: 7 }) if expected == frame_len as u64
    ));
    assert!(matches!(
        decode(&bytes[..10]),
        Err(StreamError::Truncated {
            expected: 36,
            got: 10
        })
    ));
}

#[test]
fn stream_cut_between_frames_is_end_missing() {
    let bytes = sample_stream();
    let offsets = frame_offsets(&bytes);
    let error = decode(&bytes[..offsets[3]]).unwrap_err();
    assert!(
        matches!(error, StreamError::EndMissing { frames: 3 }),
        "{error:?}"
    );
    assert!(error.to_string().contains("incomplete"), "{error}");
}

#[test]
fn dropped_or_swapped_whole_frames_fail_the_stream_checksum() {
    let bytes = sample_stream();
    let offsets = frame_offsets(&bytes);
    // Swap the two vCPU frames (3 and 4): each is intact and the order still holds.
    let mut swapped = bytes[..offsets[3]].to_vec();
    swapped.extend_from_slice(&bytes[offsets[4]..offsets[5]]);
    swapped.extend_from_slice(&bytes[offsets[3]..offsets[4]]);
    swapped.extend_from_slice(&bytes[offsets[5]..]);
    assert!(matches!(
        decode(&swapped),
        Err(StreamError::StreamChecksum { .. })
    ));
    // Drop the device frame (2).
    let mut dropped = bytes[..offsets[2]].to_vec();
    dropped.extend_from_slice(&bytes[offsets[3]..]);
    let error = decode(&dropped).unwrap_err();
    assert!(
        matches!(error, StreamError::StreamChecksum { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("lost, repeated or reordered"),
        "{error}"
    );
}

#[test]
fn unknown_frame_type_is_refused_at_its_tag() {
    let mut bytes = stream_of(source(), &[]);
    bytes.push(0x42);
    let mut decoder = Decoder::new(StreamKind::Migration, Limits::default());
    decoder.push_all(&bytes[..HEADER_LEN], |_| {}).unwrap();
    assert!(matches!(
        decoder.push(&bytes[HEADER_LEN..]),
        Err(StreamError::UnknownFrameType(0x42))
    ));
}

#[test]
fn huge_length_is_frame_too_large_without_allocating_it() {
    let mut bytes = stream_of(source(), &[]);
    bytes.push(FrameType::DeviceState.tag());
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 64]);
    let mut decoder = Decoder::new(StreamKind::Migration, Limits::default());
    let error = decoder.push_all(&bytes, |_| {}).unwrap_err();
    let largest = decoder.buffer_capacity();
    assert!(
        matches!(error, StreamError::FrameTooLarge { len, max } if len == u64::from(u32::MAX) && max == 4 << 20),
        "{error:?}"
    );
    assert!(largest < 4096, "the decoder holds {largest} bytes");
    // Just over a small limit: refused as well.
    let limits = Limits {
        max_frame_len: 100,
        ..Limits::default()
    };
    let mut bytes = stream_of(source(), &[]);
    bytes.extend_from_slice(&raw_frame(FrameType::DeviceState.tag(), &[0; 101]));
    assert!(matches!(
        decode_all(&bytes, StreamKind::Migration, limits, 1),
        Err(StreamError::FrameTooLarge { len: 101, max: 100 })
    ));
}

#[test]
fn too_many_pages_in_one_frame_is_refused() {
    let limits = Limits {
        max_pages_per_frame: 2,
        ..Limits::default()
    };
    let frame = raw_frame(1, &page_run_payload(0, 0, &[0, 0, 0], &[]));
    let bytes = stream_of(source(), &[frame]);
    assert!(matches!(
        decode_all(&bytes, StreamKind::Migration, limits, 100),
        Err(StreamError::TooManyPages { count: 3, max: 2 })
    ));
    // The encoder refuses to write it, and leaves its output untouched.
    let mut out = Vec::new();
    let mut encoder = Encoder::start(source(), limits, &mut out).unwrap();
    let before = out.len();
    assert!(matches!(
        encoder.memory_pages(0, 0, &[0; 3 * PAGE], &mut out),
        Err(StreamError::TooManyPages { count: 3, max: 2 })
    ));
    assert_eq!(out.len(), before);
}

#[test]
fn page_outside_guest_memory_is_refused() {
    // 1 MiB of 4 KiB pages: gfns 0..256. A run of two from 255 reaches past the end.
    let bytes = stream_of(
        source(),
        &[raw_frame(1, &page_run_payload(0, 255, &[0, 0], &[]))],
    );
    let error = decode(&bytes).unwrap_err();
    assert!(
        matches!(
            error,
            StreamError::PageOutOfRange {
                gfn: 256,
                pages: 256
            }
        ),
        "{error:?}"
    );
    // A first gfn so large that gfn + count overflows.
    let bytes = stream_of(
        source(),
        &[raw_frame(1, &page_run_payload(0, u64::MAX, &[0, 0], &[]))],
    );
    assert!(matches!(
        decode(&bytes),
        Err(StreamError::PageOutOfRange {
            gfn: u64::MAX,
            pages: 256
        })
    ));
    let requests = SourceInfo {
        kind: StreamKind::PageRequests,
        ..source()
    };
    let bytes = stream_of(requests, &[raw_frame(6, &256u64.to_le_bytes())]);
    assert!(matches!(
        decode_all(&bytes, StreamKind::PageRequests, Limits::default(), 7),
        Err(StreamError::PageOutOfRange {
            gfn: 256,
            pages: 256
        })
    ));
    let mut out = Vec::new();
    let mut encoder = Encoder::start(source(), Limits::default(), &mut out).unwrap();
    assert!(matches!(
        encoder.memory_pages(0, 256, &[0; PAGE], &mut out),
        Err(StreamError::PageOutOfRange {
            gfn: 256,
            pages: 256
        })
    ));
}

#[test]
fn malformed_payloads_name_the_frame_and_the_problem() {
    let cases: [(Vec<u8>, &str); 5] = [
        (
            raw_frame(1, &page_run_payload(0, 0, &[2], &[])),
            "page marker",
        ),
        (
            raw_frame(1, &page_run_payload(0, 0, &[1], &[0; 10])),
            "does not match",
        ),
        (
            raw_frame(1, &page_run_payload(0, 0, &[], &[])),
            "at least one page",
        ),
        (raw_frame(2, &[0; 19]), "shorter"),
        (raw_frame(3, &[2, 0, 0xff, 0xfe]), "not UTF-8"),
    ];
    for (frame, reason) in cases {
        let error = decode(&stream_of(source(), &[frame])).unwrap_err();
        assert!(
            matches!(error, StreamError::MalformedFrame { frame_index: 0, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(reason), "{error}");
    }
}

#[test]
fn long_names_and_foreign_vcpus_are_refused() {
    let mut payload = 65u16.to_le_bytes().to_vec();
    payload.extend_from_slice(&[b'a'; 65]);
    assert!(matches!(
        decode(&stream_of(source(), &[raw_frame(3, &payload)])),
        Err(StreamError::NameTooLong {
            len: 65,
            max: 64,
            ..
        })
    ));
    assert!(matches!(
        decode(&stream_of(source(), &[raw_frame(4, &2u32.to_le_bytes())])),
        Err(StreamError::VcpuOutOfRange {
            index: 2,
            vcpu_count: 2
        })
    ));
    let mut out = Vec::new();
    let mut encoder = Encoder::start(source(), Limits::default(), &mut out).unwrap();
    assert!(matches!(
        encoder.device_state(&"n".repeat(65), b"", &mut out),
        Err(StreamError::NameTooLong { len: 65, .. })
    ));
}

#[test]
fn pages_after_end_are_an_unexpected_frame() {
    let mut bytes = sample_stream();
    bytes.extend_from_slice(&raw_frame(1, &page_run_payload(0, 0, &[0], &[])));
    let error = decode(&bytes).unwrap_err();
    assert!(
        matches!(
            error,
            StreamError::UnexpectedFrame {
                expected: Expectation::Nothing,
                found: FrameType::MemoryPages
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("already ended"), "{error}");
}

#[test]
fn out_of_order_streams_are_refused() {
    let vcpu0 = raw_frame(4, &0u32.to_le_bytes());
    let vcpu1 = raw_frame(4, &1u32.to_le_bytes());
    let pages = |round: u32| raw_frame(1, &page_run_payload(round, 0, &[0], &[]));
    let round_end = |round: u32| {
        let mut payload = round.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]);
        raw_frame(2, &payload)
    };
    let postcopy = raw_frame(5, &0u64.to_le_bytes());
    let cases: Vec<(Vec<Vec<u8>>, StreamError)> = vec![
        // State while round 0 is still open.
        (
            vec![pages(0), vcpu0.clone()],
            StreamError::UnexpectedFrame {
                expected: Expectation::RoundEnd { round: 0 },
                found: FrameType::VcpuState,
            },
        ),
        // Pages after the state phase began.
        (
            vec![vcpu0.clone(), pages(0)],
            StreamError::UnexpectedFrame {
                expected: Expectation::State,
                found: FrameType::MemoryPages,
            },
        ),
        // Post-copy before any state.
        (
            vec![postcopy.clone()],
            StreamError::UnexpectedFrame {
                expected: Expectation::PrecopyRound { round: 0 },
                found: FrameType::PostcopySwitch,
            },
        ),
        // A page request on the migration stream.
        (
            vec![raw_frame(6, &0u64.to_le_bytes())],
            StreamError::UnexpectedFrame {
                expected: Expectation::PrecopyRound { round: 0 },
                found: FrameType::PageRequest,
            },
        ),
        // Round 1's pages while round 0 is open.
        (
            vec![pages(0), pages(1)],
            StreamError::WrongRound {
                expected: 0,
                found: 1,
            },
        ),
        (
            vec![round_end(0), round_end(0)],
            StreamError::WrongRound {
                expected: 1,
                found: 0,
            },
        ),
        (
            vec![vcpu0.clone(), vcpu0.clone()],
            StreamError::DuplicateVcpuState { index: 0 },
        ),
        (
            vec![vcpu0.clone(), postcopy],
            StreamError::VcpuStateMissing {
                index: 1,
                found: FrameType::PostcopySwitch,
            },
        ),
        (
            vec![vcpu1, vcpu0, pages(0)],
            StreamError::UnexpectedFrame {
                expected: Expectation::State,
                found: FrameType::MemoryPages,
            },
        ),
    ];
    for (frames, expected) in cases {
        let error = decode(&stream_of(source(), &frames)).unwrap_err();
        assert_eq!(format!("{error:?}"), format!("{expected:?}"));
    }
}

#[test]
fn end_with_a_wrong_page_count_is_refused() {
    // An End with the right stream checksum but a count the frames do not add up to.
    let mut bytes = stream_of(
        SourceInfo {
            vcpu_count: 1,
            ..source()
        },
        &[raw_frame(4, &0u32.to_le_bytes())],
    );
    let mut chain = crc32fast::Hasher::new();
    chain.update(&bytes[HEADER_LEN - 4..HEADER_LEN]);
    chain.update(&bytes[bytes.len() - 4..]);
    let mut end = 5u64.to_le_bytes().to_vec();
    end.extend_from_slice(&chain.finalize().to_le_bytes());
    bytes.extend_from_slice(&raw_frame(7, &end));
    let error = decode(&bytes).unwrap_err();
    assert!(
        matches!(
            error,
            StreamError::PageCountMismatch {
                announced: 5,
                received: 0
            }
        ),
        "{error:?}"
    );
    // With the count right, the same stream decodes.
    let at = frame_offsets(&bytes)[1];
    bytes[at + 5..at + 13].copy_from_slice(&0u64.to_le_bytes());
    reseal_frame(&mut bytes, at);
    decode(&bytes).unwrap();
}

#[test]
fn bad_source_info_is_refused_at_both_ends() {
    let bad = [
        SourceInfo {
            page_size: 4097,
            ..source()
        },
        SourceInfo {
            page_size: 1024,
            ..source()
        },
        SourceInfo {
            memory_bytes: 4096 * 3 + 1,
            ..source()
        },
        SourceInfo {
            memory_bytes: 0,
            ..source()
        },
        SourceInfo {
            vcpu_count: 0,
            ..source()
        },
        SourceInfo {
            vcpu_count: 4097,
            ..source()
        },
    ];
    for info in bad {
        assert!(
            Encoder::start(info, Limits::default(), &mut Vec::new()).is_err(),
            "{info:?}"
        );
        // Write the header by hand (the encoder refuses to), sealed with a correct CRC.
        let mut header = b"LULLMIGR".to_vec();
        for field in [FORMAT_VERSION, 0, info.page_size, info.vcpu_count] {
            header.extend_from_slice(&field.to_le_bytes());
        }
        header.extend_from_slice(&info.memory_bytes.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        let error = decode(&header).unwrap_err();
        assert!(
            matches!(
                error,
                StreamError::BadPageSize { .. }
                    | StreamError::BadMemorySize { .. }
                    | StreamError::BadVcpuCount { .. }
            ),
            "{info:?}: {error:?}"
        );
    }
}

#[test]
fn encoder_refuses_out_of_order_calls_and_writes_nothing() {
    let mut out = Vec::new();
    let mut encoder = Encoder::start(source(), Limits::default(), &mut out).unwrap();
    let before = out.len();
    assert!(matches!(
        encoder.end(&mut out),
        Err(StreamError::UnexpectedFrame {
            found: FrameType::End,
            ..
        })
    ));
    assert!(matches!(
        encoder.page_request(0, &mut out),
        Err(StreamError::UnexpectedFrame {
            found: FrameType::PageRequest,
            ..
        })
    ));
    assert!(matches!(
        encoder.memory_pages(0, 0, &[0; 100], &mut out),
        Err(StreamError::PagesNotWhole {
            len: 100,
            page_size: 4096
        })
    ));
    assert_eq!(out.len(), before);
}

#[test]
fn io_errors_from_the_reader_are_typed() {
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer reset",
            ))
        }
    }
    let mut reader =
        lull_migration_stream::StreamReader::new(Broken, StreamKind::Migration, Limits::default());
    let error = reader.next_event().unwrap_err();
    assert!(matches!(error, StreamError::Io(_)));
    assert!(error.to_string().contains("peer reset"), "{error}");
}
