//! Owned I/O port ranges (Linux's `request_region`): a range is claimed once, under an owner's
//! name, and only its [`IoPorts`] handle can read or write it. A claim overlapping another one
//! is refused with the holder's name; dropping the handle releases the range.
//!
//! arch reserves the ports of the devices it drives itself at boot (PIC, PIT, CMOS, COM1,
//! isa-debug-exit, PCI configuration mechanism 1) and the ACPI fixed-hardware blocks the FADT
//! names, so no handle to them can be claimed elsewhere.

use super::port;
use super::sync::IrqSpinCell;

/// At most this many claimed ranges (a fixed table: claims happen before the heap exists).
const MAX_CLAIMS: usize = 64;

#[derive(Clone, Copy)]
struct Claim {
    base: u16,
    len: u16,
    owner: &'static str,
}

impl Claim {
    fn end(&self) -> u32 {
        self.base as u32 + self.len as u32
    }
}

static CLAIMS: IrqSpinCell<[Option<Claim>; MAX_CLAIMS]> = IrqSpinCell::new([None; MAX_CLAIMS]);

/// Why a range could not be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    /// Part of the range is held by `owner`.
    Busy {
        owner: &'static str,
        base: u16,
        len: u16,
    },
    /// The range is empty or runs past port 0xFFFF.
    BadRange,
    /// The claim table is full.
    TooMany,
}

impl core::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ClaimError::Busy { owner, base, len } => write!(
                f,
                "ports {base:#x}-{:#x} are held by {owner}",
                *base as u32 + *len as u32 - 1
            ),
            ClaimError::BadRange => write!(f, "empty or out-of-range port range"),
            ClaimError::TooMany => write!(f, "too many claimed port ranges"),
        }
    }
}

fn claim(base: u16, len: u16, owner: &'static str) -> Result<(), ClaimError> {
    if len == 0 || base as u32 + len as u32 > 0x1_0000 {
        return Err(ClaimError::BadRange);
    }
    let new = Claim { base, len, owner };
    let mut claims = CLAIMS.lock();
    if let Some(held) = claims
        .iter()
        .flatten()
        .find(|held| (held.base as u32) < new.end() && (new.base as u32) < held.end())
    {
        return Err(ClaimError::Busy {
            owner: held.owner,
            base: held.base,
            len: held.len,
        });
    }
    let slot = claims
        .iter_mut()
        .find(|slot| slot.is_none())
        .ok_or(ClaimError::TooMany)?;
    *slot = Some(new);
    Ok(())
}

/// Records a range arch keeps for itself for the machine's whole life (no handle exists).
pub(super) fn reserve(base: u16, len: u16, owner: &'static str) -> Result<(), ClaimError> {
    claim(base, len, owner)
}

/// Takes back a range [`reserve`]d for `owner` at `base` (a driver of the model takes the
/// device over); whether it was held.
pub(super) fn unreserve(base: u16, owner: &'static str) -> bool {
    let mut claims = CLAIMS.lock();
    match claims
        .iter_mut()
        .find(|slot| matches!(slot, Some(c) if c.base == base && c.owner == owner))
    {
        Some(slot) => {
            *slot = None;
            true
        }
        None => false,
    }
}

/// Reserves the ports of the devices arch drives directly. Called once at entry.
pub(super) fn reserve_platform_ports() {
    for (base, len, owner) in [
        (0x20, 2, "pic1"),
        (0xA0, 2, "pic2"),
        (0x40, 4, "timer0 (PIT)"),
        (super::power::DEBUG_EXIT_PORT, 4, "isa-debug-exit"),
        (super::serial::COM1, 8, super::serial::BOOT_CLAIM),
        (0xCF8, 8, "PCI conf1"),
    ] {
        let _ = claim(base, len, owner);
    }
}

/// Every claimed range: (first port, length, owner), lowest first (`/proc/ioports`).
pub fn claimed() -> alloc::vec::Vec<(u16, u16, &'static str)> {
    let mut list: alloc::vec::Vec<_> = CLAIMS
        .lock()
        .iter()
        .flatten()
        .map(|c| (c.base, c.len, c.owner))
        .collect();
    list.sort_unstable();
    list
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // drivers claim ranges from the next issue on
/// A claimed range of I/O ports. Reads and writes take an offset into the range; an offset
/// outside it panics (a driver bug), it never reaches another device's port.
#[derive(Debug)]
pub struct IoPorts {
    base: u16,
    len: u16,
    owner: &'static str,
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
impl IoPorts {
    /// Claims `len` ports from `base` for `owner`; refused if any of them is held.
    pub fn claim(base: u16, len: u16, owner: &'static str) -> Result<IoPorts, ClaimError> {
        claim(base, len, owner)?;
        Ok(IoPorts { base, len, owner })
    }

    /// First port of the range.
    pub fn base(&self) -> u16 {
        self.base
    }

    /// Number of ports in the range.
    pub fn len(&self) -> u16 {
        self.len
    }

    /// Whether the range is empty (never: a claim has at least one port).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Who claimed the range.
    pub fn owner(&self) -> &'static str {
        self.owner
    }

    fn port(&self, offset: u16, width: u16) -> u16 {
        assert!(
            offset as u32 + width as u32 <= self.len as u32,
            "{}: port offset {offset:#x} outside its {} ports",
            self.owner,
            self.len
        );
        self.base + offset
    }

    /// Reads the byte at `offset`.
    pub fn read_u8(&self, offset: u16) -> u8 {
        port::inb(self.port(offset, 1))
    }

    /// Writes the byte at `offset`.
    pub fn write_u8(&self, offset: u16, value: u8) {
        port::outb(self.port(offset, 1), value)
    }

    /// Reads the 16-bit word at `offset`.
    pub fn read_u16(&self, offset: u16) -> u16 {
        port::inw(self.port(offset, 2))
    }

    /// Writes the 16-bit word at `offset`.
    pub fn write_u16(&self, offset: u16, value: u16) {
        port::outw(self.port(offset, 2), value)
    }

    /// Reads the 32-bit word at `offset`.
    pub fn read_u32(&self, offset: u16) -> u32 {
        port::inl(self.port(offset, 4))
    }

    /// Writes the 32-bit word at `offset`.
    pub fn write_u32(&self, offset: u16, value: u32) {
        port::outl(self.port(offset, 4), value)
    }
}

impl Drop for IoPorts {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock();
        if let Some(slot) = claims.iter_mut().find(|slot| {
            slot.is_some_and(|c| c.base == self.base && c.len == self.len && c.owner == self.owner)
        }) {
            *slot = None;
        }
    }
}
