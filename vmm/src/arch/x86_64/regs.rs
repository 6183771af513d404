//! Boot-time vCPU state for the PVH entry: 32-bit protected mode, paging off, flat segments.

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{BOOT_GDT_ADDRESS, LINUX_BOOT_PARAMS_ADDRESS, PVH_START_INFO_ADDRESS};

/// Flat 4 GiB GDT entries: null, 32-bit code, 32-bit data, 32-bit TSS (busy).
const BOOT_GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;

// MSR numbers (Intel SDM vol. 4).
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_APICBASE: u32 = 0x1b;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Writes the boot GDT into guest memory (the kernel replaces it early).
pub fn write_boot_gdt(memory: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (index, entry) in BOOT_GDT.iter().enumerate() {
        memory.write_obj(*entry, GuestAddress(BOOT_GDT_ADDRESS + index as u64 * 8))?;
    }
    Ok(())
}

/// Decodes a GDT entry into the segment KVM wants.
fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for the PVH entry, keeping what KVM set up (APIC base, EFER bits).
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
    let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_ADDRESS;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// Where and how a kernel is entered. Both entries run in the flat 32-bit protected mode
/// [`boot_sregs`] sets up, paging off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// PVH: `%ebx` points at `hvm_start_info`.
    Pvh(u64),
    /// Linux 32-bit boot protocol (a bzImage's `code32_start`): `%esi` points at the zero
    /// page, `%ebp`, `%edi` and `%ebx` are zero.
    Linux32(u64),
}

/// General registers for `entry`.
pub fn boot_regs(entry: KernelEntry) -> kvm_regs {
    match entry {
        KernelEntry::Pvh(address) => kvm_regs {
            rip: address,
            rbx: PVH_START_INFO_ADDRESS,
            rflags: 0x2,
            ..Default::default()
        },
        KernelEntry::Linux32(address) => kvm_regs {
            rip: address,
            rsi: LINUX_BOOT_PARAMS_ADDRESS,
            rflags: 0x2,
            ..Default::default()
        },
    }
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs a firmware would have set: fast strings on, MTRRs enabled with write-back default.
pub fn boot_msrs() -> Msrs {
    let entries = [
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: 1,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: (1 << 11) | 6,
            ..Default::default()
        },
    ];
    Msrs::from_entries(&entries).expect("two MSR entries fit a KVM MSR list")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_decodes_as_flat_32_bit() {
        let code = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
        assert_eq!(
            (code.base, code.limit, code.db, code.l, code.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        assert_eq!((code.present, code.s, code.g), (1, 1, 1));
    }

    #[test]
    fn tss_segment_is_busy_with_limit_0x67() {
        let tss = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
        assert_eq!((tss.type_, tss.limit, tss.s), (0xb, 0x67, 0));
    }

    #[test]
    fn boot_sregs_enter_protected_mode_without_paging() {
        let sregs = boot_sregs(kvm_sregs::default());
        assert_eq!(sregs.cr0 & 1, 1);
        assert_eq!(sregs.cr0 & (1 << 31), 0);
        assert_eq!(sregs.gdt.base, BOOT_GDT_ADDRESS);
        assert_eq!(
            boot_regs(KernelEntry::Pvh(0x100000)).rbx,
            PVH_START_INFO_ADDRESS
        );
        let linux = boot_regs(KernelEntry::Linux32(0x100000));
        assert_eq!((linux.rip, linux.rsi, linux.rbx), (0x100000, 0x8000, 0));
    }
}
