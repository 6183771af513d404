//! A minimal owned MMIO range for the virtio-mmio transport, until the PCI branch's full
//! `Mmio` (iomem claims, a mapping window for ranges outside 3–4 GiB) is merged and replaces
//! this file. Same names and accessors as that one, so drivers do not change.
//!
//! Only ranges inside 3–4 GiB are accepted: `paging.rs` identity-maps that hole uncached for
//! good, so nothing is mapped here. Overlapping claims are refused naming the holder.

use alloc::string::String;
use alloc::vec::Vec;

use super::sync::IrqSpinCell;

const HOLE: core::ops::Range<u64> = 0xC000_0000..0x1_0000_0000;

/// Claimed ranges: (start, end, owner).
static CLAIMS: IrqSpinCell<Vec<(u64, u64, String)>> = IrqSpinCell::new(Vec::new());

/// Why a range could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MmioError {
    /// Empty, wrapping, or outside the uncached 3–4 GiB hole.
    BadRange { start: u64, len: u64 },
    /// Someone else holds an overlapping range.
    Busy(String),
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmioError::BadRange { start, len } => write!(
                f,
                "MMIO range {start:#x}+{len:#x} is empty or outside the 3-4 GiB device hole"
            ),
            MmioError::Busy(why) => f.write_str(why),
        }
    }
}

/// Live claims (leak checks compare it).
pub fn claims() -> usize {
    CLAIMS.lock().len()
}

/// A claimed range of device memory. Offsets outside it or misaligned panic (a driver bug,
/// never a device's doing: the offsets are the driver's constants).
#[derive(Debug)]
pub struct Mmio {
    phys: u64,
    len: u64,
}

impl Mmio {
    /// Claims `[phys, phys + len)` for `owner`.
    pub fn claim(phys: u64, len: u64, owner: &str) -> Result<Mmio, MmioError> {
        let end = phys
            .checked_add(len)
            .filter(|&end| len > 0 && phys >= HOLE.start && end <= HOLE.end)
            .ok_or(MmioError::BadRange { start: phys, len })?;
        let mut claims = CLAIMS.lock();
        if let Some((s, e, holder)) = claims.iter().find(|(s, e, _)| phys < *e && *s < end) {
            return Err(MmioError::Busy(alloc::format!(
                "{phys:#x}-{:#x} overlaps {s:#x}-{:#x} held by {holder}",
                end - 1,
                e - 1
            )));
        }
        claims.push((phys, end, String::from(owner)));
        Ok(Mmio { phys, len })
    }

    /// Physical address of the first byte.
    #[allow(dead_code)] // the API the PCI branch's Mmio has; drivers use a part so far
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Length in bytes.
    #[allow(dead_code)] // the API the PCI branch's Mmio has; drivers use a part so far
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty (never).
    #[allow(dead_code)] // the API the PCI branch's Mmio has; drivers use a part so far
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, offset: usize, width: usize) -> u64 {
        assert!(
            (offset as u64)
                .checked_add(width as u64)
                .is_some_and(|end| end <= self.len)
                && offset.is_multiple_of(width),
            "MMIO offset {offset:#x} (width {width}) outside {:#x}+{:#x} or misaligned",
            self.phys,
            self.len
        );
        self.phys + offset as u64
    }

    /// Reads the byte at `offset`.
    #[allow(dead_code)] // the API the PCI branch's Mmio has; drivers use a part so far
    pub fn read_u8(&self, offset: usize) -> u8 {
        let address = self.at(offset, 1);
        // SAFETY: `address` lies in this claimed range inside the 3-4 GiB hole, which the
        // kernel page tables identity-map uncached; device registers are read volatile.
        unsafe { core::ptr::read_volatile(address as *const u8) }
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let address = self.at(offset, 4);
        // SAFETY: as `read_u8`, 4-byte aligned (checked).
        unsafe { core::ptr::read_volatile(address as *const u32) }
    }

    /// Writes the byte at `offset`.
    #[allow(dead_code)] // the API the PCI branch's Mmio has; drivers use a part so far
    pub fn write_u8(&self, offset: usize, value: u8) {
        let address = self.at(offset, 1);
        // SAFETY: as `read_u8`: device memory this handle claimed, never RAM.
        unsafe { core::ptr::write_volatile(address as *mut u8, value) }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write_u32(&self, offset: usize, value: u32) {
        let address = self.at(offset, 4);
        // SAFETY: as `write_u8`, 4-byte aligned (checked).
        unsafe { core::ptr::write_volatile(address as *mut u32, value) }
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        let phys = self.phys;
        CLAIMS.lock().retain(|(start, _, _)| *start != phys);
    }
}
