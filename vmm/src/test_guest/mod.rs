//! A tiny PVH test guest, built in memory: lets tests and benchmarks boot something real without
//! a toolchain or the Lull kernel.
//!
//! The machine code is `guest.S` (beside this file) assembled once with
//! `as --64 guest.S && ld -m elf_x86_64 -Ttext=0x100000` and copied here; the ELF wrapper
//! (one PT_LOAD, one PT_NOTE carrying `XEN_ELFNOTE_PHYS32_ENTRY`) is written by [`pvh_elf`].
//! Behaviour (see guest.S): prints `lull-test-guest: ready len=XXXXXXXX hash=XXXXXXXX` (command
//! line length and FNV-1a-32 hash, hex); if the command line starts with `h` it halts with
//! interrupts off forever (an idle guest); otherwise it echoes COM1 input and appends it to a
//! log in guest RAM at [`LOG_ADDRESS`] (`?` prints the log as `log=<bytes>`), and powers off
//! (S5) on `q` or when the power button's PWRBTN_STS is set.

/// Guest-physical address the code is linked at (and loaded to).
pub const LOAD_ADDRESS: u64 = 0x10_0000;

/// Guest-physical address of the input log: a u32 byte count, then the bytes.
pub const LOG_ADDRESS: u64 = 0x20_0000;

/// Line the guest prints once it has read its command line (followed by ` len=… hash=…`).
pub const READY_BANNER: &str = "lull-test-guest: ready";

/// `guest.S`, assembled for [`LOAD_ADDRESS`].
const CODE: &[u8] = &[
    0xbc, 0x00, 0xf0, 0x09, 0x00, 0x89, 0xdf, 0xbe, 0x08, 0x01, 0x10, 0x00, 0xe8, 0xc8, 0x00, 0x00,
    0x00, 0x8b, 0x77, 0x18, 0x31, 0xc9, 0xbd, 0xc5, 0x9d, 0x1c, 0x81, 0x0f, 0xb6, 0x04, 0x0e, 0x85,
    0xc0, 0x74, 0x0b, 0x31, 0xc5, 0x69, 0xed, 0x93, 0x01, 0x00, 0x01, 0x41, 0xeb, 0xed, 0xbe, 0x1f,
    0x01, 0x10, 0x00, 0xe8, 0xa1, 0x00, 0x00, 0x00, 0x89, 0xc8, 0xe8, 0xa7, 0x00, 0x00, 0x00, 0xbe,
    0x25, 0x01, 0x10, 0x00, 0xe8, 0x90, 0x00, 0x00, 0x00, 0x89, 0xe8, 0xe8, 0x96, 0x00, 0x00, 0x00,
    0xb0, 0x0a, 0xe8, 0x7a, 0x00, 0x00, 0x00, 0x8b, 0x77, 0x18, 0x80, 0x3e, 0x68, 0x74, 0x6e, 0x66,
    0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x75, 0x0e, 0x66, 0xba, 0x00, 0x06, 0x66, 0xed, 0x66, 0xa9,
    0x00, 0x01, 0x75, 0x4f, 0xeb, 0xe9, 0x66, 0xba, 0xf8, 0x03, 0xec, 0x3c, 0x71, 0x74, 0x44, 0x3c,
    0x3f, 0x74, 0x15, 0x8b, 0x0d, 0x00, 0x00, 0x20, 0x00, 0x88, 0x81, 0x04, 0x00, 0x20, 0x00, 0xff,
    0x05, 0x00, 0x00, 0x20, 0x00, 0xee, 0xeb, 0xc7, 0xbe, 0x2c, 0x01, 0x10, 0x00, 0xe8, 0x37, 0x00,
    0x00, 0x00, 0x8b, 0x0d, 0x00, 0x00, 0x20, 0x00, 0xbe, 0x04, 0x00, 0x20, 0x00, 0x85, 0xc9, 0x74,
    0x09, 0xac, 0xe8, 0x1a, 0x00, 0x00, 0x00, 0x49, 0xeb, 0xf3, 0xb0, 0x0a, 0xe8, 0x10, 0x00, 0x00,
    0x00, 0xeb, 0x9c, 0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00, 0x34, 0x66, 0xef, 0xfa, 0xf4, 0xeb,
    0xfc, 0x52, 0x66, 0xba, 0xf8, 0x03, 0xee, 0x5a, 0xc3, 0xac, 0x84, 0xc0, 0x74, 0x07, 0xe8, 0xee,
    0xff, 0xff, 0xff, 0xeb, 0xf4, 0xc3, 0x51, 0x89, 0xc2, 0xb9, 0x08, 0x00, 0x00, 0x00, 0xc1, 0xc2,
    0x04, 0x89, 0xd0, 0x83, 0xe0, 0x0f, 0xbe, 0x31, 0x01, 0x10, 0x00, 0x8a, 0x04, 0x06, 0xe8, 0xce,
    0xff, 0xff, 0xff, 0x49, 0x75, 0xe8, 0x59, 0xc3, 0x6c, 0x75, 0x6c, 0x6c, 0x2d, 0x74, 0x65, 0x73,
    0x74, 0x2d, 0x67, 0x75, 0x65, 0x73, 0x74, 0x3a, 0x20, 0x72, 0x65, 0x61, 0x64, 0x79, 0x00, 0x20,
    0x6c, 0x65, 0x6e, 0x3d, 0x00, 0x20, 0x68, 0x61, 0x73, 0x68, 0x3d, 0x00, 0x6c, 0x6f, 0x67, 0x3d,
    0x00, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x61, 0x62, 0x63, 0x64, 0x65,
    0x66,
];

/// FNV-1a-32 of `bytes`, the hash the guest prints for its command line.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The line the guest prints for `cmdline` (without the trailing newline).
pub fn expected_ready_line(cmdline: &[u8]) -> String {
    format!(
        "{READY_BANNER} len={:08x} hash={:08x}",
        cmdline.len(),
        fnv1a32(cmdline)
    )
}

/// A complete ELF64 executable for the test guest, bootable through PVH.
pub fn pvh_elf() -> Vec<u8> {
    const ELF_HEADER_SIZE: u64 = 64;
    const PROGRAM_HEADER_SIZE: u64 = 56;
    const PROGRAM_HEADER_COUNT: u64 = 2;
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    let note_offset = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE * PROGRAM_HEADER_COUNT;
    // Note: namesz, descsz, type, "Xen\0", 32-bit entry address.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDRESS as u32).to_le_bytes());
    let code_offset = 0x1000u64;

    let mut elf = Vec::with_capacity(code_offset as usize + CODE.len());
    // e_ident: magic, ELFCLASS64, little-endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // e_entry
    elf.extend_from_slice(&ELF_HEADER_SIZE.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ELF_HEADER_SIZE as u16).to_le_bytes());
    elf.extend_from_slice(&(PROGRAM_HEADER_SIZE as u16).to_le_bytes());
    elf.extend_from_slice(&(PROGRAM_HEADER_COUNT as u16).to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx

    let mut program_header =
        |kind: u32, flags: u32, offset: u64, address: u64, size: u64, align: u64| {
            elf.extend_from_slice(&kind.to_le_bytes());
            elf.extend_from_slice(&flags.to_le_bytes());
            elf.extend_from_slice(&offset.to_le_bytes());
            elf.extend_from_slice(&address.to_le_bytes()); // p_vaddr
            elf.extend_from_slice(&address.to_le_bytes()); // p_paddr
            elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
            elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
            elf.extend_from_slice(&align.to_le_bytes());
        };
    program_header(
        PT_LOAD,
        0x5,
        code_offset,
        LOAD_ADDRESS,
        CODE.len() as u64,
        0x1000,
    );
    program_header(PT_NOTE, 0x4, note_offset, 0, note.len() as u64, 4);
    elf.extend_from_slice(&note);
    elf.resize(code_offset as usize, 0);
    elf.extend_from_slice(CODE);
    elf
}

/// `linux_probe.S` (beside this file), assembled for [`LOAD_ADDRESS`].
const LINUX_PROBE_CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0x8d, 0x9e, 0x02, 0x02, 0x00, 0x00, 0xb9, 0x04, 0x00, 0x00, 0x00, 0x8a,
    0x03, 0xee, 0x43, 0x49, 0x75, 0xf9, 0xb0, 0x20, 0xee, 0x0f, 0xb6, 0x86, 0xe8, 0x01, 0x00, 0x00,
    0x04, 0x41, 0xee, 0xb0, 0x20, 0xee, 0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00, 0x8a, 0x03, 0x84, 0xc0,
    0x74, 0x04, 0xee, 0x43, 0xeb, 0xf6, 0xb0, 0x0a, 0xee, 0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x00,
    0x34, 0x66, 0xef, 0xfa, 0xf4, 0xeb, 0xfc,
];

/// A minimal Linux bzImage whose protected-mode code is `linux_probe.S`: it prints the zero
/// page's header magic, its E820 entry count (as the letter `'A' + n`) and the command line
/// it points to, then powers off. Lets tests check the Linux boot protocol setup without a
/// Linux kernel (which these machines could not run at a useful speed anyway).
pub fn linux_probe_bzimage() -> Vec<u8> {
    const SETUP_SECTORS: u8 = 1;
    let setup_bytes = (usize::from(SETUP_SECTORS) + 1) * 512;
    let mut image = vec![0u8; setup_bytes];
    image[0x1f1] = SETUP_SECTORS;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes()); // boot_flag
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&(LOAD_ADDRESS as u32).to_le_bytes()); // code32_start
    image.extend_from_slice(LINUX_PROBE_CODE);
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_matches_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
    }

    #[test]
    fn elf_has_the_entry_note_and_the_code() {
        let elf = pvh_elf();
        assert_eq!(&elf[..4], b"\x7fELF");
        let note_at = elf
            .windows(4)
            .position(|w| w == b"Xen\0")
            .expect("note name");
        assert_eq!(
            &elf[note_at + 4..note_at + 8],
            &(LOAD_ADDRESS as u32).to_le_bytes()
        );
        assert_eq!(&elf[0x1000..], CODE);
    }

    #[test]
    fn probe_bzimage_has_a_boot_protocol_header() {
        let image = linux_probe_bzimage();
        assert_eq!(&image[0x202..0x206], b"HdrS");
        assert_eq!(image[0x211] & 1, 1, "loaded high");
        assert_eq!(&image[1024..], LINUX_PROBE_CODE);
    }
}
