//! Device interrupt lines: routing ISA/GSI lines through the IOAPIC to handlers, and the
//! `/proc/interrupts` view of how often each fired.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::arch::acpi::AcpiInfo;
use crate::arch::{apic, interrupts};
use crate::sync::IrqSafeLock;

/// A requested line, for `/proc/interrupts`.
#[derive(Clone, Copy)]
struct Line {
    vector: u8,
    gsi: u32,
    level: bool,
    name: &'static str,
}

/// Requested lines (a leaf lock).
static LINES: IrqSafeLock<Vec<Line>> = IrqSafeLock::new(Vec::new());
static IOAPIC: IrqSafeLock<Option<apic::IoApic>> = IrqSafeLock::new(None);

/// Enables the local APIC and masks every IOAPIC input. Called once at boot.
pub fn init(acpi: Option<&AcpiInfo>) {
    apic::init_local(interrupts::SPURIOUS_VECTOR, true);
    let Some(entry) = acpi.and_then(|info| info.io_apics.first()) else {
        crate::pr_warn!("irq: no IOAPIC in the MADT; device interrupts are unavailable");
        return;
    };
    let ioapic = apic::IoApic {
        base: entry.address,
        gsi_base: entry.gsi_base,
    };
    ioapic.mask_all();
    *IOAPIC.lock() = Some(ioapic);
    crate::pm::register_notifier(crate::pm::Notifier {
        name: "irq",
        priority: -10,
        call: pm_notifier,
    });
}

/// Routes ISA interrupt `isa_irq` (honouring the MADT's source overrides) to `handler` on this
/// CPU. The handler runs in hard-IRQ context with interrupts disabled and must not allocate.
pub fn request_isa_irq(
    acpi: Option<&AcpiInfo>,
    isa_irq: u8,
    name: &'static str,
    handler: interrupts::IrqHandler,
) -> Result<u8, &'static str> {
    let ioapic = (*IOAPIC.lock()).ok_or("no IOAPIC")?;
    let (gsi, level, active_low) = acpi
        .and_then(|info| info.overrides.iter().find(|o| o.isa_irq == isa_irq))
        .map(|o| (o.gsi, o.level_triggered, o.active_low))
        .unwrap_or((isa_irq as u32, false, false));
    let vector =
        u8::try_from(interrupts::DEVICE_VECTOR_BASE as u32 + gsi).map_err(|_| "GSI too large")?;
    interrupts::set_handler(vector, handler);
    LINES.lock().push(Line {
        vector,
        gsi,
        level,
        name,
    });
    ioapic.route(gsi, vector, apic::local_apic_id(), level, active_low);
    crate::printk!("irq: {name} (IRQ {isa_irq}) -> GSI {gsi} -> vector {vector:#x}");
    Ok(vector)
}

/// Routes global system interrupt `gsi` to `vector` on this CPU (handler installed by the
/// caller with `interrupts::set_handler`).
pub fn route_gsi(gsi: u32, vector: u8, name: &'static str, level: bool, active_low: bool) {
    let Some(ioapic) = *IOAPIC.lock() else { return };
    let mut lines = LINES.lock();
    lines.retain(|line| line.gsi != gsi);
    lines.push(Line {
        vector,
        gsi,
        level,
        name,
    });
    drop(lines);
    ioapic.route(gsi, vector, apic::local_apic_id(), level, active_low);
}

/// PM notifier: masks every device line before power-off.
fn pm_notifier(_event: crate::pm::PmEvent) {
    if let Some(ioapic) = *IOAPIC.lock() {
        ioapic.mask_all();
    }
}

/// Renders `/proc/interrupts`: one column per online CPU, as Linux.
pub fn proc_interrupts() -> String {
    let cpus: Vec<usize> = crate::smp::online_cpus().collect();
    let mut out = String::from("     ");
    for cpu in &cpus {
        let _ = write!(out, " {:>10}", alloc::format!("CPU{cpu}"));
    }
    out.push('\n');
    let row = |out: &mut String, label: &str, count: &dyn Fn(usize) -> u64, what: &str| {
        let _ = write!(out, "{label:>4}:");
        for &cpu in &cpus {
            let _ = write!(out, " {:>10}", count(cpu));
        }
        let _ = writeln!(out, "   {what}");
    };
    for line in LINES.lock().iter() {
        row(
            &mut out,
            &alloc::format!("{}", line.gsi),
            &|cpu| interrupts::count_on(cpu, line.vector),
            &alloc::format!(
                "IO-APIC {:>3}-{}   {}",
                line.gsi,
                if line.level { "fasteoi" } else { "edge" },
                line.name
            ),
        );
    }
    row(
        &mut out,
        "LOC",
        &crate::time::local_timer_interrupts,
        "Local timer interrupts",
    );
    row(
        &mut out,
        "SPU",
        &|cpu| interrupts::count_on(cpu, interrupts::SPURIOUS_VECTOR),
        "Spurious interrupts",
    );
    row(
        &mut out,
        "RES",
        &|cpu| interrupts::count_on(cpu, crate::smp::RESCHEDULE_VECTOR),
        "Rescheduling interrupts",
    );
    row(
        &mut out,
        "CAL",
        &|cpu| interrupts::count_on(cpu, crate::smp::CALL_FUNCTION_VECTOR),
        "Function call interrupts",
    );
    out
}
