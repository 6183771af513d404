//! Resource descriptors (ACPI 6.5 section 6.4): the byte format of `_CRS`/`_PRS` buffers, decoded
//! into the few kinds a kernel acts on (I/O ports, memory ranges, interrupts); everything else is
//! kept as its tag so a listing can still show it.

use alloc::vec::Vec;

use crate::Error;

/// One decoded resource descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// I/O ports `base..base+length` (the I/O and fixed-location I/O descriptors; for a
    /// relocatable range, its minimum base).
    Io { base: u16, length: u16 },
    /// A physical memory range (24-bit, 32-bit, fixed 32-bit memory and memory address-space
    /// descriptors).
    Memory {
        base: u64,
        length: u64,
        writable: bool,
    },
    /// A bus-number or I/O range from a Word/DWord/QWord address-space descriptor that is not
    /// memory: `kind` 1 is I/O, 2 is a bus-number range.
    AddressRange { kind: u8, base: u64, length: u64 },
    /// Interrupt lines: ISA IRQs for the small IRQ descriptor, GSIs for the extended one.
    Interrupt {
        irqs: Vec<u32>,
        level_triggered: bool,
        active_low: bool,
        shared: bool,
        /// Whether the extended descriptor said the device consumes (not produces) it.
        consumer: bool,
    },
    /// A Generic Register descriptor (a register given as a Generic Address Structure).
    Register {
        space: u8,
        bit_width: u8,
        bit_offset: u8,
        address: u64,
    },
    /// A descriptor decoded only as far as its tag (DMA, vendor, GPIO, ...).
    Other { tag: u8 },
}

fn u16_at(bytes: &[u8], offset: usize) -> Result<u16, Error> {
    let b = bytes.get(offset..offset + 2).ok_or(Error::BadResource)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], offset: usize) -> Result<u32, Error> {
    let b = bytes.get(offset..offset + 4).ok_or(Error::BadResource)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], offset: usize) -> Result<u64, Error> {
    let b = bytes.get(offset..offset + 8).ok_or(Error::BadResource)?;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(b);
    Ok(u64::from_le_bytes(raw))
}

/// Decodes a resource template (a `_CRS` buffer) up to its end tag. A truncated or malformed
/// descriptor is an error, never a panic.
pub fn parse(buffer: &[u8]) -> Result<Vec<Resource>, Error> {
    let mut resources = Vec::new();
    let mut offset = 0;
    while offset < buffer.len() {
        let tag = buffer[offset];
        if tag & 0x80 == 0 {
            // Small item: bits 6-3 name it, bits 2-0 give the length.
            let name = (tag >> 3) & 0x0F;
            let length = (tag & 0x07) as usize;
            let body = buffer
                .get(offset + 1..offset + 1 + length)
                .ok_or(Error::BadResource)?;
            match name {
                0x04 => {
                    let mask = u16_at(body, 0)?;
                    let info = body.get(2).copied().unwrap_or(0x01);
                    let irqs = (0..16).filter(|bit| mask & (1 << bit) != 0).collect();
                    resources.push(Resource::Interrupt {
                        irqs,
                        level_triggered: info & 0x01 == 0,
                        active_low: info & 0x08 != 0,
                        shared: info & 0x10 != 0,
                        consumer: true,
                    });
                }
                0x08 => resources.push(Resource::Io {
                    base: u16_at(body, 1)?,
                    length: *body.get(6).ok_or(Error::BadResource)? as u16,
                }),
                0x09 => resources.push(Resource::Io {
                    base: u16_at(body, 0)? & 0x3FF,
                    length: *body.get(2).ok_or(Error::BadResource)? as u16,
                }),
                0x0F => return Ok(resources),
                other => resources.push(Resource::Other { tag: other }),
            }
            offset += 1 + length;
        } else {
            let length = u16_at(buffer, offset + 1)? as usize;
            let body = buffer
                .get(offset + 3..offset + 3 + length)
                .ok_or(Error::BadResource)?;
            let name = tag & 0x7F;
            match name {
                0x01 => resources.push(Resource::Memory {
                    base: (u16_at(body, 1)? as u64) << 8,
                    length: (u16_at(body, 7)? as u64) << 8,
                    writable: body[0] & 1 != 0,
                }),
                0x02 => resources.push(Resource::Register {
                    space: *body.first().ok_or(Error::BadResource)?,
                    bit_width: *body.get(1).ok_or(Error::BadResource)?,
                    bit_offset: *body.get(2).ok_or(Error::BadResource)?,
                    address: u64_at(body, 4)?,
                }),
                0x05 => resources.push(Resource::Memory {
                    base: u32_at(body, 1)? as u64,
                    length: u32_at(body, 13)? as u64,
                    writable: body[0] & 1 != 0,
                }),
                0x06 => resources.push(Resource::Memory {
                    base: u32_at(body, 1)? as u64,
                    length: u32_at(body, 5)? as u64,
                    writable: body[0] & 1 != 0,
                }),
                0x07 | 0x08 | 0x0A => {
                    // DWord, Word, QWord address space: type, flags, type flags, then
                    // granularity, minimum, maximum, translation, length of the given width.
                    let width = match name {
                        0x08 => 2,
                        0x07 => 4,
                        _ => 8,
                    };
                    let field = |index: usize| -> Result<u64, Error> {
                        let at = 3 + index * width;
                        match width {
                            2 => u16_at(body, at).map(u64::from),
                            4 => u32_at(body, at).map(u64::from),
                            _ => u64_at(body, at),
                        }
                    };
                    let kind = *body.first().ok_or(Error::BadResource)?;
                    let base = field(1)?;
                    let length = field(4)?;
                    if kind == 0 {
                        resources.push(Resource::Memory {
                            base,
                            length,
                            writable: body.get(2).is_some_and(|f| f & 1 != 0),
                        });
                    } else {
                        resources.push(Resource::AddressRange { kind, base, length });
                    }
                }
                0x09 => {
                    let flags = *body.first().ok_or(Error::BadResource)?;
                    let count = *body.get(1).ok_or(Error::BadResource)? as usize;
                    let irqs = (0..count)
                        .map(|i| u32_at(body, 2 + i * 4))
                        .collect::<Result<Vec<u32>, Error>>()?;
                    resources.push(Resource::Interrupt {
                        irqs,
                        level_triggered: flags & 0x02 == 0,
                        active_low: flags & 0x04 != 0,
                        shared: flags & 0x08 != 0,
                        consumer: flags & 0x01 != 0,
                    });
                }
                other => resources.push(Resource::Other { tag: 0x80 | other }),
            }
            offset += 3 + length;
        }
    }
    // No end tag: accept what was decoded (firmware often relies on the buffer's end).
    Ok(resources)
}

/// Decodes a compressed EISA id (`EisaId("PNP0A08")` compiles to a 32-bit integer): three
/// 5-bit letters and four hex digits, stored big-endian in a little-endian integer.
pub fn eisa_id(value: u32) -> [u8; 7] {
    let swapped = value.swap_bytes();
    let letter = |shift: u32| (((swapped >> shift) & 0x1F) as u8).wrapping_add(0x40);
    let hex = |nibble: u32| b"0123456789ABCDEF"[((swapped >> nibble) & 0xF) as usize];
    [
        letter(26),
        letter(21),
        letter(16),
        hex(12),
        hex(8),
        hex(4),
        hex(0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn eisa_ids_decode() {
        // EisaId("PNP0A08") and EisaId("PNP0501") as iasl compiles them.
        assert_eq!(&eisa_id(0x080A_D041), b"PNP0A08");
        assert_eq!(&eisa_id(0x0105_D041), b"PNP0501");
        assert_eq!(&eisa_id(0x0C0C_D041), b"PNP0C0C");
    }

    #[test]
    fn serial_port_template_decodes() {
        // IO(Decode16, 0x3F8, 0x3F8, 0x00, 0x08), IRQNoFlags(){4}, EndTag.
        let template = [
            0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00,
        ];
        let resources = parse(&template).unwrap();
        assert_eq!(
            resources[0],
            Resource::Io {
                base: 0x3F8,
                length: 8
            }
        );
        match &resources[1] {
            Resource::Interrupt { irqs, .. } => assert_eq!(irqs, &vec![4]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn extended_interrupt_and_memory_decode() {
        // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {9},
        // Memory32Fixed(ReadWrite, 0xFEA00000, 0x100), EndTag.
        let template = [
            0x89, 0x06, 0x00, 0x03, 0x01, 0x09, 0x00, 0x00, 0x00, //
            0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0xA0, 0xFE, 0x00, 0x01, 0x00, 0x00, //
            0x79, 0x00,
        ];
        let resources = parse(&template).unwrap();
        assert_eq!(
            resources[0],
            Resource::Interrupt {
                irqs: vec![9],
                level_triggered: false,
                active_low: false,
                shared: false,
                consumer: true
            }
        );
        assert_eq!(
            resources[1],
            Resource::Memory {
                base: 0xFEA0_0000,
                length: 0x100,
                writable: true
            }
        );
    }

    #[test]
    fn truncated_templates_are_errors_not_panics() {
        for cut in 0..12 {
            let template = [
                0x89, 0x06, 0x00, 0x03, 0x01, 0x09, 0x00, 0x00, 0x00, 0x79, 0x00,
            ];
            let _ = parse(&template[..cut]);
        }
        assert_eq!(parse(&[0x89, 0xFF, 0xFF, 0x00]), Err(Error::BadResource));
    }
}
