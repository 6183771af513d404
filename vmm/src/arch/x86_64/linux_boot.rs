//! Linux boot protocol (bzImage): the "zero page" (`struct boot_params`) a bzImage kernel is
//! entered with, for the 32-bit entry point.
//!
//! The kernel's setup header comes from the image (linux-loader reads it); lull-vmm adds what
//! a boot loader must (loader type, command line pointer, E820 memory map, RSDP) and enters
//! `code32_start` in flat 32-bit protected mode with paging off and `%esi` = the zero page
//! (Documentation/arch/x86/boot.rst, "32-bit boot protocol"). The command line is the one
//! `pvh::write_boot_data` placed; the memory map is the same as PVH's.

use crate::vstate::memory::GuestMemoryMmap;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{MemoryLayout, LINUX_BOOT_PARAMS_ADDRESS};
use super::pvh::PvhError;

/// `type_of_loader`: 0xff, "undefined" (no assigned loader ID), as other VMMs use.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Slots in the zero page's E820 table.
const E820_SLOTS: usize = 128;

/// Writes the zero page for a kernel whose setup header is `header`.
pub fn write_boot_params(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    header: setup_header,
    cmdline_len: usize,
    rsdp_address: u64,
) -> Result<(), PvhError> {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // The command line lives below 3 GiB (top of low RAM), so its address fits 32 bits.
    params.hdr.cmd_line_ptr = layout.cmdline_address as u32;
    params.ext_cmd_line_ptr = (layout.cmdline_address >> 32) as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.acpi_rsdp_addr = rsdp_address;
    let map = layout.memory_map();
    for (slot, entry) in params
        .e820_table
        .iter_mut()
        .zip(map.iter().take(E820_SLOTS))
    {
        *slot = boot_e820_entry {
            addr: entry.address,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = map.len().min(E820_SLOTS) as u8;
    memory.write_obj(params, GuestAddress(LINUX_BOOT_PARAMS_ADDRESS))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_carries_header_cmdline_map_and_rsdp() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let layout = MemoryLayout::new(64 << 20, 10).unwrap();
        let header = setup_header {
            header: 0x5372_6448,
            version: 0x020f,
            code32_start: 0x10_0000,
            ..Default::default()
        };
        write_boot_params(&memory, &layout, header, 10, 0xe_0000).unwrap();
        let params: boot_params = memory
            .read_obj(GuestAddress(LINUX_BOOT_PARAMS_ADDRESS))
            .unwrap();
        // The zero page is packed: copy fields out before comparing.
        let header = params.hdr;
        assert_eq!({ header.header }, 0x5372_6448);
        assert_eq!(header.type_of_loader, 0xff);
        assert_eq!(u64::from(header.cmd_line_ptr), layout.cmdline_address);
        assert_eq!({ header.cmdline_size }, 10);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        let map = layout.memory_map();
        assert_eq!(usize::from(params.e820_entries), map.len());
        let last = params.e820_table[map.len() - 1];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (map[map.len() - 1].address, map[map.len() - 1].size)
        );
    }
}
