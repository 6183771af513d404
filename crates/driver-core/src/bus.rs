//! ID-table matching, one matcher per bus, and the ready-made matchers for Lull's buses.
//!
//! Each bus matches on its own types: a PCI device is matched by vendor/device/subsystem/class,
//! a virtio device by its device id, a platform device by ACPI `_HID`/`_CID`, compatible
//! strings and its name, an I2C client by name. [`BusMatch`] states that per bus with associated
//! types, so a driver's table and a device's match data are checked at compile time where the
//! kernel builds them; the registry stores them type-erased (one registry holds every bus) and
//! checks the types once, at registration.
//!
//! The matchers follow Linux's rules: `pci_match_one_device`, `virtio_id_match`,
//! `__acpi_match_device` and `platform_match`, `i2c_match_id`. The index returned is the
//! matching entry's position in the driver's table, handed to the probe as Linux hands it the
//! `const struct pci_device_id *`.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::any::Any;
use core::marker::PhantomData;

/// How one bus matches a driver's ID table against a device.
pub trait BusMatch: Send + Sync + 'static {
    /// What a device on this bus is matched by (its ids, compatible strings, name).
    type DeviceId: Send + Sync + 'static;
    /// One entry of a driver's ID table.
    type DriverId: Send + Sync + 'static;

    /// The index of the first entry of `driver_ids` that matches `device`, if any.
    fn matches(&self, driver_ids: &[Self::DriverId], device: &Self::DeviceId) -> Option<usize>;
}

/// The registry's type-erased view of a [`BusMatch`].
pub(crate) trait ErasedMatch: Send + Sync {
    /// `None` also when either side is not of the bus's types.
    fn matches(
        &self,
        driver_ids: &(dyn Any + Send + Sync),
        device: &(dyn Any + Send + Sync),
    ) -> Option<usize>;
    fn entry<'t>(
        &self,
        driver_ids: &'t (dyn Any + Send + Sync),
        index: usize,
    ) -> Option<&'t (dyn Any + Send + Sync)>;
    fn is_device_type(&self, device: &(dyn Any + Send + Sync)) -> bool;
    fn is_table_type(&self, driver_ids: &(dyn Any + Send + Sync)) -> bool;
}

pub(crate) struct Erased<B: BusMatch>(pub(crate) B, PhantomData<fn() -> B>);

impl<B: BusMatch> Erased<B> {
    pub(crate) fn boxed(matcher: B) -> Box<dyn ErasedMatch> {
        Box::new(Self(matcher, PhantomData))
    }
}

impl<B: BusMatch> ErasedMatch for Erased<B> {
    fn matches(
        &self,
        driver_ids: &(dyn Any + Send + Sync),
        device: &(dyn Any + Send + Sync),
    ) -> Option<usize> {
        let table = driver_ids.downcast_ref::<Vec<B::DriverId>>()?;
        let device = device.downcast_ref::<B::DeviceId>()?;
        self.0.matches(table, device)
    }

    fn entry<'t>(
        &self,
        driver_ids: &'t (dyn Any + Send + Sync),
        index: usize,
    ) -> Option<&'t (dyn Any + Send + Sync)> {
        let table = driver_ids.downcast_ref::<Vec<B::DriverId>>()?;
        table
            .get(index)
            .map(|entry| entry as &(dyn Any + Send + Sync))
    }

    fn is_device_type(&self, device: &(dyn Any + Send + Sync)) -> bool {
        device.is::<B::DeviceId>()
    }

    fn is_table_type(&self, driver_ids: &(dyn Any + Send + Sync)) -> bool {
        driver_ids.is::<Vec<B::DriverId>>()
    }
}

/// Linux's `PCI_ANY_ID`: a table field that matches any value.
pub const PCI_ANY_ID: u32 = 0xffff_ffff;

/// What a PCI function is matched by: its configuration-space ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciDeviceId {
    /// Vendor id (offset 0x00).
    pub vendor: u16,
    /// Device id (offset 0x02).
    pub device: u16,
    /// Subsystem vendor id (offset 0x2c).
    pub subvendor: u16,
    /// Subsystem id (offset 0x2e).
    pub subdevice: u16,
    /// Class code, subclass and programming interface: `class << 16 | subclass << 8 | prog_if`.
    pub class: u32,
}

/// One entry of a PCI driver's ID table (`struct pci_device_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciMatchId {
    /// Vendor to match, or [`PCI_ANY_ID`].
    pub vendor: u32,
    /// Device to match, or [`PCI_ANY_ID`].
    pub device: u32,
    /// Subsystem vendor to match, or [`PCI_ANY_ID`].
    pub subvendor: u32,
    /// Subsystem device to match, or [`PCI_ANY_ID`].
    pub subdevice: u32,
    /// Class bits to match, under `class_mask`.
    pub class: u32,
    /// Which class bits must match; 0 ignores the class.
    pub class_mask: u32,
    /// Driver-private data for this entry (Linux's `driver_data`).
    pub driver_data: usize,
}

impl PciMatchId {
    /// Matches one vendor/device pair, any subsystem, any class (`PCI_DEVICE(vendor, device)`).
    pub const fn device(vendor: u16, device: u16) -> Self {
        Self {
            vendor: vendor as u32,
            device: device as u32,
            subvendor: PCI_ANY_ID,
            subdevice: PCI_ANY_ID,
            class: 0,
            class_mask: 0,
            driver_data: 0,
        }
    }

    /// Matches any device whose class bits under `class_mask` equal `class`
    /// (`PCI_DEVICE_CLASS(class, mask)`).
    pub const fn class(class: u32, class_mask: u32) -> Self {
        Self {
            vendor: PCI_ANY_ID,
            device: PCI_ANY_ID,
            subvendor: PCI_ANY_ID,
            subdevice: PCI_ANY_ID,
            class,
            class_mask,
            driver_data: 0,
        }
    }

    /// The same entry, restricted to one subsystem (`PCI_DEVICE_SUB`).
    #[must_use]
    pub const fn subsystem(mut self, subvendor: u16, subdevice: u16) -> Self {
        self.subvendor = subvendor as u32;
        self.subdevice = subdevice as u32;
        self
    }

    /// The same entry carrying `data` for the probe.
    #[must_use]
    pub const fn data(mut self, data: usize) -> Self {
        self.driver_data = data;
        self
    }

    /// `pci_match_one_device`.
    pub fn matches(&self, dev: &PciDeviceId) -> bool {
        let field = |want: u32, have: u16| want == PCI_ANY_ID || want == u32::from(have);
        field(self.vendor, dev.vendor)
            && field(self.device, dev.device)
            && field(self.subvendor, dev.subvendor)
            && field(self.subdevice, dev.subdevice)
            && (self.class ^ dev.class) & self.class_mask == 0
    }
}

/// The PCI bus's matcher: first table entry that matches, as `pci_match_id`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PciMatch;

impl BusMatch for PciMatch {
    type DeviceId = PciDeviceId;
    type DriverId = PciMatchId;

    fn matches(&self, driver_ids: &[PciMatchId], device: &PciDeviceId) -> Option<usize> {
        driver_ids.iter().position(|id| id.matches(device))
    }
}

/// Linux's `VIRTIO_DEV_ANY_ID`.
pub const VIRTIO_DEV_ANY_ID: u32 = 0xffff_ffff;

/// What a virtio device is matched by (`struct virtio_device_id` of the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioDeviceId {
    /// Device type: 1 net, 2 block, 3 console, 4 entropy… (virtio 1.2 §5).
    pub device: u32,
    /// Vendor (the PCI subsystem vendor for virtio-pci).
    pub vendor: u32,
}

/// One entry of a virtio driver's ID table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMatchId {
    /// Device type to match, or [`VIRTIO_DEV_ANY_ID`].
    pub device: u32,
    /// Vendor to match, or [`VIRTIO_DEV_ANY_ID`].
    pub vendor: u32,
}

impl VirtioMatchId {
    /// Matches one device type from any vendor.
    pub const fn device(device: u32) -> Self {
        Self {
            device,
            vendor: VIRTIO_DEV_ANY_ID,
        }
    }

    /// `virtio_id_match`.
    pub fn matches(&self, dev: &VirtioDeviceId) -> bool {
        (self.device == VIRTIO_DEV_ANY_ID || self.device == dev.device)
            && (self.vendor == VIRTIO_DEV_ANY_ID || self.vendor == dev.vendor)
    }
}

/// The virtio bus's matcher.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioMatch;

impl BusMatch for VirtioMatch {
    type DeviceId = VirtioDeviceId;
    type DriverId = VirtioMatchId;

    fn matches(&self, driver_ids: &[VirtioMatchId], device: &VirtioDeviceId) -> Option<usize> {
        driver_ids.iter().position(|id| id.matches(device))
    }
}

/// What a platform (or ACPI-enumerated) device is matched by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformDeviceId {
    /// The platform name (`serial8250`, `i8042`); also matched against name entries.
    pub name: String,
    /// ACPI `_HID`, if enumerated by ACPI (`PNP0C0C`).
    pub hid: Option<String>,
    /// ACPI `_CID`s, in firmware order.
    pub cids: Vec<String>,
    /// Device-tree style compatible strings, most specific first.
    pub compatible: Vec<String>,
}

/// One entry of a platform driver's match table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformMatchId {
    /// An ACPI id, matched against `_HID` then each `_CID` (`struct acpi_device_id`).
    Acpi(&'static str),
    /// A compatible string (`struct of_device_id`).
    Compatible(&'static str),
    /// A platform device name (`struct platform_device_id`, or the driver's name).
    Name(&'static str),
}

/// The platform/ACPI bus's matcher, in `platform_match`'s order: compatible strings, then ACPI
/// ids, then names.
///
/// Within ACPI ids the device's ids are the outer loop (`_HID` first, then the `_CID`s in
/// order) and the table the inner one, as `__acpi_match_device`: a table entry for the `_HID`
/// wins over an earlier entry for a `_CID`. Compatible strings likewise go most specific first.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlatformMatch;

impl BusMatch for PlatformMatch {
    type DeviceId = PlatformDeviceId;
    type DriverId = PlatformMatchId;

    fn matches(&self, driver_ids: &[PlatformMatchId], device: &PlatformDeviceId) -> Option<usize> {
        let find = |want: &dyn Fn(&PlatformMatchId) -> bool| driver_ids.iter().position(want);
        device
            .compatible
            .iter()
            .find_map(|c| find(&|id| matches!(id, PlatformMatchId::Compatible(s) if s == c)))
            .or_else(|| {
                device
                    .hid
                    .iter()
                    .chain(device.cids.iter())
                    .find_map(|hw| find(&|id| matches!(id, PlatformMatchId::Acpi(s) if s == hw)))
            })
            .or_else(|| find(&|id| matches!(id, PlatformMatchId::Name(s) if *s == device.name)))
    }
}

/// What an I2C client is matched by: its name (`i2c_board_info.type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I2cDeviceId {
    /// The client's name (`lm75`, `24c02`).
    pub name: String,
}

/// The I2C bus's matcher, `i2c_match_id`: the first table name equal to the client's.
#[derive(Clone, Copy, Debug, Default)]
pub struct I2cMatch;

impl BusMatch for I2cMatch {
    type DeviceId = I2cDeviceId;
    type DriverId = &'static str;

    fn matches(&self, driver_ids: &[&'static str], device: &I2cDeviceId) -> Option<usize> {
        driver_ids.iter().position(|name| *name == device.name)
    }
}
