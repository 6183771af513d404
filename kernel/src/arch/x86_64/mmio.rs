//! Owned MMIO ranges (Linux's `request_mem_region` + `ioremap`): an [`Mmio`] handle claims a
//! physical range of device memory in the iomem resource tree under an owner's name (an
//! overlapping claim is refused naming the holder, as [`IoPorts`](super::io::IoPorts) does for
//! ports), maps it uncached, and reads and writes it with volatile accesses at bounds-checked
//! offsets. Dropping the handle unmaps the range on every CPU and releases the claim.
//!
//! Where the mapping comes from:
//!
//! * **3–4 GiB** (the PCI hole, LAPIC, IOAPIC, HPET) is identity-mapped uncached by
//!   `paging.rs` for good: the handle uses the identity address and maps nothing.
//! * **Anything else** (64-bit BARs above 4 GiB, the ECAM window that q35 puts at 2.75 GiB, which
//!   the identity map covers write-back) is mapped uncached at an address of the *MMIO window*
//!   (PML4 slot 510, 512 GiB of kernel address space): 2 MiB pages when the range is 2 MiB
//!   aligned in size and address, 4 KiB pages otherwise. The page tables the window builds are
//!   kept (they are few: one page per 2 MiB of 4 KiB mappings, one per GiB of 2 MiB ones).
//!
//! A range that overlaps RAM in the firmware memory map (System RAM, ACPI tables or NVS,
//! persistent memory) is refused: a handle's writes only ever reach device memory, never a
//! Rust object.
//!
//! Lock: `WINDOW` (interrupts masked) guards the window's page tables and address allocation; no
//! TLB shootdown is waited for under it (an unmapped range's addresses are handed out again only
//! after the shootdown).
// The drivers that use this API (virtio-pci, SMBus) land with the driver model; until then only
// the in-kernel tests and lspci call parts of it.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;

use lull_buddy::ZoneKind;

use super::cpu;
use super::paging::{entry, flush_local_range, page_table_frame, zeroed_frame, PRESENT, WRITABLE};
use super::sync::IrqSpinCell;

/// First address of the MMIO window (PML4 slot 510).
pub const WINDOW_BASE: u64 = 0xFFFF_FF00_0000_0000;
/// Size of the window: one PML4 slot.
const WINDOW_SIZE: u64 = 512 << 30;
/// 4 KiB mappings come from the lower half of the window, 2 MiB ones from the upper half, so a
/// page directory entry is only ever a table pointer or only ever a large page.
const HUGE_HALF: u64 = WINDOW_SIZE / 2;
const PAGE: u64 = 4096;
const TWO_MIB: u64 = 2 << 20;
const GIB: u64 = 1 << 30;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const UNCACHED: u64 = PRESENT | WRITABLE | WRITE_THROUGH | CACHE_DISABLE;

/// Why a range could not be claimed or mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MmioError {
    /// A zero-length range, or one that wraps around the address space.
    BadRange { start: u64, len: u64 },
    /// The range overlaps RAM in the firmware map (`kind` is its E820 type name).
    Ram {
        start: u64,
        end: u64,
        kind: &'static str,
    },
    /// The iomem tree refused the claim (names the holder).
    Busy(String),
    /// The MMIO window has no free room for the range.
    WindowFull,
    /// No memory for a page table.
    OutOfFrames,
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmioError::BadRange { start, len } => {
                write!(f, "bad MMIO range {start:#x}+{len:#x}")
            }
            MmioError::Ram { start, end, kind } => {
                write!(f, "{start:#x}-{end:#x} is {kind}, not device memory")
            }
            MmioError::Busy(why) => write!(f, "{why}"),
            MmioError::WindowFull => write!(f, "the MMIO window is full"),
            MmioError::OutOfFrames => write!(f, "no memory for MMIO page tables"),
        }
    }
}

/// Allocated window ranges: offset from [`WINDOW_BASE`] → length (page-rounded).
struct Window {
    pdpt: u64,
    used: BTreeMap<u64, u64>,
}

static WINDOW: IrqSpinCell<Window> = IrqSpinCell::new(Window {
    pdpt: 0,
    used: BTreeMap::new(),
});

/// Mappings made through the window that are still in place (for leak checks).
static WINDOW_MAPPINGS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// How many window mappings exist now (each live [`Mmio`] outside 3–4 GiB holds one).
pub fn window_mappings() -> usize {
    WINDOW_MAPPINGS.load(core::sync::atomic::Ordering::Relaxed)
}

fn ram_kind(kind: u32) -> Option<&'static str> {
    match kind {
        1 => Some("System RAM"),
        3 => Some("ACPI Tables"),
        4 => Some("ACPI Non-volatile Storage"),
        7 => Some("Persistent Memory"),
        _ => None,
    }
}

/// Refuses ranges that are not device memory.
fn check_device_memory(start: u64, len: u64) -> Result<u64, MmioError> {
    let end = start
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or(MmioError::BadRange { start, len })?;
    if end > 1 << 52 {
        return Err(MmioError::BadRange { start, len });
    }
    for (address, size, kind) in crate::mm::firmware_map() {
        if let Some(name) = ram_kind(kind) {
            if address < end && start < address.saturating_add(size) {
                return Err(MmioError::Ram {
                    start: address,
                    end: address + size - 1,
                    kind: name,
                });
            }
        }
    }
    Ok(end)
}

/// Finds room for `size` bytes (page-rounded) in the window's half for `huge` mappings.
fn allocate_window(window: &mut Window, size: u64, huge: bool) -> Result<u64, MmioError> {
    let (half_start, half_end, align) = if huge {
        (HUGE_HALF, WINDOW_SIZE, TWO_MIB)
    } else {
        (0, HUGE_HALF, PAGE)
    };
    let mut candidate = half_start;
    for (&start, &len) in window.used.range(half_start..half_end) {
        if candidate + size <= start {
            break;
        }
        candidate = (start + len).next_multiple_of(align);
    }
    if candidate + size > half_end {
        return Err(MmioError::WindowFull);
    }
    window.used.insert(candidate, size);
    Ok(candidate)
}

/// The next-level table under `table[index]`, built (zeroed) if absent.
fn next_table(table: u64, index: usize) -> Result<u64, MmioError> {
    let slot = entry(table, index);
    // SAFETY: `table` is a page table of the live hierarchy (identity-mapped, under the
    // window lock); reading one entry.
    let current = unsafe { *slot };
    if current & PRESENT != 0 {
        return Ok(current & 0x000F_FFFF_FFFF_F000);
    }
    let frame = zeroed_frame(&mut || page_table_frame(ZoneKind::Normal))
        .map_err(|_| MmioError::OutOfFrames)?;
    // SAFETY: the entry was empty and belongs to the MMIO window's part of the tables, which
    // only this module writes (under the lock); linking a fresh zeroed table needs no flush.
    unsafe { *slot = frame | PRESENT | WRITABLE };
    Ok(frame)
}

/// Maps `[phys, phys + size)` (page-aligned) at window offset `offset`, uncached.
fn map_pages(
    window: &mut Window,
    offset: u64,
    phys: u64,
    size: u64,
    huge: bool,
) -> Result<(), MmioError> {
    if window.pdpt == 0 {
        let pml4 = cpu::read_cr3() & !0xFFF;
        window.pdpt = next_table(pml4, 510)?;
    }
    let step = if huge { TWO_MIB } else { PAGE };
    let mut done = 0;
    while done < size {
        let at = offset + done;
        let directory = next_table(window.pdpt, (at / GIB) as usize)?;
        let index = ((at % GIB) / TWO_MIB) as usize;
        if huge {
            // SAFETY: a directory entry of the window's upper half, which holds only large pages
            // this module maps, written under the lock; it was empty (the range was free).
            unsafe { *entry(directory, index) = (phys + done) | UNCACHED | HUGE };
        } else {
            let table = next_table(directory, index)?;
            let slot = entry(table, ((at % TWO_MIB) / PAGE) as usize);
            // SAFETY: a page-table entry of the window's lower half, written under the lock;
            // it was empty (the range was free and its last unmap was shot down).
            unsafe { *slot = (phys + done) | UNCACHED };
        }
        done += step;
    }
    Ok(())
}

/// Clears the entries of a window range (the caller shoots the translations down).
fn unmap_pages(window: &mut Window, offset: u64, size: u64, huge: bool) {
    let step = if huge { TWO_MIB } else { PAGE };
    let mut done = 0;
    while done < size {
        let at = offset + done;
        // SAFETY: reading entries of the window's tables under the lock.
        let pdpte = unsafe { *entry(window.pdpt, (at / GIB) as usize) };
        if pdpte & PRESENT != 0 {
            let directory = pdpte & 0x000F_FFFF_FFFF_F000;
            let index = ((at % GIB) / TWO_MIB) as usize;
            if huge {
                // SAFETY: this range's own large-page entry, cleared under the lock.
                unsafe { *entry(directory, index) = 0 };
            } else {
                // SAFETY: as above, one level down.
                let pde = unsafe { *entry(directory, index) };
                if pde & PRESENT != 0 {
                    let table = pde & 0x000F_FFFF_FFFF_F000;
                    // SAFETY: this range's own page entry, cleared under the lock.
                    unsafe { *entry(table, ((at % TWO_MIB) / PAGE) as usize) = 0 };
                }
            }
        }
        done += step;
    }
}

/// A window mapping: released (unmapped on every CPU, then its addresses freed) on drop.
#[derive(Debug)]
struct WindowMapping {
    offset: u64,
    size: u64,
    huge: bool,
}

impl Drop for WindowMapping {
    fn drop(&mut self) {
        let start = WINDOW_BASE + self.offset;
        {
            let mut window = WINDOW.lock();
            unmap_pages(&mut window, self.offset, self.size, self.huge);
        }
        flush_local_range(start, start + self.size);
        super::kmap::remote_flush(start, start + self.size);
        WINDOW.lock().used.remove(&self.offset);
        WINDOW_MAPPINGS.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Maps device memory `[start, end)`: the identity address inside 3–4 GiB, else a window
/// mapping. Returns the virtual address of `start`.
fn map_range(start: u64, end: u64) -> Result<(u64, Option<WindowMapping>), MmioError> {
    if start >= 3 * GIB && end <= 4 * GIB {
        return Ok((start, None));
    }
    let first = start & !(PAGE - 1);
    let size = end.next_multiple_of(PAGE) - first;
    let huge = first.is_multiple_of(TWO_MIB) && size.is_multiple_of(TWO_MIB);
    let mut window = WINDOW.lock();
    let offset = allocate_window(&mut window, size, huge)?;
    if let Err(error) = map_pages(&mut window, offset, first, size, huge) {
        unmap_pages(&mut window, offset, size, huge);
        window.used.remove(&offset);
        // Nothing was reachable yet except possibly through this CPU's TLB.
        drop(window);
        flush_local_range(WINDOW_BASE + offset, WINDOW_BASE + offset + size);
        return Err(error);
    }
    drop(window);
    WINDOW_MAPPINGS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    Ok((
        WINDOW_BASE + offset + (start - first),
        Some(WindowMapping { offset, size, huge }),
    ))
}

/// A claimed, mapped range of device memory. Offsets outside the range, or not aligned to the
/// access width, panic (a driver bug): an access never reaches another device's registers.
#[derive(Debug)]
pub struct Mmio {
    phys: u64,
    len: u64,
    virt: u64,
    owner: String,
    _mapping: Option<WindowMapping>,
    _claim: Option<crate::mm::iomem::IomemClaim>,
}

impl Mmio {
    /// Claims `[phys, phys + len)` for `owner` in the iomem tree and maps it uncached. Refused
    /// when the range overlaps RAM, or a claim of someone else (the error names them).
    pub fn claim(phys: u64, len: u64, owner: &str) -> Result<Mmio, MmioError> {
        let end = check_device_memory(phys, len)?;
        let claim = crate::mm::iomem::claim(phys, len, String::from(owner))
            .map_err(|error| MmioError::Busy(format!("{error}")))?;
        let (virt, mapping) = map_range(phys, end)?;
        Ok(Mmio {
            phys,
            len,
            virt,
            owner: String::from(owner),
            _mapping: mapping,
            _claim: Some(claim),
        })
    }

    /// Maps `[phys, phys + len)` uncached *without* claiming it: for the PCI core's own
    /// structures inside ranges described elsewhere in the tree (the ECAM window, an MSI-X
    /// table inside a BAR the driver claims whole, as Linux `ioremap`s it without
    /// `request_mem_region`). RAM is still refused.
    pub(crate) fn map_unclaimed(phys: u64, len: u64, owner: &str) -> Result<Mmio, MmioError> {
        let end = check_device_memory(phys, len)?;
        let (virt, mapping) = map_range(phys, end)?;
        Ok(Mmio {
            phys,
            len,
            virt,
            owner: String::from(owner),
            _mapping: mapping,
            _claim: None,
        })
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty (never: a claim has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Who claimed the range.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The virtual address of `offset`, after checking it and its alignment.
    fn at(&self, offset: usize, width: usize) -> usize {
        assert!(
            (offset as u64)
                .checked_add(width as u64)
                .is_some_and(|end| end <= self.len)
                && offset.is_multiple_of(width),
            "{}: MMIO offset {offset:#x} (width {width}) outside its {:#x} bytes or misaligned",
            self.owner,
            self.len
        );
        self.virt as usize + offset
    }

    /// Reads the byte at `offset`.
    pub fn read_u8(&self, offset: usize) -> u8 {
        let address = self.at(offset, 1);
        // SAFETY: `address` lies inside the range this handle keeps mapped uncached until it is
        // dropped; the range is device memory (RAM was refused), so no Rust object is read.
        unsafe { core::ptr::read_volatile(address as *const u8) }
    }

    /// Reads the 16-bit word at `offset` (2-aligned).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let address = self.at(offset, 2);
        // SAFETY: as in `read_u8`; the access is aligned.
        unsafe { core::ptr::read_volatile(address as *const u16) }
    }

    /// Reads the 32-bit word at `offset` (4-aligned).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let address = self.at(offset, 4);
        // SAFETY: as in `read_u8`; the access is aligned.
        unsafe { core::ptr::read_volatile(address as *const u32) }
    }

    /// Reads the 64-bit word at `offset` (8-aligned).
    pub fn read_u64(&self, offset: usize) -> u64 {
        let address = self.at(offset, 8);
        // SAFETY: as in `read_u8`; the access is aligned.
        unsafe { core::ptr::read_volatile(address as *const u64) }
    }

    /// Writes the byte at `offset`.
    pub fn write_u8(&self, offset: usize, value: u8) {
        let address = self.at(offset, 1);
        // SAFETY: `address` lies inside the range this handle keeps mapped uncached until it is
        // dropped; the range is device memory (RAM was refused), so no Rust object is written.
        unsafe { core::ptr::write_volatile(address as *mut u8, value) }
    }

    /// Writes the 16-bit word at `offset` (2-aligned).
    pub fn write_u16(&self, offset: usize, value: u16) {
        let address = self.at(offset, 2);
        // SAFETY: as in `write_u8`; the access is aligned.
        unsafe { core::ptr::write_volatile(address as *mut u16, value) }
    }

    /// Writes the 32-bit word at `offset` (4-aligned).
    pub fn write_u32(&self, offset: usize, value: u32) {
        let address = self.at(offset, 4);
        // SAFETY: as in `write_u8`; the access is aligned.
        unsafe { core::ptr::write_volatile(address as *mut u32, value) }
    }

    /// Writes the 64-bit word at `offset` (8-aligned).
    pub fn write_u64(&self, offset: usize, value: u64) {
        let address = self.at(offset, 8);
        // SAFETY: as in `write_u8`; the access is aligned.
        unsafe { core::ptr::write_volatile(address as *mut u64, value) }
    }
}
