//! Emulated devices and the port-I/O bus that routes vCPU exits to them.
//!
//! Everything performance-relevant (LAPIC, IOAPIC, PIC, PIT) is in KVM; what is left here is
//! slow-path: COM1, the ACPI PM block, and a debug-exit port for test kernels.

pub mod acpi_pm;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex, PoisonError};

use crate::arch::acpi::{COM1_PORT, PM1A_CONTROL_PORT, PM1A_EVENT_PORT, PM_TIMER_PORT};
use acpi_pm::{AcpiPm, PmAction};
use serial::SerialConsole;

/// QEMU's isa-debug-exit port: a test kernel writes N and the VMM exits with (N << 1) | 1.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// i8042 command port: 0xfe written here is the classic "pulse reset line".
pub const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET_COMMAND: u8 = 0xfe;

/// Which device a port access went to (for the VMM's exit counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortDevice {
    Serial,
    AcpiPm,
    DebugExit,
    I8042,
    Unclaimed,
}

/// Something the guest asked of the machine through a port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineRequest {
    /// ACPI S5 (soft off): the VMM exits with status 0.
    PowerOff,
    /// Reset through the i8042; lull-vmm does not reboot and exits with status 0.
    Reset,
    /// isa-debug-exit: exit with status (value << 1) | 1.
    DebugExit(u32),
}

/// Routes port I/O to devices. Shared by all vCPU threads.
pub struct PortIoBus {
    pub serial: Arc<Mutex<SerialConsole>>,
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    /// The virtio-mmio register windows (MMIO exits, not ports, but the same vCPU path).
    pub mmio: virtio::MmioBus,
}

impl PortIoBus {
    /// Handles an IN: fills `data` (unclaimed ports read as all ones, as on real buses).
    pub fn read(&self, port: u16, data: &mut [u8]) -> PortDevice {
        match port {
            COM1_PORT..=0x3ff => {
                let value = lock(&self.serial).read((port - COM1_PORT) as u8);
                data.fill(0);
                if let Some(first) = data.first_mut() {
                    *first = value;
                }
                PortDevice::Serial
            }
            PM1A_EVENT_PORT..=0x60b => {
                lock(&self.acpi_pm).read(port, data);
                PortDevice::AcpiPm
            }
            _ => {
                data.fill(0xff);
                PortDevice::Unclaimed
            }
        }
    }

    /// Handles an OUT; returns the device and any machine-level request it made.
    pub fn write(&self, port: u16, data: &[u8]) -> (PortDevice, Option<MachineRequest>) {
        match port {
            COM1_PORT..=0x3ff => {
                if let Some(&value) = data.first() {
                    lock(&self.serial).write((port - COM1_PORT) as u8, value);
                }
                (PortDevice::Serial, None)
            }
            PM1A_EVENT_PORT..=0x60b => {
                let action = lock(&self.acpi_pm).write(port, data);
                let request = action.map(|PmAction::PowerOff| MachineRequest::PowerOff);
                (PortDevice::AcpiPm, request)
            }
            DEBUG_EXIT_PORT => {
                let mut value = [0u8; 4];
                let length = data.len().min(4);
                value[..length].copy_from_slice(&data[..length]);
                (
                    PortDevice::DebugExit,
                    Some(MachineRequest::DebugExit(u32::from_le_bytes(value))),
                )
            }
            I8042_COMMAND_PORT if data.first() == Some(&I8042_RESET_COMMAND) => {
                (PortDevice::I8042, Some(MachineRequest::Reset))
            }
            _ => (PortDevice::Unclaimed, None),
        }
    }
}

/// Locks a device. A poisoned lock means a thread panicked mid-access; the device state is
/// still the best we have, so carry on with it rather than take the VM down.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

const _: () = assert!(PM_TIMER_PORT + 3 == 0x60b && PM1A_CONTROL_PORT == 0x604);

#[cfg(test)]
mod tests {
    use super::*;
    use acpi_pm::tests::FakeIrqLine;

    fn bus() -> (PortIoBus, Arc<FakeIrqLine>, Arc<Mutex<Vec<u8>>>) {
        let line = Arc::new(FakeIrqLine::default());
        let output = Arc::new(Mutex::new(Vec::new()));
        let serial = SerialConsole::new_for_test(output.clone());
        let bus = PortIoBus {
            serial: Arc::new(Mutex::new(serial)),
            acpi_pm: Arc::new(Mutex::new(AcpiPm::new(line.clone()))),
            mmio: virtio::MmioBus::default(),
        };
        (bus, line, output)
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_ignore_writes() {
        let (bus, _, _) = bus();
        let mut data = [0u8; 2];
        assert_eq!(bus.read(0x1234, &mut data), PortDevice::Unclaimed);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(bus.write(0x1234, &[1]), (PortDevice::Unclaimed, None));
    }

    #[test]
    fn serial_writes_reach_the_output() {
        let (bus, _, output) = bus();
        bus.write(COM1_PORT, b"A");
        assert_eq!(&*output.lock().unwrap(), b"A");
    }

    #[test]
    fn s5_write_is_a_poweroff_request() {
        let (bus, _, _) = bus();
        let value: u16 = (1 << 13) | (5 << 10);
        assert_eq!(
            bus.write(PM1A_CONTROL_PORT, &value.to_le_bytes()),
            (PortDevice::AcpiPm, Some(MachineRequest::PowerOff))
        );
    }

    #[test]
    fn debug_exit_and_i8042_reset_are_requests() {
        let (bus, _, _) = bus();
        assert_eq!(
            bus.write(DEBUG_EXIT_PORT, &[3]).1,
            Some(MachineRequest::DebugExit(3))
        );
        assert_eq!(
            bus.write(I8042_COMMAND_PORT, &[0xfe]).1,
            Some(MachineRequest::Reset)
        );
        assert_eq!(bus.write(I8042_COMMAND_PORT, &[0xd1]).1, None);
    }

    #[test]
    fn empty_accesses_do_not_panic() {
        let (bus, _, _) = bus();
        bus.read(COM1_PORT, &mut []);
        bus.write(COM1_PORT, &[]);
        bus.write(PM1A_CONTROL_PORT, &[]);
        bus.read(PM1A_EVENT_PORT, &mut []);
    }
}
