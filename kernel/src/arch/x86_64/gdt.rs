//! Global descriptor tables and task-state segments, one per CPU, each TSS with its own IST
//! stacks for fatal exceptions (a double fault or NMI on one CPU must not run on a stack
//! another CPU is using).
//!
//! The boot CPU's tables are static (they are loaded before the heap exists); secondary CPUs'
//! are allocated from the heap when they are brought up and live forever. Every GDT has the
//! same layout, so the selectors are the same on every CPU.

use alloc::boxed::Box;
use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST: u16 = 0;
/// IST slot used by NMI and machine-check handlers.
pub const NMI_IST: u16 = 1;

const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
#[allow(dead_code)] // only its address is used: the CPU writes to it
struct IstStack([u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: IstStack = IstStack([0; IST_STACK_SIZE]);
static mut NMI_STACK: IstStack = IstStack([0; IST_STACK_SIZE]);

struct CpuTables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static BOOT_TSS: Once<TaskStateSegment> = Once::new();
static BOOT_TABLES: Once<CpuTables> = Once::new();

fn stack_top(stack: *const IstStack) -> VirtAddr {
    VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64
}

fn build_tables(tss: &'static TaskStateSegment) -> CpuTables {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    CpuTables {
        gdt,
        code,
        data,
        tss,
    }
}

fn load(tables: &'static CpuTables) {
    tables.gdt.load();
    // SAFETY: the selectors come from the GDT just loaded and describe flat 64-bit kernel
    // segments; the TSS descriptor points at a 'static TSS used by this CPU only.
    unsafe {
        CS::set_reg(tables.code);
        DS::set_reg(tables.data);
        ES::set_reg(tables.data);
        SS::set_reg(tables.data);
        load_tss(tables.tss);
    }
}

/// Loads the boot CPU's GDT and TSS. Called once, early, with interrupts disabled.
pub fn init_boot_cpu() {
    let tss = BOOT_TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] =
            stack_top(&raw const DOUBLE_FAULT_STACK);
        tss.interrupt_stack_table[NMI_IST as usize] = stack_top(&raw const NMI_STACK);
        tss
    });
    load(BOOT_TABLES.call_once(|| build_tables(tss)));
}

/// Builds and loads a secondary CPU's own GDT, TSS and IST stacks (from the heap, never
/// freed). Called once on that CPU, with interrupts disabled.
pub fn init_secondary_cpu() {
    let double_fault_stack: &'static mut IstStack =
        Box::leak(Box::new(IstStack([0; IST_STACK_SIZE])));
    let nmi_stack: &'static mut IstStack = Box::leak(Box::new(IstStack([0; IST_STACK_SIZE])));
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = stack_top(double_fault_stack);
    tss.interrupt_stack_table[NMI_IST as usize] = stack_top(nmi_stack);
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));
    let tables: &'static CpuTables = Box::leak(Box::new(build_tables(tss)));
    load(tables);
}

/// Kernel code segment selector (for IDT gates; the same in every CPU's GDT).
pub fn kernel_code_selector() -> u16 {
    BOOT_TABLES.get().map(|t| t.code.0).unwrap_or(0x08)
}
