//! The PVH start-of-day structure (`hvm_start_info`) handed over by the loader.

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

#[repr(C)]
#[derive(Clone, Copy)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// One `hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemoryMapEntry {
    pub address: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

/// Memory map entry type for usable RAM.
pub const MEMORY_RAM: u32 = 1;

/// What the loader told us, as safe references into boot memory (which stays reserved).
#[derive(Clone, Copy)]
pub struct BootInfo {
    pub start_info_address: u64,
    pub command_line: &'static [u8],
    pub command_line_address: u64,
    pub memory_map: &'static [MemoryMapEntry],
    pub memory_map_address: u64,
    pub rsdp_address: Option<u64>,
}

/// Errors in the start info (reported, then the kernel stops: nothing can be trusted).
#[derive(Debug)]
pub enum BootInfoError {
    BadMagic(u32),
    NoMemoryMap,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootInfoError::BadMagic(magic) => {
                write!(
                    f,
                    "magic {magic:#x}, expected {START_INFO_MAGIC:#x} (not a PVH loader?)"
                )
            }
            BootInfoError::NoMemoryMap => f.write_str("no memory map (start info version < 1)"),
        }
    }
}

/// Reads the start info at `address`.
pub(super) fn read_start_info(address: u32) -> Result<BootInfo, BootInfoError> {
    // SAFETY: the PVH protocol passes the physical address of a valid `hvm_start_info` in
    // %ebx; memory below 4 GiB is identity-mapped by the boot stub. The magic is checked
    // before any other field is trusted.
    let info = unsafe { core::ptr::read_unaligned(address as usize as *const StartInfo) };
    if info.magic != START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic(info.magic));
    }
    let command_line = if info.cmdline_paddr == 0 {
        &[][..]
    } else {
        let start = info.cmdline_paddr as usize as *const u8;
        let mut length = 0usize;
        // SAFETY: the command line is a NUL-terminated string in loader-provided memory.
        // No length limit: the scan stops at the terminator.
        unsafe {
            while core::ptr::read_volatile(start.add(length)) != 0 {
                length += 1;
            }
            core::slice::from_raw_parts(start, length)
        }
    };
    if info.version < 1 || info.memmap_paddr == 0 || info.memmap_entries == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    // SAFETY: version >= 1 start info carries a memory map of `memmap_entries` entries at
    // `memmap_paddr`, which the loader keeps reserved.
    let memory_map = unsafe {
        core::slice::from_raw_parts(
            info.memmap_paddr as usize as *const MemoryMapEntry,
            info.memmap_entries as usize,
        )
    };
    Ok(BootInfo {
        start_info_address: address as u64,
        command_line,
        command_line_address: info.cmdline_paddr,
        memory_map,
        memory_map_address: info.memmap_paddr,
        rsdp_address: (info.rsdp_paddr != 0).then_some(info.rsdp_paddr),
    })
}
