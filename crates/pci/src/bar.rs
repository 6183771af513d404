//! Base address registers: decoding and sizing.
//!
//! A BAR tells where a function's registers are (the address firmware assigned) but not how
//! large the window is. The size comes from the sizing protocol of the PCI specification: write
//! all ones to the BAR, read it back, restore the original value. The address bits the device
//! does not decode are hardwired to zero, so the read-back value is a mask whose lowest set bit
//! is the window's size (the window is naturally aligned, hence a power of two). The low bits
//! (bit 0 for memory/I-O, 2:1 for a memory BAR's width, 3 for prefetchable) are read-only and
//! come back unchanged. A 64-bit memory BAR takes two slots; its upper dword is sized the same
//! way and the mask is the concatenation.
//!
//! **Decoding is switched off while sizing.** Between the all-ones write and the restore, the
//! BAR claims a window at the top of the address space (for a 32-bit BAR of 4 KiB:
//! 0xFFFF_F000..=0xFFFF_FFFF, where the BIOS flash, the I/O APIC and the local APIC live; for an
//! I/O BAR, ports near 0xFFFF). If the command register's memory or I/O enable bit were set, an
//! access by another CPU, or a DMA, to that window would be claimed by this device instead of
//! its rightful owner. So [`size_bars`] clears both enables, sizes every BAR, and writes the
//! original command register back (Linux's `__pci_read_base` does the same, except for devices
//! flagged `mmio_always_on`, such as host bridges, which this crate does not special-case).
//!
//! Nothing here panics on a strange device: a BAR that reads back all ones (the function went
//! away, or is broken), a reserved memory type, type bits that change under the write, a mask
//! with holes (not a power-of-two window) or a 64-bit BAR in the last slot becomes
//! [`Bar::Invalid`] with a [`BarError`].

use core::fmt;

use crate::access::ConfigAccess;
use crate::header::{command, set_command, BAR0};
use pci_types::{CommandRegister, PciAddress};

/// Number of BAR slots in a type 0 header.
pub const MAX_BARS: usize = 6;

/// Address width a memory BAR can be placed at (bits 2:1 of the BAR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryWidth {
    /// Anywhere in the low 4 GiB (type 00).
    Bits32,
    /// Below 1 MiB (type 01, a PCI 2.x legacy encoding; treated as 32-bit).
    Below1M,
    /// Anywhere in the 64-bit space; the BAR takes this slot and the next (type 10).
    Bits64,
}

/// One BAR slot after sizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Not implemented: the slot reads back zero after writing all ones.
    Absent,
    /// A memory window.
    Memory {
        /// Address assigned by firmware (0 when unassigned).
        address: u64,
        /// Window size in bytes, a power of two.
        size: u64,
        /// Where the window may be placed.
        width: MemoryWidth,
        /// Reads have no side effects; the window may be mapped write-combining.
        prefetchable: bool,
    },
    /// An I/O port window.
    Io {
        /// First port assigned by firmware.
        port: u32,
        /// Window size in ports, a power of two.
        size: u32,
    },
    /// The upper dword of the 64-bit memory BAR in the slot before.
    Upper64,
    /// The slot could not be decoded.
    Invalid(BarError),
}

impl Bar {
    /// Whether the slot decodes a window (memory or I/O).
    pub fn is_present(&self) -> bool {
        matches!(self, Bar::Memory { .. } | Bar::Io { .. })
    }

    /// The window's base and size, for memory and I/O BARs.
    pub fn window(&self) -> Option<(u64, u64)> {
        match *self {
            Bar::Memory { address, size, .. } => Some((address, size)),
            Bar::Io { port, size } => Some((u64::from(port), u64::from(size))),
            _ => None,
        }
    }
}

/// Why a BAR slot could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// The BAR read back 0xFFFF_FFFF: nothing answered (a surprise-removed or broken function).
    AllOnes,
    /// Memory type 11b, reserved by the specification.
    ReservedMemoryType {
        /// The BAR's original value.
        raw: u32,
    },
    /// The read-only type bits changed when all ones were written.
    TypeBitsChanged {
        /// Value before sizing.
        before: u32,
        /// Value read back after writing all ones.
        after: u32,
    },
    /// The writable address bits have holes, so the window is not a power of two.
    NotPowerOfTwo {
        /// The address mask read back (64-bit for a 64-bit BAR).
        mask: u64,
    },
    /// A 64-bit BAR in the header's last slot, with no slot for its upper half.
    Truncated64,
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BarError::AllOnes => f.write_str("reads back all ones (no device answering)"),
            BarError::ReservedMemoryType { raw } => {
                write!(f, "reserved memory type (raw {raw:#010x})")
            }
            BarError::TypeBitsChanged { before, after } => {
                write!(
                    f,
                    "read-only type bits changed ({before:#010x} -> {after:#010x})"
                )
            }
            BarError::NotPowerOfTwo { mask } => {
                write!(f, "size mask {mask:#x} has holes (size not a power of two)")
            }
            BarError::Truncated64 => f.write_str("64-bit BAR in the last slot"),
        }
    }
}

/// Size from an address mask (the writable bits read back): the lowest set bit, provided the set
/// bits are contiguous above it. Upper bits may be hardwired zero (a device that cannot be placed
/// high); a hole between set bits is an error. `Ok(None)` for an empty mask.
fn size_from_mask(mask: u64) -> Result<Option<u64>, BarError> {
    if mask == 0 {
        return Ok(None);
    }
    let shift = mask.trailing_zeros();
    let ones = mask >> shift;
    // `ones` is at most 2^60 - 1 (the four type bits are always cleared), so `+ 1` cannot wrap.
    if !(ones + 1).is_power_of_two() {
        return Err(BarError::NotPowerOfTwo { mask });
    }
    Ok(Some(1u64 << shift))
}

/// Write all ones to the dword at `offset`, read it back, restore `original`.
fn probe<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    offset: u16,
    original: u32,
) -> u32 {
    access.write32(addr, offset, 0xFFFF_FFFF);
    let readback = access.read32(addr, offset);
    access.write32(addr, offset, original);
    readback
}

/// Size one BAR. Decoding must already be off. Returns the slot's BAR and whether it also
/// consumed the next slot (64-bit memory).
fn size_one<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    slot: usize,
    count: usize,
) -> (Bar, bool) {
    let offset = BAR0 + 4 * slot as u16;
    let original = access.read32(addr, offset);
    let readback = probe(access, addr, offset, original);
    if readback == 0xFFFF_FFFF {
        return (Bar::Invalid(BarError::AllOnes), false);
    }
    if readback == 0 {
        return (Bar::Absent, false);
    }
    if original & 1 == 1 {
        // I/O: bit 1 reserved, address in 31:2 (x86 uses 15:2; a 16-bit decoder hardwires the
        // upper half to zero, which `size_from_mask` accepts).
        if readback & 3 != original & 3 {
            let err = BarError::TypeBitsChanged {
                before: original,
                after: readback,
            };
            return (Bar::Invalid(err), false);
        }
        return match size_from_mask(u64::from(readback & !3)) {
            Ok(Some(size)) => (
                Bar::Io {
                    port: original & !3,
                    size: size as u32,
                },
                false,
            ),
            Ok(None) => (Bar::Absent, false),
            Err(e) => (Bar::Invalid(e), false),
        };
    }
    if readback & 0xF != original & 0xF {
        let err = BarError::TypeBitsChanged {
            before: original,
            after: readback,
        };
        return (Bar::Invalid(err), false);
    }
    let prefetchable = original & 0x8 != 0;
    let (width, mask, address, consumed) = match (original >> 1) & 3 {
        0b00 => (
            MemoryWidth::Bits32,
            u64::from(readback & !0xF),
            u64::from(original & !0xF),
            false,
        ),
        0b01 => (
            MemoryWidth::Below1M,
            u64::from(readback & !0xF),
            u64::from(original & !0xF),
            false,
        ),
        0b10 => {
            if slot + 1 >= count {
                return (Bar::Invalid(BarError::Truncated64), false);
            }
            let upper_offset = offset + 4;
            let upper = access.read32(addr, upper_offset);
            let upper_readback = probe(access, addr, upper_offset, upper);
            let mask = (u64::from(upper_readback) << 32) | u64::from(readback & !0xF);
            let address = (u64::from(upper) << 32) | u64::from(original & !0xF);
            (MemoryWidth::Bits64, mask, address, true)
        }
        _ => {
            return (
                Bar::Invalid(BarError::ReservedMemoryType { raw: original }),
                false,
            )
        }
    };
    match size_from_mask(mask) {
        Ok(Some(size)) => (
            Bar::Memory {
                address,
                size,
                width,
                prefetchable,
            },
            consumed,
        ),
        Ok(None) => (Bar::Absent, consumed),
        Err(e) => (Bar::Invalid(e), consumed),
    }
}

/// Size the first `count` BARs of `addr` (6 for an endpoint, 2 for a bridge; at most 6), with
/// memory and I/O decoding disabled for the duration and the command register restored
/// afterwards. Every BAR's original value is written back. Slots past `count` are
/// [`Bar::Absent`]; the slot after a 64-bit BAR is [`Bar::Upper64`].
pub fn size_bars<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    count: usize,
) -> [Bar; MAX_BARS] {
    let count = count.min(MAX_BARS);
    let mut bars = [Bar::Absent; MAX_BARS];
    if count == 0 {
        return bars;
    }
    let saved = command(access, addr);
    let decode = CommandRegister::IO_ENABLE | CommandRegister::MEMORY_ENABLE;
    if saved.intersects(decode) {
        set_command(access, addr, saved.difference(decode));
    }
    let mut slot = 0;
    while slot < count {
        let (bar, consumed_next) = size_one(access, addr, slot, count);
        bars[slot] = bar;
        if consumed_next {
            bars[slot + 1] = Bar::Upper64;
            slot += 1;
        }
        slot += 1;
    }
    if saved.intersects(decode) {
        set_command(access, addr, saved);
    }
    bars
}

/// `size` the way lspci prints it: the largest of B, K, M, G, T that divides it exactly.
pub fn format_size(size: u64) -> SizeDisplay {
    SizeDisplay(size)
}

/// [`format_size`]'s result.
#[derive(Clone, Copy, Debug)]
pub struct SizeDisplay(u64);

impl fmt::Display for SizeDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
        let mut value = self.0;
        let mut unit = 0;
        while unit + 1 < UNITS.len() && value != 0 && value.is_multiple_of(1024) {
            value /= 1024;
            unit += 1;
        }
        write!(f, "{value}{}", UNITS[unit])
    }
}

/// `Region N: …` as `lspci -v` prints it, or `None` for a slot with nothing to show (absent or
/// the upper half of a 64-bit BAR).
///
/// ```
/// use lull_pci::{region_line, Bar, MemoryWidth};
/// let bar = Bar::Memory { address: 0xfe00_0000, size: 4096, width: MemoryWidth::Bits32, prefetchable: false };
/// assert_eq!(region_line(0, &bar).unwrap(), "Region 0: Memory at fe000000 (32-bit, non-prefetchable) [size=4K]");
/// assert_eq!(region_line(1, &Bar::Io { port: 0xc000, size: 32 }).unwrap(), "Region 1: I/O ports at c000 [size=32]");
/// ```
pub fn region_line(slot: usize, bar: &Bar) -> Option<alloc::string::String> {
    use alloc::format;
    match *bar {
        Bar::Memory {
            address,
            size,
            width,
            prefetchable,
        } => {
            let width = match width {
                MemoryWidth::Bits32 => "32-bit",
                MemoryWidth::Below1M => "low-1M",
                MemoryWidth::Bits64 => "64-bit",
            };
            let pf = if prefetchable {
                "prefetchable"
            } else {
                "non-prefetchable"
            };
            let at = if address == 0 {
                alloc::string::String::from("<unassigned>")
            } else {
                format!("{address:08x}")
            };
            Some(format!(
                "Region {slot}: Memory at {at} ({width}, {pf}) [size={}]",
                format_size(size)
            ))
        }
        Bar::Io { port, size } => Some(format!(
            "Region {slot}: I/O ports at {port:04x} [size={}]",
            format_size(u64::from(size))
        )),
        Bar::Invalid(e) => Some(format!("Region {slot}: invalid: {e}")),
        Bar::Absent | Bar::Upper64 => None,
    }
}
