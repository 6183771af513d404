//! PVH boot protocol: the `hvm_start_info` block, its memory map, and the command line.
//!
//! The kernel is entered with `%ebx` = [`PVH_START_INFO_ADDRESS`]; see
//! <https://xenbits.xen.org/docs/unstable/misc/pvh.html>.

use crate::vstate::memory::GuestMemoryMmap;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{MemoryLayout, PVH_MEMMAP_ADDRESS, PVH_START_INFO_ADDRESS};

/// `hvm_start_info.magic`: "xEn3" with the high bit of every byte set.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// Why the boot data could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error("the command line contains a NUL byte at offset {0}; the guest would see it cut short there")]
    NulInCommandLine(usize),
    #[error("writing boot data into guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Writes the command line (NUL-terminated), the memory map and `hvm_start_info`.
/// `cmdline` may be of any length: [`MemoryLayout`] reserved room for it.
pub fn write_boot_data(
    memory: &GuestMemoryMmap,
    layout: &MemoryLayout,
    cmdline: &[u8],
    rsdp_address: u64,
) -> Result<(), PvhError> {
    if let Some(offset) = cmdline.iter().position(|&byte| byte == 0) {
        return Err(PvhError::NulInCommandLine(offset));
    }
    memory.write_slice(cmdline, GuestAddress(layout.cmdline_address))?;
    memory.write_obj(
        0u8,
        GuestAddress(layout.cmdline_address + cmdline.len() as u64),
    )?;

    let map = layout.memory_map();
    for (index, entry) in map.iter().enumerate() {
        let raw = hvm_memmap_table_entry {
            addr: entry.address,
            size: entry.size,
            type_: entry.kind as u32,
            reserved: 0,
        };
        let address =
            PVH_MEMMAP_ADDRESS + (index * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        memory.write_obj(raw, GuestAddress(address))?;
    }
    let start_info = hvm_start_info {
        magic: HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout.cmdline_address,
        rsdp_paddr: rsdp_address,
        memmap_paddr: PVH_MEMMAP_ADDRESS,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    memory.write_obj(start_info, GuestAddress(PVH_START_INFO_ADDRESS))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_memory(bytes: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap()
    }

    #[test]
    fn start_info_points_at_cmdline_memmap_and_rsdp() {
        let layout = MemoryLayout::new(16 << 20, 5).unwrap();
        let memory = guest_memory(16 << 20);
        write_boot_data(&memory, &layout, b"nohz=", 0xe0000).unwrap();
        let info: hvm_start_info = memory
            .read_obj(GuestAddress(PVH_START_INFO_ADDRESS))
            .unwrap();
        assert_eq!(info.magic, HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.memmap_entries as usize, layout.memory_map().len());
        let mut cmdline = [0u8; 6];
        memory
            .read_slice(&mut cmdline, GuestAddress(info.cmdline_paddr))
            .unwrap();
        assert_eq!(&cmdline, b"nohz=\0");
        let first: hvm_memmap_table_entry =
            memory.read_obj(GuestAddress(info.memmap_paddr)).unwrap();
        assert_eq!((first.addr, first.type_), (0, 2));
    }

    #[test]
    fn megabyte_command_line_is_written_whole() {
        let cmdline: Vec<u8> = (0..(1usize << 20)).map(|i| b'a' + (i % 26) as u8).collect();
        let layout = MemoryLayout::new(32 << 20, cmdline.len() as u64).unwrap();
        let memory = guest_memory(32 << 20);
        write_boot_data(&memory, &layout, &cmdline, 0).unwrap();
        let mut read_back = vec![0u8; cmdline.len() + 1];
        memory
            .read_slice(&mut read_back, GuestAddress(layout.cmdline_address))
            .unwrap();
        assert_eq!(&read_back[..cmdline.len()], &cmdline[..]);
        assert_eq!(read_back[cmdline.len()], 0);
    }

    #[test]
    fn nul_in_command_line_is_refused() {
        let layout = MemoryLayout::new(16 << 20, 3).unwrap();
        let memory = guest_memory(16 << 20);
        assert!(matches!(
            write_boot_data(&memory, &layout, b"a\0b", 0),
            Err(PvhError::NulInCommandLine(1))
        ));
    }
}
