//! Guest-physical memory layout: where RAM, boot data, ACPI tables and the command line live.
//!
//! ```text
//! 0x0000_0000  reserved: real-mode IVT, GDT (0x500), hvm_start_info (0x6000), memory map (0x7000)
//! 0x0001_0000  RAM (low)
//! 0x0009_fc00  reserved: EBDA, ACPI tables at 0xe0000 (RSDP first, 16-byte aligned)
//! 0x0010_0000  RAM: the kernel is loaded here (its ELF says where)
//! top - cmd    reserved: the command line (any length), page-aligned, at the top of low RAM
//! 0xc000_0000  MMIO hole: IOAPIC 0xfec00000, LAPIC 0xfee00000, TSS 0xfffbd000
//! 0x1_0000_0000 RAM (high), if the guest has more than 3 GiB
//! ```
//! Boot data, tables and the command line are marked reserved in the memory map so a kernel
//! that hands out every RAM page cannot overwrite them before it has read them.

use serde::{Deserialize, Serialize};

/// GDT used for the PVH entry (null, code32, data32, TSS).
pub const BOOT_GDT_ADDRESS: u64 = 0x500;
/// `hvm_start_info`.
pub const PVH_START_INFO_ADDRESS: u64 = 0x6000;
/// `hvm_memmap_table_entry[]`.
pub const PVH_MEMMAP_ADDRESS: u64 = 0x7000;
/// Linux boot protocol zero page (`struct boot_params`, 4 KiB) of a bzImage boot.
pub const LINUX_BOOT_PARAMS_ADDRESS: u64 = 0x8000;
/// End of the low reserved boot-data area.
pub const BOOT_DATA_END: u64 = 0x1_0000;
/// Start of the Extended BIOS Data Area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables (RSDP first: OSes may also find it by scanning 0xe0000..0x100000).
pub const ACPI_TABLES_ADDRESS: u64 = 0xe_0000;
/// First byte above the legacy hole.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole: RAM above this continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First byte above 4 GiB.
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// The in-kernel IOAPIC.
pub const IOAPIC_ADDRESS: u64 = 0xfec0_0000;
/// The local APICs.
pub const LAPIC_ADDRESS: u64 = 0xfee0_0000;
/// KVM's real-mode TSS (3 pages) on Intel hosts.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Smallest guest we build: room for boot data, tables and a small kernel.
pub const MINIMUM_MEMORY_BYTES: u64 = 2 << 20;

const PAGE_SIZE: u64 = 4096;

/// One contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamRegion {
    pub guest_address: u64,
    pub size: u64,
}

/// Memory-map entry types of the PVH `hvm_memmap_table_entry` (E820 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MemoryType {
    Ram = 1,
    Reserved = 2,
}

/// One entry of the memory map handed to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub address: u64,
    pub size: u64,
    pub kind: MemoryType,
}

/// Why a layout cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("guest memory of {requested} bytes is too small; at least {minimum} bytes are needed")]
    TooLittleMemory { requested: u64, minimum: u64 },
    #[error(
        "a {cmdline_bytes}-byte command line does not fit in {memory_bytes} bytes of guest memory; \
         give the guest more memory"
    )]
    CommandLineTooLarge {
        cmdline_bytes: u64,
        memory_bytes: u64,
    },
}

/// Where everything goes for a guest with `memory_bytes` of RAM and a `cmdline_len`-byte
/// command line (without its NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    pub ram_regions: Vec<RamRegion>,
    pub cmdline_address: u64,
    /// Reserved bytes for the command line, NUL included, page-rounded.
    pub cmdline_reserved_bytes: u64,
}

impl MemoryLayout {
    pub fn new(memory_bytes: u64, cmdline_len: u64) -> Result<Self, LayoutError> {
        if memory_bytes < MINIMUM_MEMORY_BYTES {
            return Err(LayoutError::TooLittleMemory {
                requested: memory_bytes,
                minimum: MINIMUM_MEMORY_BYTES,
            });
        }
        let ram_regions = ram_regions(memory_bytes);
        let low_end = ram_regions[0].size;
        let cmdline_reserved_bytes = (cmdline_len + 1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // Keep at least 1 MiB of RAM above the legacy hole for the kernel itself.
        if cmdline_reserved_bytes + HIGH_MEMORY_START + (1 << 20) > low_end {
            return Err(LayoutError::CommandLineTooLarge {
                cmdline_bytes: cmdline_len,
                memory_bytes,
            });
        }
        Ok(Self {
            ram_regions,
            cmdline_address: low_end - cmdline_reserved_bytes,
            cmdline_reserved_bytes,
        })
    }

    /// Total guest RAM.
    pub fn memory_bytes(&self) -> u64 {
        self.ram_regions.iter().map(|region| region.size).sum()
    }

    /// The memory map the guest sees, in address order.
    pub fn memory_map(&self) -> Vec<MemoryMapEntry> {
        let low_end = self.ram_regions[0].size;
        let entry = |address, end: u64, kind| MemoryMapEntry {
            address,
            size: end - address,
            kind,
        };
        let mut map = vec![
            entry(0, BOOT_DATA_END, MemoryType::Reserved),
            entry(BOOT_DATA_END, EBDA_START, MemoryType::Ram),
            entry(EBDA_START, HIGH_MEMORY_START, MemoryType::Reserved),
            entry(HIGH_MEMORY_START, self.cmdline_address, MemoryType::Ram),
            entry(self.cmdline_address, low_end, MemoryType::Reserved),
        ];
        for region in &self.ram_regions[1..] {
            map.push(entry(
                region.guest_address,
                region.guest_address + region.size,
                MemoryType::Ram,
            ));
        }
        map
    }
}

/// Splits `memory_bytes` of RAM around the 32-bit MMIO hole.
pub fn ram_regions(memory_bytes: u64) -> Vec<RamRegion> {
    let low = memory_bytes.min(MMIO_HOLE_START);
    let mut regions = vec![RamRegion {
        guest_address: 0,
        size: low,
    }];
    if memory_bytes > low {
        regions.push(RamRegion {
            guest_address: FOUR_GIB,
            size: memory_bytes - low,
        });
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region_and_cmdline_at_the_top() {
        let layout = MemoryLayout::new(128 << 20, 10).unwrap();
        assert_eq!(
            layout.ram_regions,
            vec![RamRegion {
                guest_address: 0,
                size: 128 << 20
            }]
        );
        assert_eq!(layout.cmdline_address, (128 << 20) - 4096);
        assert_eq!(layout.cmdline_reserved_bytes, 4096);
    }

    #[test]
    fn one_mebibyte_cmdline_gets_its_nul_byte() {
        let layout = MemoryLayout::new(64 << 20, 1 << 20).unwrap();
        assert_eq!(layout.cmdline_reserved_bytes, (1 << 20) + 4096);
    }

    #[test]
    fn big_guest_is_split_around_the_mmio_hole() {
        let layout = MemoryLayout::new(4 << 30, 0).unwrap();
        assert_eq!(layout.ram_regions[0].size, MMIO_HOLE_START);
        assert_eq!(
            layout.ram_regions[1],
            RamRegion {
                guest_address: FOUR_GIB,
                size: (4 << 30) - MMIO_HOLE_START
            }
        );
        assert_eq!(layout.memory_bytes(), 4 << 30);
    }

    #[test]
    fn memory_map_is_ordered_contiguous_and_reserves_boot_data() {
        let layout = MemoryLayout::new(256 << 20, 100).unwrap();
        let map = layout.memory_map();
        for pair in map.windows(2) {
            assert_eq!(pair[0].address + pair[0].size, pair[1].address);
        }
        assert_eq!(map[0].kind, MemoryType::Reserved);
        assert!(map
            .iter()
            .any(|e| e.address == layout.cmdline_address && e.kind == MemoryType::Reserved));
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryType::Ram)
            .map(|e| e.size)
            .sum();
        assert!(ram < 256 << 20 && ram > 250 << 20);
    }

    #[test]
    fn too_small_and_too_long_are_typed_errors() {
        assert!(matches!(
            MemoryLayout::new(1 << 20, 0),
            Err(LayoutError::TooLittleMemory { .. })
        ));
        assert!(matches!(
            MemoryLayout::new(4 << 20, 3 << 20),
            Err(LayoutError::CommandLineTooLarge { .. })
        ));
    }
}
