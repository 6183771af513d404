//! Starting secondary CPUs: the INIT-SIPI-SIPI sequence and the real-mode trampoline.
//!
//! A start-up IPI starts a CPU in 16-bit real mode at `vector << 12`, so the trampoline is
//! copied to a page below 1 MiB that `mm` set aside for it. From there it loads a small GDT,
//! turns on PAE, the kernel's page tables (CR3, below 4 GiB), long mode and paging in one step,
//! jumps to 64-bit code, takes the stack the boot CPU left in the trampoline's data block and
//! calls [`secondary_entry`]. CPUs are started one at a time: the data block is reused.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{apic, cpu, gdt, interrupts, percpu};

global_asm!(
    r#"
    .section .text
    .balign 16
    .global smp_trampoline_start
smp_trampoline_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (smp_trampoline_gdt_pointer - smp_trampoline_start)
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (smp_trampoline_cr3 - smp_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    /* Far jump into the 64-bit code segment; the target is patched with the copy's address. */
    .byte 0x66, 0xea
    .global smp_trampoline_jump_target
smp_trampoline_jump_target:
    .long 0
    .word 0x08

    .code64
    .global smp_trampoline_long_mode
smp_trampoline_long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    /* RIP-relative: the data block moved with the code. */
    movq smp_trampoline_stack(%rip), %rsp
    movq smp_trampoline_cpu(%rip), %rdi
    movq smp_trampoline_entry(%rip), %rax
    xorl %ebp, %ebp
    callq *%rax
1:
    cli
    hlt
    jmp 1b

    .balign 8
smp_trampoline_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
smp_trampoline_gdt_end:
    .global smp_trampoline_gdt_pointer
smp_trampoline_gdt_pointer:
    .word smp_trampoline_gdt_end - smp_trampoline_gdt - 1
    .global smp_trampoline_gdt_base
smp_trampoline_gdt_base:
    .long 0
    .balign 8
    .global smp_trampoline_cr3
smp_trampoline_cr3:
    .quad 0
    .global smp_trampoline_stack
smp_trampoline_stack:
    .quad 0
    .global smp_trampoline_entry
smp_trampoline_entry:
    .quad 0
    .global smp_trampoline_cpu
smp_trampoline_cpu:
    .quad 0
    .global smp_trampoline_end
smp_trampoline_end:
    .code64
    "#,
    options(att_syntax)
);

extern "C" {
    static smp_trampoline_start: u8;
    static smp_trampoline_end: u8;
    static smp_trampoline_jump_target: u8;
    static smp_trampoline_long_mode: u8;
    static smp_trampoline_gdt: u8;
    static smp_trampoline_gdt_base: u8;
    static smp_trampoline_cr3: u8;
    static smp_trampoline_stack: u8;
    static smp_trampoline_entry: u8;
    static smp_trampoline_cpu: u8;
}

/// Offset of a trampoline symbol from the trampoline's start.
fn offset_of(symbol: *const u8) -> usize {
    symbol as usize - &raw const smp_trampoline_start as usize
}

/// Size of the trampoline (code and data), which must fit in one page.
pub fn trampoline_size() -> usize {
    offset_of(&raw const smp_trampoline_end)
}

/// Why a CPU did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The trampoline page is not below 1 MiB, not page aligned, or the code does not fit.
    BadTrampolinePage(u64),
    /// The kernel's page tables are above 4 GiB (the trampoline loads CR3 in 32-bit mode).
    PageTablesAbove4GiB,
    /// The CPU did not reach Rust code within the time allowed.
    NoResponse,
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartError::BadTrampolinePage(page) => {
                write!(f, "trampoline page {page:#x} is unusable")
            }
            StartError::PageTablesAbove4GiB => write!(f, "page tables above 4 GiB"),
            StartError::NoResponse => write!(f, "no response to INIT-SIPI-SIPI"),
        }
    }
}

/// The CPU index the last started CPU reported from Rust code (`u64::MAX`: none yet).
static ARRIVED: AtomicU64 = AtomicU64::new(u64::MAX);

/// What a secondary CPU runs once its tables are loaded: the kernel's per-CPU start.
pub type SecondaryMain = fn(cpu_index: usize) -> !;

static SECONDARY_MAIN: spin::Once<SecondaryMain> = spin::Once::new();

fn spin_for_tsc_cycles(cycles: u64) {
    let start = cpu::rdtsc();
    while cpu::rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// The page below 1 MiB the trampoline is copied to (0: none given yet).
static TRAMPOLINE_PAGE: AtomicU64 = AtomicU64::new(0);

/// Sets aside `page` (below 640 KiB, chosen by `mm`, which never gives low memory to the page
/// allocator or the heap) for the trampoline. Refused unless it is RAM in the boot memory map
/// that holds none of the loader's structures; the first accepted page stays.
pub fn reserve_trampoline_page(page: u64) -> Result<(), StartError> {
    if page == 0
        || page + 4096 > 0xA_0000
        || !page.is_multiple_of(4096)
        || trampoline_size() > 4096
        || !super::memory::is_unused_ram(&(page..page + 4096))
    {
        return Err(StartError::BadTrampolinePage(page));
    }
    let _ = TRAMPOLINE_PAGE.compare_exchange(0, page, Ordering::SeqCst, Ordering::SeqCst);
    Ok(())
}

/// Starts the CPU with APIC ID `apic_id` as CPU `cpu_index`: copies the trampoline to the
/// reserved trampoline page, sends INIT-SIPI-SIPI and waits until the CPU runs Rust code on
/// `stack`, where it calls `main(cpu_index)`. The stack is the CPU's for good (even if it
/// does not answer in time: it may still start later). Called on the boot CPU, one CPU at a
/// time, with interrupts disabled.
pub fn start_cpu(
    apic_id: u32,
    cpu_index: usize,
    stack: super::context::KernelStack,
    tsc_hz: u64,
    main: SecondaryMain,
) -> Result<(), StartError> {
    let size = trampoline_size();
    let trampoline_page = TRAMPOLINE_PAGE.load(Ordering::SeqCst);
    if trampoline_page == 0 {
        return Err(StartError::BadTrampolinePage(0));
    }
    // Only one CPU starts at a time: the page's data block is reused.
    static STARTING: spin::Mutex<()> = spin::Mutex::new(());
    let _one_at_a_time = STARTING
        .try_lock()
        .ok_or(StartError::BadTrampolinePage(trampoline_page))?;
    let cr3 = cpu::read_cr3() & !0xFFF;
    let cr3 = u32::try_from(cr3).map_err(|_| StartError::PageTablesAbove4GiB)?;
    let stack_top = stack.leak_top();
    SECONDARY_MAIN.call_once(|| main);
    ARRIVED.store(u64::MAX, Ordering::Relaxed);

    let base = trampoline_page as usize;
    let put_u32 = |symbol: *const u8, value: u32| {
        // SAFETY: the destination lies inside the trampoline page (offset < size <= 4096),
        // which `reserve_trampoline_page` checked is unused RAM below 640 KiB (never given to
        // the heap or the page allocator, which take only RAM above 1 MiB); identity-mapped,
        // and only this function (one caller at a time) writes it.
        unsafe { core::ptr::write_unaligned((base + offset_of(symbol)) as *mut u32, value) }
    };
    let put_u64 = |symbol: *const u8, value: u64| {
        // SAFETY: as for `put_u32`.
        unsafe { core::ptr::write_unaligned((base + offset_of(symbol)) as *mut u64, value) }
    };
    // SAFETY: source is the trampoline in the kernel image (`size` bytes), destination the
    // reserved low page; they do not overlap (the kernel is above 1 MiB).
    unsafe {
        core::ptr::copy_nonoverlapping(&raw const smp_trampoline_start, base as *mut u8, size)
    };
    put_u32(
        &raw const smp_trampoline_jump_target,
        (base + offset_of(&raw const smp_trampoline_long_mode)) as u32,
    );
    put_u32(
        &raw const smp_trampoline_gdt_base,
        (base + offset_of(&raw const smp_trampoline_gdt)) as u32,
    );
    put_u64(&raw const smp_trampoline_cr3, cr3 as u64);
    put_u64(&raw const smp_trampoline_stack, stack_top);
    put_u64(
        &raw const smp_trampoline_entry,
        secondary_entry as *const () as usize as u64,
    );
    put_u64(&raw const smp_trampoline_cpu, cpu_index as u64);
    core::sync::atomic::fence(Ordering::SeqCst);

    // The MP specification's sequence: INIT, 10 ms, SIPI, 200 us, SIPI if still silent.
    let page_number = (trampoline_page >> 12) as u8;
    let tsc_hz = tsc_hz.max(1_000_000);
    apic::send_init(apic_id);
    spin_for_tsc_cycles(tsc_hz / 100);
    apic::send_startup(apic_id, page_number);
    spin_for_tsc_cycles(tsc_hz / 5000);
    if ARRIVED.load(Ordering::Acquire) != cpu_index as u64 {
        apic::send_startup(apic_id, page_number);
    }
    // Under TCG on a loaded host a new vCPU thread can take a while to be scheduled.
    let start = cpu::rdtsc();
    while ARRIVED.load(Ordering::Acquire) != cpu_index as u64 {
        if cpu::rdtsc().wrapping_sub(start) > tsc_hz * 2 {
            return Err(StartError::NoResponse);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// First Rust code on a secondary CPU (called by the trampoline in long mode, interrupts off,
/// on the stack the boot CPU allocated for it).
extern "C" fn secondary_entry(cpu_index: u64) -> ! {
    percpu::set_this_cpu(cpu_index as usize);
    gdt::init_secondary_cpu();
    interrupts::init();
    ARRIVED.store(cpu_index, Ordering::Release);
    match SECONDARY_MAIN.get() {
        Some(main) => main(cpu_index as usize),
        // Unreachable: `start_cpu` sets it before sending the SIPI.
        None => cpu::halt_forever(),
    }
}
