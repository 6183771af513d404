//! `i801_smbus`: the Intel ICH SMBus host controller (ICH9, PCI 8086:2930; QEMU's q35 has it at
//! 00:1f.3) as a driver of the model's `pci` bus, after Linux's `i2c-i801`.
//!
//! Probe, each step managed so an unbind or a failed probe undoes it:
//! 1. SMBA (BAR 4, config 0x20) gives the I/O block; HOSTC (config 0x40) gets `HST_EN` set and
//!    `I2C_EN` cleared (the firmware usually did it), the command register I/O decoding.
//! 2. `devm::request_region` claims the 32 ports (`/proc/ioports`: `i801_smbus`).
//! 3. The interrupt: INTx routed through the root's `_PRT` to a GSI (level, active low),
//!    requested with `devm::request_irq`. The handler reads the status, clears it (which drops
//!    the level line) and wakes the transaction waiting on the wait queue, as Linux's `i801_isr`
//!    does; under `threadirqs` it runs in the line's thread instead. A transaction thus sleeps
//!    from `START` to its interrupt: no timer runs unless the 200 ms timeout is armed, and an
//!    idle guest takes no interrupts at all. Fallback, only when the function has no routable
//!    pin: poll the status (a few reads, then 1 ms sleeps, up to the same 200 ms), said in the
//!    log.
//!
//!    Why not a dedicated thread by default: every spawn and exit of a kernel thread leaks about
//!    1.6 KiB of heap today (measured: 20 `kthread_spawn` + exit = 33,048 bytes), so a threaded
//!    line would fail the 1,000-round unbind/bind leak check; the handler does only two port
//!    accesses and a wake-up, which hard-IRQ context allows.
//! 4. The adapter `i2c-N` is registered ("SMBus I801 adapter at XXXX"); a managed action deletes
//!    it at unbind, after the clients are gone and before the IRQ and ports are released.
//! 5. The SPD EEPROM addresses 0x50-0x57 are probed with a read byte (as Linux's
//!    `i2c_register_spd` / `i2c_default_probe`) and each one that answers becomes an `spd`
//!    client (`N-0050`…), a child device the model removes before this driver's remove.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU16, Ordering};

use lull_devres::Revocable;
use lull_driver_core::{Driver, DriverDesc, Errno, PciMatchId, ProbeContext, ProbeError};
use lull_i2c::i801::{self, HostRegs};
use lull_i2c::{Adapter, Functionality, I2cError, SmbusData, SmbusOp};

use crate::arch::io::IoPorts;
use crate::drivers::base::devm;
use crate::drivers::pci::PciFunctionRef;
use crate::kernel::irq::{DevId, IrqFlags, IrqReturn};
use crate::kernel::locking::IrqSafeLock;
use crate::kernel::sched::WaitQueue;

/// The driver's name, as Linux's (`/sys/bus/pci/drivers/i801_smbus`).
pub const DRIVER: &str = "i801_smbus";

/// A transaction that has not ended after this long is killed (`ETIMEDOUT`); Linux's adapter
/// timeout is HZ/5.
const TIMEOUT_NS: u64 = 200_000_000;

/// What the interrupt handler and the transactions share.
struct Shared {
    ports: Arc<Revocable<IoPorts>>,
    /// `0x100 | status` once the interrupt handler captured an ending status; 0 while waiting.
    done: AtomicU16,
    wait: WaitQueue,
    /// Whether the interrupt signals completion (else the status is polled).
    irq: bool,
}

/// The bound controller, for the interrupt handler. One ICH SMBus
/// function exists per machine; a second bind is refused with `EBUSY`.
static BOUND: IrqSafeLock<Option<Arc<Shared>>> = IrqSafeLock::new(None);

/// The interrupt handler (hard-IRQ context, or the line's thread under `threadirqs`): capture
/// and clear an ending status, wake the waiter.
fn interrupt(_irq: u32, _dev: DevId) -> IrqReturn {
    let Some(shared) = BOUND.lock().clone() else {
        return IrqReturn::None;
    };
    let Some(ports) = shared.ports.try_access() else {
        return IrqReturn::None;
    };
    let status = ports.read_u8(u16::from(i801::HST_STS));
    if status & i801::STS_DONE_MASK == 0 {
        return IrqReturn::None;
    }
    ports.write_u8(u16::from(i801::HST_STS), status & i801::STS_CLEAR_MASK);
    drop(ports);
    shared
        .done
        .store(0x100 | u16::from(status), Ordering::Release);
    shared.wait.wake_all();
    IrqReturn::Handled
}

/// The registers of a bound controller, with the wait for a transaction's end.
struct Regs<'a> {
    ports: &'a IoPorts,
    shared: &'a Shared,
}

impl HostRegs for Regs<'_> {
    fn read(&self, reg: u8) -> u8 {
        self.ports.read_u8(u16::from(reg))
    }

    fn write(&self, reg: u8, value: u8) {
        if reg == i801::HST_CNT && value & i801::CNT_START != 0 {
            self.shared.done.store(0, Ordering::Release);
        }
        self.ports.write_u8(u16::from(reg), value);
    }

    fn uses_interrupt(&self) -> bool {
        self.shared.irq
    }

    fn wait_for_completion(&mut self) -> Option<u8> {
        if self.shared.irq {
            let done = &self.shared.done;
            let ended = self
                .shared
                .wait
                .wait_until_timeout(TIMEOUT_NS, || done.load(Ordering::Acquire) != 0);
            return ended.then(|| done.load(Ordering::Acquire) as u8);
        }
        // Polling fallback (no routable interrupt): a few immediate reads (QEMU finishes at
        // once), then 1 ms sleeps, bounded by the same timeout.
        let deadline = crate::kernel::time::uptime_ns().saturating_add(TIMEOUT_NS);
        for attempt in 0u32.. {
            let status = self.read(i801::HST_STS);
            if status & i801::STS_HOST_BUSY == 0 && status & i801::STS_DONE_MASK != 0 {
                return Some(status);
            }
            if crate::kernel::time::uptime_ns() >= deadline {
                return None;
            }
            if attempt >= 4 {
                crate::kernel::time::msleep(1);
            }
        }
        None
    }

    fn pause_after_kill(&mut self) {
        crate::kernel::time::msleep(1);
    }
}

/// The adapter the core calls (under its lock).
struct I801Adapter {
    shared: Arc<Shared>,
}

impl Adapter for I801Adapter {
    fn functionality(&self) -> Functionality {
        i801::FUNCTIONALITY
    }

    fn smbus_xfer(&mut self, address: u8, op: SmbusOp) -> Result<SmbusData, I2cError> {
        let ports = self.shared.ports.try_access().ok_or(I2cError::NoAdapter)?;
        let mut regs = Regs {
            ports: &ports,
            shared: &self.shared,
        };
        let result = i801::transfer(&mut regs, address, op);
        if result == Err(I2cError::Timeout) {
            crate::pr_err!("i801_smbus: transaction to 0x{address:02x} timed out; killed");
        }
        result
    }
}

struct I801Driver;

fn errno(message: &str, errno: Errno) -> ProbeError {
    crate::pr_err!("i801_smbus: {message}");
    errno.into()
}

impl Driver for I801Driver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let function = PciFunctionRef::from_name(ctx.device_name())
            .ok_or_else(|| errno("no such PCI function", Errno::ENODEV))?;
        let base = function.read32(i801::PCI_SMBA) & 0xfffe;
        if base == 0 || base > 0xffff {
            return Err(errno("SMBus base address uninitialized", Errno::ENODEV));
        }
        let base = base as u16;
        let hostc = function.read8(i801::PCI_HOSTC);
        if hostc & i801::HOSTC_HST_EN == 0 || hostc & i801::HOSTC_I2C_EN != 0 {
            crate::printk!("i801_smbus {}: enabling SMBus host", ctx.device_name());
            function.write8(
                i801::PCI_HOSTC,
                (hostc | i801::HOSTC_HST_EN) & !i801::HOSTC_I2C_EN,
            );
        }
        function.enable_io();

        let devres = ctx.devres();
        let ports = devm::request_region(devres, base, i801::SMBA_LEN, DRIVER)?;
        let gsi = function.intx_gsi();
        let shared = Arc::new(Shared {
            ports,
            done: AtomicU16::new(0),
            wait: WaitQueue::new(),
            irq: gsi.is_some(),
        });
        {
            let mut bound = BOUND.lock();
            if bound.is_some() {
                return Err(errno("a controller is already bound", Errno::EBUSY));
            }
            *bound = Some(Arc::clone(&shared));
        }
        devres.add_action("i801_smbus: forget the controller", || {
            BOUND.lock().take();
        });
        match gsi {
            // A PCI line (the firmware's trigger), which other functions may share.
            Some(gsi) => devm::request_irq(
                devres,
                gsi,
                interrupt,
                IrqFlags::SHARED,
                DRIVER,
                DevId::of(&*shared),
            )?,
            None => crate::pr_warn!(
                "i801_smbus: no INTx route for the controller; polling its status (bounded, \
                 1 ms sleeps)"
            ),
        }

        // Which SPD EEPROM addresses answer, before the adapter is shared.
        let mut probe_adapter = I801Adapter {
            shared: Arc::clone(&shared),
        };
        let present: alloc::vec::Vec<u8> = (0x50u8..=0x57)
            .filter(|&address| {
                probe_adapter
                    .smbus_xfer(address, lull_i2c::default_probe_op(address))
                    .is_ok()
            })
            .collect();
        drop(probe_adapter);

        let name = alloc::format!("SMBus I801 adapter at {base:04x}");
        let handle = super::add_adapter(name, Box::new(I801Adapter { shared }));
        let nr = handle.nr();
        drop(handle);
        devres.add_action("i801_smbus: i2c_del_adapter", move || {
            super::del_adapter(nr)
        });
        for address in present {
            ctx.add_child(super::client_desc(nr, address, "spd"));
        }
        Ok(())
    }
}

/// Registers the driver on the `pci` bus.
pub fn register() {
    let ids = alloc::vec![PciMatchId::device(0x8086, 0x2930)];
    if let Err(error) =
        crate::drivers::base::register_driver(DriverDesc::new("pci", DRIVER, ids, I801Driver))
    {
        crate::pr_err!("i801_smbus: cannot register the driver: {error}");
    }
}

/// The adapter number of the bound controller, if any (for tests).
#[allow(dead_code)]
pub fn bound_adapter_name() -> Option<String> {
    super::adapters()
        .into_iter()
        .find(|(_, name)| name.starts_with("SMBus I801"))
        .map(|(nr, _)| alloc::format!("i2c-{nr}"))
}
