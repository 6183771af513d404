//! vmm-state-file: the versioned, checksummed envelope around a lull-vmm snapshot's state.
//!
//! A snapshot's state file is `header || payload`. The header says what the payload is
//! (magic), which layout it has (format version), how long it is, and its CRC-32, so a
//! truncated, corrupted or foreign file is refused with an error that names the problem
//! before any of it is interpreted. The payload's encoding is the VMM's business.
//!
//! Header layout (little-endian, 24 bytes):
//! ```text
//! 0  magic            b"LULLSNAP"
//! 8  format_version   u32
//! 12 payload_crc32    u32   (CRC-32/ISO-HDLC, the zlib/PNG polynomial)
//! 16 payload_length   u64
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// First eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"LULLSNAP";

/// Size of the fixed header that precedes the payload.
pub const HEADER_LEN: usize = 24;

/// Why a state file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateFileError {
    /// Shorter than the header: the file was cut off or is not a state file.
    TooShortForHeader { length: usize },
    /// The magic bytes differ: this is not a lull-vmm state file.
    BadMagic,
    /// Written by a lull-vmm with another state layout.
    UnsupportedVersion { found: u32, supported: u32 },
    /// The payload is shorter than the header says: the file was truncated.
    Truncated { expected: u64, found: u64 },
    /// Bytes follow the payload: the file was appended to or is two files glued together.
    TrailingBytes { expected: u64, found: u64 },
    /// The payload's CRC-32 differs from the stored one: the file was corrupted.
    ChecksumMismatch { stored: u32, computed: u32 },
}

impl fmt::Display for StateFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShortForHeader { length } => write!(
                f,
                "state file is {length} bytes, shorter than the {HEADER_LEN}-byte header \
                 (truncated, or not a lull-vmm snapshot)"
            ),
            Self::BadMagic => write!(f, "state file does not start with {MAGIC:?}: not a lull-vmm snapshot"),
            Self::UnsupportedVersion { found, supported } => write!(
                f,
                "snapshot format version {found} is not supported (this lull-vmm reads version \
                 {supported}); take the snapshot again with this lull-vmm"
            ),
            Self::Truncated { expected, found } => write!(
                f,
                "state file truncated: header announces {expected} payload bytes, {found} present"
            ),
            Self::TrailingBytes { expected, found } => write!(
                f,
                "state file has trailing bytes: header announces {expected} payload bytes, {found} present"
            ),
            Self::ChecksumMismatch { stored, computed } => write!(
                f,
                "state file corrupted: payload CRC-32 is {computed:#010x}, header says {stored:#010x}"
            ),
        }
    }
}

impl core::error::Error for StateFileError {}

/// Wraps `payload` in a header for `format_version`.
pub fn encode(format_version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&format_version.to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the header of `file` and returns its payload, refusing anything but
/// `supported_version`. Checks run in the order that names the most specific problem:
/// magic, version, length, checksum.
pub fn decode(file: &[u8], supported_version: u32) -> Result<&[u8], StateFileError> {
    let Some((header, payload)) = file.split_first_chunk::<HEADER_LEN>() else {
        return Err(StateFileError::TooShortForHeader { length: file.len() });
    };
    if header[0..8] != MAGIC {
        return Err(StateFileError::BadMagic);
    }
    let found_version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if found_version != supported_version {
        return Err(StateFileError::UnsupportedVersion {
            found: found_version,
            supported: supported_version,
        });
    }
    let stored_crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let mut length_bytes = [0u8; 8];
    length_bytes.copy_from_slice(&header[16..24]);
    let expected = u64::from_le_bytes(length_bytes);
    let found = payload.len() as u64;
    if found < expected {
        return Err(StateFileError::Truncated { expected, found });
    }
    if found > expected {
        return Err(StateFileError::TrailingBytes { expected, found });
    }
    let computed = crc32(payload);
    if computed != stored_crc {
        return Err(StateFileError::ChecksumMismatch {
            stored: stored_crc,
            computed,
        });
    }
    Ok(payload)
}

/// CRC-32/ISO-HDLC (reflected polynomial 0xEDB88320), the checksum zlib and PNG use.
///
/// Table-driven, eight bytes a step ("slice-by-8"): ~10 µs for a 12 KiB state here. Not
/// crc32fast, which with its `std` feature (on in lull-vmm: the migration stream needs its
/// PCLMULQDQ speed) first asks the CPU what it has, and CPUID traps to the hypervisor below
/// on this project's hosts (~11 µs each): the first hash of a process cost 70-110 µs of CPU,
/// on the restore's critical path. A snapshot state is a few KiB; the table loop is enough.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let low = u32::from_le_bytes([word[0], word[1], word[2], word[3]]) ^ crc;
        let high = u32::from_le_bytes([word[4], word[5], word[6], word[7]]);
        crc = TABLES[7][(low & 0xff) as usize]
            ^ TABLES[6][((low >> 8) & 0xff) as usize]
            ^ TABLES[5][((low >> 16) & 0xff) as usize]
            ^ TABLES[4][(low >> 24) as usize]
            ^ TABLES[3][(high & 0xff) as usize]
            ^ TABLES[2][((high >> 8) & 0xff) as usize]
            ^ TABLES[1][((high >> 16) & 0xff) as usize]
            ^ TABLES[0][(high >> 24) as usize];
    }
    for &byte in words.remainder() {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ u32::from(byte)) & 0xff) as usize];
    }
    !crc
}

/// `TABLES[0][b]`: the CRC of byte `b`; `TABLES[k][b]`: the same, followed by `k` zero bytes.
static TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut byte = 0;
    while byte < 256 {
        let mut slice = 1;
        while slice < 8 {
            let previous = tables[slice - 1][byte];
            tables[slice][byte] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            slice += 1;
        }
        byte += 1;
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The catalogue check value for CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn crc32_matches_crc32fast_at_every_length_and_alignment() {
        let bytes: Vec<u8> = (0..1031u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for end in start..bytes.len() {
                let slice = &bytes[start..end];
                assert_eq!(crc32(slice), crc32fast::hash(slice), "{start}..{end}");
            }
        }
    }

    #[test]
    fn round_trip_returns_the_payload() {
        let file = encode(3, b"vcpu state");
        assert_eq!(file.len(), HEADER_LEN + 10);
        assert_eq!(decode(&file, 3), Ok(&b"vcpu state"[..]));
    }

    #[test]
    fn empty_payload_round_trips() {
        assert_eq!(decode(&encode(1, b""), 1), Ok(&b""[..]));
    }

    #[test]
    fn short_file_is_refused() {
        assert_eq!(
            decode(b"LULL", 1),
            Err(StateFileError::TooShortForHeader { length: 4 })
        );
    }

    #[test]
    fn foreign_file_is_refused() {
        let mut file = encode(1, b"x");
        file[0] = b'X';
        assert_eq!(decode(&file, 1), Err(StateFileError::BadMagic));
    }

    #[test]
    fn wrong_version_names_both_versions() {
        let file = encode(7, b"x");
        let error = decode(&file, 2).unwrap_err();
        assert_eq!(
            error,
            StateFileError::UnsupportedVersion {
                found: 7,
                supported: 2
            }
        );
        let message = alloc::format!("{error}");
        assert!(message.contains('7') && message.contains('2'), "{message}");
    }

    #[test]
    fn truncated_file_is_refused() {
        let file = encode(1, b"0123456789");
        assert_eq!(
            decode(&file[..file.len() - 3], 1),
            Err(StateFileError::Truncated {
                expected: 10,
                found: 7
            })
        );
    }

    #[test]
    fn appended_bytes_are_refused() {
        let mut file = encode(1, b"0123456789");
        file.push(0);
        assert_eq!(
            decode(&file, 1),
            Err(StateFileError::TrailingBytes {
                expected: 10,
                found: 11
            })
        );
    }

    #[test]
    fn every_single_bit_flip_in_the_payload_is_detected() {
        let file = encode(1, b"registers and lapic");
        for byte in HEADER_LEN..file.len() {
            for bit in 0..8 {
                let mut corrupted = file.clone();
                corrupted[byte] ^= 1 << bit;
                assert!(
                    matches!(
                        decode(&corrupted, 1),
                        Err(StateFileError::ChecksumMismatch { .. })
                    ),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn corrupted_checksum_field_is_detected() {
        let mut file = encode(1, b"abc");
        file[12] ^= 0x40;
        assert!(matches!(
            decode(&file, 1),
            Err(StateFileError::ChecksumMismatch { .. })
        ));
    }
}
