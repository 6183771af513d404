//! Configuration-space access: the trait the kernel implements, the address arithmetic of both
//! access mechanisms, and narrow reads built on dword accesses.
//!
//! Every function has 256 bytes of configuration space on conventional PCI and 4 KiB on PCI
//! Express. Two mechanisms reach it on x86:
//!
//! * **ECAM** (the memory-mapped "enhanced configuration access mechanism"): the ACPI MCFG table
//!   gives, per PCI segment, a physical base and a bus range; function `bus:dev.fn` owns the 4 KiB
//!   at `base + ((bus - start_bus) << 20 | dev << 15 | fn << 12)`. It is the only way to the
//!   extended space at offsets 0x100..0x1000 ([`ecam_offset`], [`EcamRegion`]).
//! * **Configuration mechanism #1**, the legacy pair of I/O ports: write an address to 0xCF8
//!   ([`cf8_address`]), then read or write the dword at 0xCFC. It has 8 bits of register number
//!   and so sees only the first 256 bytes, and only segment 0.
//!
//! The crate never touches hardware: the kernel implements [`ConfigAccess`] with one of these
//! (and takes the lock that makes the 0xCF8/0xCFC pair atomic), tests implement it with
//! [`FakeConfigSpace`](crate::FakeConfigSpace). Accesses are dword-sized and dword-aligned
//! because that is what both mechanisms are guaranteed to support; the byte and word reads here
//! extract from the containing dword. There are deliberately no read-modify-write *narrow
//! writes*: rewriting a whole dword to change half of it would write back the status register's
//! write-1-to-clear bits next to the command register and clear them. Code here writes the
//! command register as a dword whose upper (status) half is zero, which clears nothing.

use pci_types::PciAddress;

/// Size of a function's configuration space reachable through the legacy ports.
pub const LEGACY_CONFIG_SIZE: u16 = 0x100;
/// Size of a function's configuration space reachable through ECAM.
pub const EXTENDED_CONFIG_SIZE: u16 = 0x1000;

/// Access to PCI configuration space, one dword at a time.
///
/// `offset` is a byte offset that the crate always passes dword-aligned and below
/// [`config_size`](Self::config_size). Methods take `&self` because both real mechanisms are
/// serialised inside the implementation (a lock around 0xCF8/0xCFC; ECAM needs none).
pub trait ConfigAccess {
    /// Read the dword at `offset` of `addr`'s configuration space. An absent function reads as
    /// all ones (what the host bridge returns on a master abort).
    fn read32(&self, addr: PciAddress, offset: u16) -> u32;

    /// Write the dword at `offset` of `addr`'s configuration space.
    fn write32(&self, addr: PciAddress, offset: u16, value: u32);

    /// How much configuration space this mechanism reaches: [`EXTENDED_CONFIG_SIZE`] for ECAM,
    /// [`LEGACY_CONFIG_SIZE`] (the default) for the 0xCF8/0xCFC ports. Extended capabilities are
    /// looked for only when this is 4 KiB.
    fn config_size(&self) -> u16 {
        LEGACY_CONFIG_SIZE
    }
}

impl<T: ConfigAccess + ?Sized> ConfigAccess for &T {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        (**self).read32(addr, offset)
    }
    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        (**self).write32(addr, offset, value)
    }
    fn config_size(&self) -> u16 {
        (**self).config_size()
    }
}

/// Read the byte at any `offset`, through the dword that contains it.
pub fn read8<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress, offset: u16) -> u8 {
    let dword = access.read32(addr, offset & !3);
    (dword >> ((offset & 3) * 8)) as u8
}

/// Read the 16-bit word at an even `offset`, through the dword that contains it. An odd offset
/// would straddle two dwords; registers never do, so it is rounded down to even.
pub fn read16<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress, offset: u16) -> u16 {
    let dword = access.read32(addr, offset & !3);
    (dword >> ((offset & 2) * 8)) as u16
}

/// Whether `offset` (dword-aligned) may be accessed through `access`.
pub fn reachable<A: ConfigAccess + ?Sized>(access: &A, offset: u16) -> bool {
    offset < access.config_size()
}

/// Byte offset of a register from the start of an ECAM window whose first bus is 0:
/// `bus << 20 | dev << 15 | fn << 12 | reg`. `None` when `dev >= 32`, `func >= 8` or
/// `reg >= 0x1000`.
pub fn ecam_offset(bus: u8, dev: u8, func: u8, reg: u16) -> Option<u64> {
    if dev >= 32 || func >= 8 || reg >= EXTENDED_CONFIG_SIZE {
        return None;
    }
    Some((u64::from(bus) << 20) | (u64::from(dev) << 15) | (u64::from(func) << 12) | u64::from(reg))
}

/// The value to write to port 0xCF8 to reach register `reg` (rounded down to its dword) of
/// `bus:dev.fn`: the enable bit 31, bus in 23:16, device in 15:11, function in 10:8, register
/// in 7:2. `None` when `dev >= 32`, `func >= 8` or `reg >= 0x100`: the mechanism has no bits for
/// the extended space (AMD's extension that uses bits 27:24 is not used).
pub fn cf8_address(bus: u8, dev: u8, func: u8, reg: u16) -> Option<u32> {
    if dev >= 32 || func >= 8 || reg >= LEGACY_CONFIG_SIZE {
        return None;
    }
    Some(
        0x8000_0000
            | (u32::from(bus) << 16)
            | (u32::from(dev) << 11)
            | (u32::from(func) << 8)
            | u32::from(reg & 0xFC),
    )
}

/// One MCFG allocation: the ECAM window of a PCI segment for buses `start_bus..=end_bus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamRegion {
    /// Physical base address of the window *as if it started at bus 0* (MCFG's convention: the
    /// window's first byte belongs to `start_bus`, at `base + (start_bus << 20)`).
    pub base: u64,
    /// PCI segment group number.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

impl EcamRegion {
    /// Physical address of register `reg` of `addr`, or `None` when `addr` is in another segment,
    /// outside the bus range, or `reg` is past 4 KiB.
    pub fn physical_address(&self, addr: PciAddress, reg: u16) -> Option<u64> {
        if addr.segment() != self.segment || !self.decodes_bus(addr.bus()) {
            return None;
        }
        let offset = ecam_offset(addr.bus(), addr.device(), addr.function(), reg)?;
        self.base.checked_add(offset)
    }

    /// Whether the window covers `bus`.
    pub fn decodes_bus(&self, bus: u8) -> bool {
        (self.start_bus..=self.end_bus).contains(&bus)
    }

    /// Bytes of address space the window occupies (1 MiB per bus).
    pub fn window_len(&self) -> u64 {
        (u64::from(self.end_bus.saturating_sub(self.start_bus)) + 1) << 20
    }
}
