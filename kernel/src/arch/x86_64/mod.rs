//! x86_64 platform support: boot, CPU tables, interrupts, APICs, ACPI, paging, port I/O.

pub mod acpi;
pub mod acpi_aml;
mod acpi_tables;
pub mod apic;
mod boot;
pub mod context;
pub mod cpu;
pub mod dma;
mod gdt;
pub mod heap;
pub mod hpet;
pub mod interrupts;
pub mod io;
pub mod kmap;
pub mod kvm;
pub mod memory;
pub mod mmio;
pub mod paging;
pub mod pci;
pub mod percpu;
pub mod pit;
mod port;
pub mod power;
pub mod pvh;
pub mod rtc;
pub mod serial;
pub mod smp;
pub mod sync;

pub use pvh::{BootInfo, MEMORY_RAM};

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Physical range occupied by the kernel image (text, data, bss, boot stack).
pub fn kernel_image_range() -> core::ops::Range<u64> {
    let start = &raw const __kernel_start as u64;
    let end = &raw const __kernel_end as u64;
    start..end
}

/// Prints a report when nothing else may be trusted (exceptions, a bad start info).
pub type EmergencyPrint = fn(core::fmt::Arguments<'_>);

static EMERGENCY_PRINT: spin::Once<EmergencyPrint> = spin::Once::new();

/// Installs the kernel's emergency printer (it also records the report in the log); until
/// then, and if none is installed, reports go straight to COM1.
pub fn set_emergency_print(print: EmergencyPrint) {
    EMERGENCY_PRINT.call_once(|| print);
}

/// Prints through the installed emergency printer, or straight to COM1.
pub(crate) fn emergency_print(args: core::fmt::Arguments<'_>) {
    match EMERGENCY_PRINT.get() {
        Some(print) => print(args),
        None => serial::write_fmt(args),
    }
}

/// Loads the boot CPU's GDT, TSS and IDT. Interrupts stay disabled.
pub fn init_boot_cpu() {
    percpu::set_this_cpu(0);
    gdt::init_boot_cpu();
    interrupts::init();
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Makes a software interrupt on `vector` (used by in-kernel tests of the entry path).
pub fn software_interrupt_0x80() {
    // SAFETY: vector 0x80 has an IDT gate whose stub saves and restores all registers.
    unsafe { core::arch::asm!("int 0x80") };
}

/// First Rust code: called by the PVH stub in long mode with the start info's address.
#[no_mangle]
extern "C" fn kernel_entry(start_info_address: u32) -> ! {
    let entry_tsc = cpu::rdtsc();
    // Before anything can read the CPU index (the exception path does).
    percpu::set_this_cpu(0);
    io::reserve_platform_ports();
    serial::init();
    if cfg!(feature = "boot-baseline") {
        serial::write_bytes(b"lull-baseline\n");
        cpu::halt_forever();
    }
    match pvh::read_start_info(start_info_address) {
        Ok(boot_info) => {
            memory::record_boot_info(boot_info);
            crate::start_kernel(boot_info, entry_tsc)
        }
        Err(error) => {
            emergency_print(format_args!(
                "Lull: unusable PVH start info at {start_info_address:#x}: {error}\n"
            ));
            power::exit_failure(power::EXIT_PANIC)
        }
    }
}

/// Reads address 0, which is unmapped on purpose: the CPU raises #PF and the exception
/// report runs (sysrq 'c'). Returns only if page 0 were mapped, which would be a bug.
pub fn trigger_null_read() -> u64 {
    let address = core::hint::black_box(0usize);
    // SAFETY: page 0 is never mapped (paging.rs), so the read faults before touching memory;
    // the exception handler reports and stops the machine.
    unsafe { core::ptr::read_volatile(address as *const u64) }
}
