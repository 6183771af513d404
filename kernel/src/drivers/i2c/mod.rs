//! The I2C/SMBus core (Linux's `drivers/i2c/i2c-core-*.c`): adapters numbered `i2c-N`, one
//! sleeping lock per adapter around each transaction, client devices on the driver model's
//! `i2c` bus named `N-00AA`, and the i2c-tools shell commands.
//!
//! The transaction types, errnos, the i801 protocol and the tools' text are `lull-i2c`
//! (host-tested); this module supplies the locking and the registry.
//!
//! # Lifetimes and locking
//!
//! An adapter is registered by its bus driver's probe ([`add_adapter`]) and deleted by its
//! remove ([`del_adapter`]). The registry (`ADAPTERS`, a sleeping mutex, leaf) only maps
//! numbers to [`AdapterHandle`]s; a transaction takes the handle's own mutex (`i2c_adapter`,
//! Linux's bus lock) for its whole length and sleeps in it while the controller works. Deleting
//! takes the same mutex, so it waits for the transaction in flight, then empties the slot: later
//! users get `ENODEV`. Client devices are children of the adapter's device, added by the bus
//! driver's probe, so the model removes them (their drivers unbound) before the adapter goes.
//!
//! Lock order: driver model → `i2c_adapter` (probes of clients transfer under the model's lock);
//! the shell takes `i2c_adapter` alone. No adapter lock is held while taking the model's.

pub mod eeprom;
pub mod i801;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use lull_driver_core::{DeviceDesc, I2cDeviceId};
use lull_i2c::tools::{self, Cell, Command};
use lull_i2c::{Adapter, I2cError, SmbusData, SmbusOp};

use crate::kernel::locking::Mutex;

/// One registered adapter.
pub struct AdapterHandle {
    nr: u32,
    name: String,
    /// The bus driver's side; `None` once deleted.
    bus: Mutex<Option<Box<dyn Adapter + Send>>>,
}

impl AdapterHandle {
    /// `i2c-N`'s N.
    pub fn nr(&self) -> u32 {
        self.nr
    }

    /// Performs one transaction under the adapter's lock (`i2c_smbus_xfer`).
    pub fn xfer(&self, address: u8, op: SmbusOp) -> Result<SmbusData, I2cError> {
        if address > 0x7f {
            return Err(I2cError::Invalid);
        }
        let mut bus = self.bus.lock();
        let adapter = bus.as_mut().ok_or(I2cError::NoAdapter)?;
        if !adapter.functionality().contains(op.needs()) {
            return Err(I2cError::Unsupported);
        }
        adapter.smbus_xfer(address, op)
    }
}

static ADAPTERS: Mutex<Vec<Arc<AdapterHandle>>> = Mutex::named("i2c_adapters", Vec::new());

/// Registers `adapter` under the lowest free number (`i2c_add_adapter`); returns it.
pub fn add_adapter(name: String, adapter: Box<dyn Adapter + Send>) -> Arc<AdapterHandle> {
    let mut adapters = ADAPTERS.lock();
    let nr = (0u32..)
        .find(|n| !adapters.iter().any(|a| a.nr == *n))
        .unwrap_or_default();
    let handle = Arc::new(AdapterHandle {
        nr,
        name,
        bus: Mutex::named("i2c_adapter", Some(adapter)),
    });
    adapters.push(Arc::clone(&handle));
    adapters.sort_by_key(|a| a.nr);
    crate::pr_debug!("i2c i2c-{nr}: adapter [{}] registered", handle.name);
    handle
}

/// Deletes adapter `nr` (`i2c_del_adapter`): waits for a transaction in flight, then drops
/// the bus driver's side. Its clients must already be gone (the model removes them first).
pub fn del_adapter(nr: u32) {
    let handle = {
        let mut adapters = ADAPTERS.lock();
        let Some(index) = adapters.iter().position(|a| a.nr == nr) else {
            return;
        };
        adapters.remove(index)
    };
    drop(handle.bus.lock().take());
}

/// The adapter `i2c-nr`, if registered.
pub fn adapter(nr: u32) -> Option<Arc<AdapterHandle>> {
    ADAPTERS.lock().iter().find(|a| a.nr == nr).cloned()
}

/// `(nr, name)` of every adapter.
pub fn adapters() -> Vec<(u32, String)> {
    ADAPTERS
        .lock()
        .iter()
        .map(|a| (a.nr, a.name.clone()))
        .collect()
}

/// A client device for the model's `i2c` bus (`i2c_new_client_device`): `N-00AA`, matched by
/// `name`. Added as a child of the adapter's device by the bus driver's probe.
pub fn client_desc(nr: u32, address: u8, name: &str) -> DeviceDesc {
    DeviceDesc::new(
        "i2c",
        lull_i2c::client_name(nr, address),
        I2cDeviceId {
            name: String::from(name),
        },
    )
}

/// Registers the client drivers and the `/sys/bus/i2c/devices/*` files. Boot, thread context,
/// before the bus drivers (so clients bind as they appear).
pub fn init() {
    eeprom::register();
    i801::register();
}

/// The client addresses on `nr` that have a bound driver (`UU` in `i2cdetect`).
fn bound_addresses(nr: u32) -> Vec<u8> {
    crate::drivers::base::with_model(|model| {
        model
            .sysfs_bus_devices("i2c")
            .unwrap_or_default()
            .into_iter()
            .filter(|name| {
                model
                    .device_state("i2c", name)
                    .is_some_and(|state| state.is_bound())
            })
            .filter_map(|name| lull_i2c::parse_client_name(&name))
            .filter(|&(bus, _)| bus == nr)
            .map(|(_, address)| address)
            .collect()
    })
    .unwrap_or_default()
}

/// `i2cdetect`, `i2cget`, `i2cset`, `i2cdump` (args\[0\] is the command's name).
pub fn cmd_tools(args: &[&str]) -> Result<String, String> {
    let command = tools::parse(args)?;
    // The adapters appear during the boot-time probe, which runs beside the shell.
    crate::drivers::wait_for_device_probe();
    let force = args.contains(&"-f");
    let open = |bus: u32| adapter(bus).ok_or_else(|| tools::no_such_bus(bus));
    let check_busy = |bus: u32, address: u8| {
        if !force && bound_addresses(bus).contains(&address) {
            return Err(alloc::format!(
                "Error: Could not set address to 0x{address:02x}: Device or resource busy"
            ));
        }
        Ok(())
    };
    match command {
        Command::List => {
            let mut out = String::new();
            for (nr, name) in adapters() {
                out.push_str(&tools::list_line(nr, &name));
                out.push('\n');
            }
            Ok(out)
        }
        Command::Detect {
            bus,
            first,
            last,
            mode,
        } => {
            let handle = open(bus)?;
            let busy = bound_addresses(bus);
            Ok(tools::detect_grid(first, last, |address| {
                if busy.contains(&address) {
                    return Cell::Busy;
                }
                match handle.xfer(address, mode.op(address)) {
                    Ok(_) => Cell::Present,
                    Err(_) => Cell::Absent,
                }
            }))
        }
        Command::Get { bus, address, op } => {
            let handle = open(bus)?;
            check_busy(bus, address)?;
            handle
                .xfer(address, op)
                .map(tools::format_value)
                .map_err(|_| String::from("Error: Read failed"))
        }
        Command::Set { bus, address, op } => {
            let handle = open(bus)?;
            check_busy(bus, address)?;
            handle
                .xfer(address, op)
                .map(|_| String::new())
                .map_err(|_| String::from("Error: Write failed"))
        }
        Command::Dump { bus, address } => {
            let handle = open(bus)?;
            check_busy(bus, address)?;
            Ok(tools::dump_bytes(|register| {
                match handle.xfer(address, SmbusOp::ReadByteData(register)) {
                    Ok(data) => Some(data.value() as u8),
                    Err(_) => None,
                }
            }))
        }
    }
}
