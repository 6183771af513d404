//! The firmware's AML, loaded into Lull's interpreter (`lull-aml`): the host it runs on
//! (operation regions in memory, I/O and PCI configuration space; `Notify`; stalls) and the
//! loaded namespace, which only this module can build, from the tables the parser found, so
//! the region accesses AML makes go only where the firmware's own AML says.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use lull_aml::devices::{DeviceInfo, PrtEntry};
use lull_aml::{Error, Host, Namespace, NodeId, Space, Value};

use super::acpi::AcpiInfo;
use super::{cpu, port};

/// Physical addresses AML may reach as system memory: the identity map's first 4 GiB, less
/// page 0 (unmapped, to catch null pointers).
const MEMORY_START: u64 = 4096;
const MEMORY_END: u64 = 1 << 32;

/// The interpreter's host. Private: only this module makes one, for the namespace it loaded.
struct FirmwareHost {
    notified: Vec<(String, u64)>,
}

impl FirmwareHost {
    fn new() -> Self {
        Self {
            notified: Vec::new(),
        }
    }
}

fn memory_ok(address: u64, width: u8) -> Result<(), Error> {
    let aligned = address.is_multiple_of(width as u64);
    let inside = address >= MEMORY_START
        && address
            .checked_add(width as u64)
            .is_some_and(|end| end <= MEMORY_END);
    if !matches!(width, 1 | 2 | 4 | 8) || !aligned || !inside {
        return Err(Error::Host(
            "memory access outside the identity map or misaligned",
        ));
    }
    Ok(())
}

/// PCI configuration mechanism #1 (ports 0xCF8/0xCFC), segment 0 only.
fn pci_address(space: Space, offset: u64) -> Result<u32, Error> {
    let Space::PciConfig {
        segment: 0,
        bus,
        device,
        function,
    } = space
    else {
        return Err(Error::Host("PCI segments other than 0"));
    };
    if device > 31 || function > 7 || offset > 0xFF {
        return Err(Error::Host("PCI address out of range"));
    }
    Ok(0x8000_0000
        | (bus as u32) << 16
        | (device as u32) << 11
        | (function as u32) << 8
        | (offset as u32 & 0xFC))
}

impl Host for FirmwareHost {
    fn read(&mut self, space: Space, address: u64, width: u8) -> Result<u64, Error> {
        match space {
            Space::Memory => {
                memory_ok(address, width)?;
                let pointer = address as usize;
                // SAFETY: an aligned access inside the identity map (checked above) at an
                // address the firmware's AML names as a system-memory operation region.
                let value = unsafe {
                    match width {
                        1 => core::ptr::read_volatile(pointer as *const u8) as u64,
                        2 => core::ptr::read_volatile(pointer as *const u16) as u64,
                        4 => core::ptr::read_volatile(pointer as *const u32) as u64,
                        _ => core::ptr::read_volatile(pointer as *const u64),
                    }
                };
                Ok(value)
            }
            Space::Io => {
                let port = u16::try_from(address).map_err(|_| Error::Host("port > 0xFFFF"))?;
                Ok(match width {
                    1 => port::inb(port) as u64,
                    2 => port::inw(port) as u64,
                    4 => port::inl(port) as u64,
                    _ => port::inl(port) as u64 | (port::inl(port.wrapping_add(4)) as u64) << 32,
                })
            }
            Space::PciConfig { .. } => {
                let config = pci_address(space, address)?;
                // The data port's bytes are the dword's: a narrower access goes to its byte.
                Ok(u64::from(super::pci::conf1_read(
                    config,
                    (address & 3) as u16,
                    width,
                )))
            }
        }
    }

    fn write(&mut self, space: Space, address: u64, width: u8, value: u64) -> Result<(), Error> {
        match space {
            Space::Memory => {
                memory_ok(address, width)?;
                let pointer = address as usize;
                // SAFETY: as for `read`: an aligned access inside the identity map at an
                // address the firmware's AML names.
                unsafe {
                    match width {
                        1 => core::ptr::write_volatile(pointer as *mut u8, value as u8),
                        2 => core::ptr::write_volatile(pointer as *mut u16, value as u16),
                        4 => core::ptr::write_volatile(pointer as *mut u32, value as u32),
                        _ => core::ptr::write_volatile(pointer as *mut u64, value),
                    }
                }
                Ok(())
            }
            Space::Io => {
                let port = u16::try_from(address).map_err(|_| Error::Host("port > 0xFFFF"))?;
                match width {
                    1 => port::outb(port, value as u8),
                    2 => port::outw(port, value as u16),
                    4 => port::outl(port, value as u32),
                    _ => {
                        port::outl(port, value as u32);
                        port::outl(port.wrapping_add(4), (value >> 32) as u32);
                    }
                }
                Ok(())
            }
            Space::PciConfig { .. } => {
                let config = pci_address(space, address)?;
                // A narrow write touches only its bytes (no read-modify-write of the dword,
                // which would write back write-1-to-clear bits).
                super::pci::conf1_write(config, (address & 3) as u16, width, value as u32);
                Ok(())
            }
        }
    }

    fn notify(&mut self, path: &str, value: u64) {
        self.notified.push((path.into(), value));
    }

    fn stall(&mut self, microseconds: u64) {
        spin_at_least(microseconds);
    }

    fn sleep(&mut self, milliseconds: u64) {
        spin_at_least(milliseconds.saturating_mul(1000));
    }
}

/// Busy-waits at least `microseconds`, counting 1 GHz worth of TSC ticks per second (every
/// x86_64 this runs on counts at least that fast, so the wait is never shorter).
fn spin_at_least(microseconds: u64) {
    let deadline = cpu::rdtsc().saturating_add(microseconds.saturating_mul(1000));
    while cpu::rdtsc() < deadline {
        core::hint::spin_loop();
    }
}

/// The firmware's namespace, as loaded at boot.
pub struct FirmwareNamespace {
    namespace: Namespace,
}

/// What evaluating a method did besides its value: the `Notify`s it made, in order.
pub type Notifications = Vec<(String, u64)>;

impl FirmwareNamespace {
    /// Evaluates the object at `path` (a method with `args`, a field, a name).
    pub fn evaluate(
        &mut self,
        path: &str,
        args: Vec<Value>,
    ) -> (Result<Value, Error>, Notifications) {
        let mut host = FirmwareHost::new();
        let result = self.namespace.evaluate(&mut host, path, args);
        (result, host.notified)
    }

    /// Every device (and processor) with its ids, status and current resources.
    pub fn devices(&mut self) -> Vec<DeviceInfo> {
        lull_aml::devices::devices(&mut self.namespace, &mut FirmwareHost::new())
    }

    /// The devices whose `_HID` or `_CID` is one of `ids` (cheaper than [`Self::devices`]).
    pub fn find_by_id(&mut self, ids: &[&str]) -> Vec<DeviceInfo> {
        lull_aml::devices::find_by_id(&mut self.namespace, &mut FirmwareHost::new(), ids)
    }

    /// The `_PRT` of a PCI root bridge, links resolved to GSIs where their `_CRS` says.
    pub fn pci_routing(&mut self, bridge: NodeId) -> Result<Vec<PrtEntry>, Error> {
        lull_aml::devices::pci_routing(&mut self.namespace, &mut FirmwareHost::new(), bridge)
    }
}

/// `\_S5`'s SLP_TYPa once the namespace is loaded (`NO_SLEEP_TYPE` until then or without one).
static S5_SLEEP_TYPE: core::sync::atomic::AtomicU16 =
    core::sync::atomic::AtomicU16::new(NO_SLEEP_TYPE);
const NO_SLEEP_TYPE: u16 = u16::MAX;

/// `\_S5`'s sleep type, if [`load`] has run and found one.
pub fn s5_sleep_type() -> Option<u8> {
    match S5_SLEEP_TYPE.load(core::sync::atomic::Ordering::Acquire) {
        NO_SLEEP_TYPE => None,
        value => Some(value as u8),
    }
}

fn signature(bytes: &[u8]) -> &str {
    core::str::from_utf8(&bytes[..4]).unwrap_or("????")
}

/// Loads the DSDT and SSDTs the table parser found, records `\_S5` (see [`s5_sleep_type`]) and
/// tells the firmware Lull routes interrupts through IOAPICs (`\_PIC(1)`). Returns the
/// namespace (`None` without AML tables) and the problems met, as warning lines.
///
/// Not at boot: interpreting the DSDT is the largest piece of new code a boot would run, and
/// TCG pays for translating every new instruction. The ACPI driver loads it on first use
/// (thread context), normally in the device probe after the prompt.
pub fn load(info: &AcpiInfo) -> (Option<FirmwareNamespace>, Vec<String>) {
    let mut warnings = Vec::new();
    if info.aml_tables.is_empty() {
        return (None, warnings);
    }
    let mut namespace = Namespace::new();
    let mut host = FirmwareHost::new();
    for table in info.aml_tables.clone() {
        let Some(bytes) = table.bytes() else {
            warnings.push(alloc::format!(
                "ACPI: AML table at {:#x} failed its checksum; not loaded",
                table.address()
            ));
            continue;
        };
        let (error, problems) = match namespace.load_table(bytes, &mut host) {
            Ok(problems) => (None, problems),
            Err((error, problems)) => (Some(error), problems),
        };
        for problem in problems {
            warnings.push(alloc::format!(
                "ACPI: {}: {problem}; skipped",
                signature(bytes)
            ));
        }
        if let Some(error) = error {
            warnings.push(alloc::format!(
                "ACPI: {} at {:#x}: {error}; the rest of the table is not loaded",
                signature(bytes),
                table.address()
            ));
        }
    }
    match namespace.evaluate(&mut host, "\\_S5", vec![]) {
        Ok(Value::Package(elements)) => match elements.first().map(Value::as_integer) {
            Some(Ok(sleep_type)) => S5_SLEEP_TYPE.store(
                u16::from(sleep_type as u8),
                core::sync::atomic::Ordering::Release,
            ),
            _ => warnings.push("ACPI: \\_S5 has no integer SLP_TYPa".into()),
        },
        Ok(_) => warnings.push("ACPI: \\_S5 is not a package".into()),
        Err(Error::NotFound(_)) => {
            warnings.push("ACPI: no \\_S5; poweroff uses sleep type 0".into())
        }
        Err(error) => warnings.push(alloc::format!("ACPI: \\_S5: {error}")),
    }
    if !info.io_apics.is_empty() && namespace.find("\\_PIC").is_some() {
        if let Err(error) = namespace.evaluate(&mut host, "\\_PIC", vec![Value::Integer(1)]) {
            warnings.push(alloc::format!("ACPI: \\_PIC(1) (APIC mode): {error}"));
        }
    }
    (Some(FirmwareNamespace { namespace }), warnings)
}
