//! Device initialisation over a transport: reset, the status byte sequence, feature
//! negotiation, queue and MSI-X vector set-up (virtio 1.2 §3.1.1, §4.1.5).
//!
//! [`DeviceInit`] is a small state machine: `begin` (reset, ACKNOWLEDGE, DRIVER), `negotiate`
//! (features, FEATURES_OK, re-read), `setup_queue` / `set_config_vector`, `finish`
//! (DRIVER_OK). Any failure on the way writes FAILED and leaves the machine failed, so a
//! half-initialised device never reaches DRIVER_OK.

use crate::memory::QueueLayout;

/// Device status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status bit: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status bit: the driver is ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status bit: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 128;

/// Descriptors may be indirect tables (not used by [`SplitQueue`](crate::SplitQueue)).
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// `used_event` / `avail_event` notification suppression.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
/// A modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The device accesses memory through the platform's IOMMU.
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Packed rings (not implemented here: never accept it with a [`SplitQueue`](crate::SplitQueue)).
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;

/// "No MSI-X vector": written to unassign, and read back when the device could not allocate
/// the vector asked for.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// The register interface of a virtio transport (the PCI common configuration structure, or
/// the MMIO registers), as the kernel maps it.
pub trait Transport {
    /// Reads `device_status`.
    fn read_status(&mut self) -> u8;
    /// Writes `device_status`; 0 resets the device.
    fn write_status(&mut self, status: u8);
    /// Reads 32 feature bits: `device_feature_select = select`, then `device_feature`.
    fn read_device_features(&mut self, select: u32) -> u32;
    /// Writes 32 feature bits: `driver_feature_select = select`, then `driver_feature`.
    fn write_driver_features(&mut self, select: u32, features: u32);
    /// Number of queues the device has (`num_queues`).
    fn num_queues(&mut self) -> u16;
    /// Selects the queue the following queue registers refer to (`queue_select`).
    fn select_queue(&mut self, queue: u16);
    /// The selected queue's maximum size (`queue_size` as read after reset); 0 if unavailable.
    fn queue_max_size(&mut self) -> u16;
    /// Sets the selected queue's size.
    fn set_queue_size(&mut self, size: u16);
    /// Sets the selected queue's descriptor table, driver (available) and device (used) areas.
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64);
    /// Writes `queue_enable`.
    fn set_queue_enable(&mut self, enable: bool);
    /// The selected queue's `queue_notify_off`.
    fn queue_notify_off(&mut self) -> u16;
    /// Writes `queue_msix_vector` of the selected queue.
    fn write_queue_msix_vector(&mut self, vector: u16);
    /// Reads back `queue_msix_vector` of the selected queue.
    fn read_queue_msix_vector(&mut self) -> u16;
    /// Writes `config_msix_vector`.
    fn write_config_msix_vector(&mut self, vector: u16);
    /// Reads back `config_msix_vector`.
    fn read_config_msix_vector(&mut self) -> u16;
    /// Waits a little between polls of the status during reset (a pause or a short sleep).
    fn delay(&mut self) {}
}

/// Why initialisation failed. Every one of them (but `WrongStage`) wrote FAILED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The status did not read back 0 after a reset within the allowed polls.
    ResetTimeout {
        /// The status last read.
        status: u8,
    },
    /// The device does not offer VIRTIO_F_VERSION_1, or the driver did not ask for it: this
    /// crate drives modern devices only.
    NoVersion1,
    /// The driver asked for packed rings, which this crate does not implement.
    PackedRingUnsupported,
    /// FEATURES_OK did not read back: the device refused the feature subset.
    FeaturesNotAccepted {
        /// The features written.
        features: u64,
    },
    /// Queue index not below `num_queues`, or a queue the device reports unavailable (size 0).
    QueueUnavailable {
        /// The queue.
        queue: u16,
    },
    /// The layout's size exceeds the queue's maximum.
    QueueTooLarge {
        /// The queue.
        queue: u16,
        /// The layout's size.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// The device read back `VIRTIO_MSI_NO_VECTOR` (or another vector): it could not allocate
    /// the one asked for. `queue` is `None` for the configuration vector.
    VectorNotAllocated {
        /// The queue, or `None` for the config vector.
        queue: Option<u16>,
        /// The vector asked for.
        vector: u16,
        /// What read back.
        read_back: u16,
    },
    /// The device set DEVICE_NEEDS_RESET during initialisation.
    DeviceNeedsReset,
    /// A step was called out of order, or after a failure.
    WrongStage,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ResetTimeout { status } => {
                write!(f, "device status still {status:#04x} after reset")
            }
            Self::NoVersion1 => f.write_str("VIRTIO_F_VERSION_1 not offered or not requested"),
            Self::PackedRingUnsupported => f.write_str("packed rings are not supported"),
            Self::FeaturesNotAccepted { features } => {
                write!(
                    f,
                    "device refused features {features:#x} (FEATURES_OK cleared)"
                )
            }
            Self::QueueUnavailable { queue } => write!(f, "queue {queue} is not available"),
            Self::QueueTooLarge { queue, size, max } => {
                write!(
                    f,
                    "queue {queue}: size {size} exceeds the device maximum {max}"
                )
            }
            Self::VectorNotAllocated {
                queue,
                vector,
                read_back,
            } => {
                match queue {
                    Some(queue) => write!(f, "queue {queue}")?,
                    None => f.write_str("config")?,
                }
                write!(
                    f,
                    ": MSI-X vector {vector} not allocated (read back {read_back:#06x})"
                )
            }
            Self::DeviceNeedsReset => f.write_str("device needs reset"),
            Self::WrongStage => f.write_str("initialisation step out of order"),
        }
    }
}

impl core::error::Error for InitError {}

/// Resets the device: writes 0 and polls until the status reads 0, at most `max_polls` times
/// (calling [`Transport::delay`] between polls).
pub fn reset_device<T: Transport>(transport: &mut T, max_polls: u32) -> Result<(), InitError> {
    transport.write_status(0);
    let mut status = transport.read_status();
    for _ in 0..max_polls {
        if status == 0 {
            return Ok(());
        }
        transport.delay();
        status = transport.read_status();
    }
    if status == 0 {
        Ok(())
    } else {
        transport.write_status(status | STATUS_FAILED);
        Err(InitError::ResetTimeout { status })
    }
}

/// Where [`DeviceInit`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitStage {
    /// ACKNOWLEDGE and DRIVER written; features not yet negotiated.
    Driver,
    /// FEATURES_OK accepted; queues may be set up.
    FeaturesOk,
    /// DRIVER_OK written.
    DriverOk,
    /// FAILED written.
    Failed,
}

/// What [`DeviceInit::setup_queue`] configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    /// The queue.
    pub queue: u16,
    /// Its `queue_notify_off` (the transport turns it into the doorbell address).
    pub notify_off: u16,
    /// Its MSI-X vector as the device accepted it, or `VIRTIO_MSI_NO_VECTOR`.
    pub msix_vector: u16,
}

/// The driver's side of device initialisation; see the [module documentation](self).
#[derive(Debug)]
pub struct DeviceInit<'t, T: Transport> {
    transport: &'t mut T,
    stage: InitStage,
    features: u64,
}

impl<'t, T: Transport> DeviceInit<'t, T> {
    /// Resets the device (polling at most `reset_polls` times), then writes ACKNOWLEDGE and
    /// DRIVER.
    pub fn begin(transport: &'t mut T, reset_polls: u32) -> Result<Self, InitError> {
        reset_device(transport, reset_polls)?;
        transport.write_status(STATUS_ACKNOWLEDGE);
        transport.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        Ok(Self {
            transport,
            stage: InitStage::Driver,
            features: 0,
        })
    }

    /// The current stage.
    pub fn stage(&self) -> InitStage {
        self.stage
    }

    /// The features offered by the device (both 32-bit halves).
    pub fn device_features(&mut self) -> u64 {
        let low = u64::from(self.transport.read_device_features(0));
        let high = u64::from(self.transport.read_device_features(1));
        low | high << 32
    }

    /// Negotiates: writes the device's features ∩ `driver_supported`, sets FEATURES_OK and
    /// re-reads it. VIRTIO_F_VERSION_1 must be offered and in `driver_supported`; packed rings
    /// must not be asked for. Returns the negotiated features.
    pub fn negotiate(&mut self, driver_supported: u64) -> Result<u64, InitError> {
        self.expect(InitStage::Driver)?;
        if driver_supported & VIRTIO_F_RING_PACKED != 0 {
            return Err(self.fail(InitError::PackedRingUnsupported));
        }
        let offered = self.device_features();
        let features = offered & driver_supported;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(self.fail(InitError::NoVersion1));
        }
        // Truncation to the two halves is the point here.
        self.transport
            .write_driver_features(0, (features & 0xffff_ffff) as u32);
        self.transport
            .write_driver_features(1, (features >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.transport.write_status(status);
        let read_back = self.transport.read_status();
        if read_back & STATUS_DEVICE_NEEDS_RESET != 0 {
            return Err(self.fail(InitError::DeviceNeedsReset));
        }
        if read_back & STATUS_FEATURES_OK == 0 {
            return Err(self.fail(InitError::FeaturesNotAccepted { features }));
        }
        self.features = features;
        self.stage = InitStage::FeaturesOk;
        Ok(features)
    }

    /// Programs queue `queue` with `layout` and, if given, MSI-X `vector` (checking the
    /// read-back: `VIRTIO_MSI_NO_VECTOR` or any other value means the device could not
    /// allocate it), then enables it.
    pub fn setup_queue(
        &mut self,
        queue: u16,
        layout: &QueueLayout,
        vector: Option<u16>,
    ) -> Result<QueueSetup, InitError> {
        self.expect(InitStage::FeaturesOk)?;
        if queue >= self.transport.num_queues() {
            return Err(self.fail(InitError::QueueUnavailable { queue }));
        }
        self.transport.select_queue(queue);
        let max = self.transport.queue_max_size();
        if max == 0 {
            return Err(self.fail(InitError::QueueUnavailable { queue }));
        }
        if layout.size() > max {
            return Err(self.fail(InitError::QueueTooLarge {
                queue,
                size: layout.size(),
                max,
            }));
        }
        self.transport.set_queue_size(layout.size());
        self.transport.set_queue_addresses(
            layout.desc_addr(),
            layout.avail_addr(),
            layout.used_addr(),
        );
        let msix_vector = match vector {
            Some(vector) => {
                self.transport.write_queue_msix_vector(vector);
                let read_back = self.transport.read_queue_msix_vector();
                if read_back != vector {
                    return Err(self.fail(InitError::VectorNotAllocated {
                        queue: Some(queue),
                        vector,
                        read_back,
                    }));
                }
                vector
            }
            None => VIRTIO_MSI_NO_VECTOR,
        };
        let notify_off = self.transport.queue_notify_off();
        self.transport.set_queue_enable(true);
        Ok(QueueSetup {
            queue,
            notify_off,
            msix_vector,
        })
    }

    /// Assigns the configuration-change MSI-X vector, checking the read-back.
    pub fn set_config_vector(&mut self, vector: u16) -> Result<(), InitError> {
        self.expect(InitStage::FeaturesOk)?;
        self.transport.write_config_msix_vector(vector);
        let read_back = self.transport.read_config_msix_vector();
        if read_back != vector {
            return Err(self.fail(InitError::VectorNotAllocated {
                queue: None,
                vector,
                read_back,
            }));
        }
        Ok(())
    }

    /// Writes DRIVER_OK: the device is live. Returns the negotiated features.
    pub fn finish(mut self) -> Result<u64, InitError> {
        self.expect(InitStage::FeaturesOk)?;
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.transport.write_status(status | STATUS_DRIVER_OK);
        if self.transport.read_status() & STATUS_DEVICE_NEEDS_RESET != 0 {
            return Err(self.fail(InitError::DeviceNeedsReset));
        }
        self.stage = InitStage::DriverOk;
        Ok(self.features)
    }

    /// Gives up (the driver's own reason): writes FAILED.
    pub fn abort(mut self) {
        self.fail(InitError::WrongStage);
    }

    fn expect(&mut self, stage: InitStage) -> Result<(), InitError> {
        if self.stage == stage {
            Ok(())
        } else {
            Err(InitError::WrongStage)
        }
    }

    fn fail(&mut self, error: InitError) -> InitError {
        let status = self.transport.read_status();
        self.transport.write_status(status | STATUS_FAILED);
        self.stage = InitStage::Failed;
        error
    }
}
