//! x86_64 platform support: boot, CPU tables, interrupts, APICs, ACPI, paging, port I/O.

pub mod acpi;
pub mod apic;
mod boot;
pub mod context;
pub mod cpu;
mod gdt;
pub mod heap;
pub mod hpet;
pub mod interrupts;
pub mod paging;
pub mod percpu;
pub mod pit;
mod port;
pub mod power;
pub mod pvh;
pub mod rtc;
pub mod serial;
pub mod smp;

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

/// Writes a byte to an I/O port named by firmware tables (ACPI's SMI command port).
pub fn port_write_u8(port: u16, value: u8) {
    port::outb(port, value);
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
    serial::init();
    if cfg!(feature = "boot-baseline") {
        serial::write_bytes(b"lull-baseline\n");
        cpu::halt_forever();
    }
    match pvh::read_start_info(start_info_address) {
        Ok(boot_info) => crate::start_kernel(boot_info, entry_tsc),
        Err(error) => {
            crate::kernel::printk::emergency_print(format_args!(
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

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Fills `bytes` at physical `address` with a pattern and sums it back (in-kernel tests of
/// pages the page allocator handed out). `address` must come from `mm::alloc_pages`.
pub fn scribble_and_sum(address: u64, bytes: usize) -> u64 {
    let words = bytes / 8;
    // SAFETY: callers pass a block they own from the page allocator; all RAM is
    // identity-mapped.
    let slice = unsafe { core::slice::from_raw_parts_mut(address as usize as *mut u64, words) };
    slice.fill(0xA5A5_A5A5);
    slice.iter().fold(0u64, |sum, word| sum.wrapping_add(*word))
}
