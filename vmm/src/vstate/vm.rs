//! The KVM VM: memory slots, the in-kernel irqchip (PIC + IOAPIC + LAPICs), the PIT, GSI
//! routing, and the VM-wide state a snapshot needs (irqchip, PIT, kvmclock).

use std::sync::Arc;

use kvm_bindings::{
    kvm_clock_data, kvm_irq_routing_entry, kvm_irqchip, kvm_pit_config, kvm_pit_state2,
    kvm_userspace_memory_region, KvmIrqRouting, KVM_CLOCK_HOST_TSC, KVM_CLOCK_REALTIME,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::devices::acpi_pm::IrqLine;
use crate::persist::Persist;
use crate::vstate::memory::GuestMemory;

/// Number of IOAPIC pins KVM's in-kernel IOAPIC has.
const IOAPIC_PINS: u32 = 24;

/// Why a VM could not be created, saved or restored. `operation` names the KVM call.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you in the kvm group?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM {operation} failed: {source}")]
    Kvm {
        operation: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_error(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { operation, source }
}

/// A KVM VM with its irqchip and PIT.
pub struct Vm {
    pub fd: Arc<VmFd>,
    /// How kvmclock moved across a restore (None for a booted VM); the vCPUs move their TSC
    /// to match (see `Vcpu::restore_tsc`).
    pub restored_clock: Option<ClockRestore>,
}

/// kvmclock at the snapshot and just after it was restored, each with the host TSC KVM read
/// at the same instant (when KVM reports it: KVM_CLOCK_HOST_TSC, a TSC-clocksource host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockRestore {
    pub saved_ns: u64,
    pub saved_host_tsc: Option<u64>,
    pub restored_ns: u64,
    pub restored_host_tsc: Option<u64>,
}

impl ClockRestore {
    /// Guest time that passed between the snapshot and the restore (kvmclock never goes
    /// backwards, so never negative).
    pub fn elapsed_ns(&self) -> u64 {
        self.restored_ns.saturating_sub(self.saved_ns)
    }
}

/// The host TSC in a KVM_GET_CLOCK answer, if KVM filled it in.
fn host_tsc(clock: &kvm_clock_data) -> Option<u64> {
    (clock.flags & KVM_CLOCK_HOST_TSC != 0).then_some(clock.host_tsc)
}

/// CLOCK_REALTIME now, in ns since the epoch (0 if the host clock is before 1970).
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// Saved form of the VM-wide KVM state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    /// KVM_GET_CLOCK at save time, whole: kvmclock, and where KVM gives them
    /// (KVM_CLOCK_REALTIME, KVM_CLOCK_HOST_TSC) the host's CLOCK_REALTIME and TSC read at
    /// the same instant.
    pub clock: kvm_clock_data,
    /// CLOCK_REALTIME read by lull-vmm just after KVM_GET_CLOCK, for kernels that do not
    /// report it (before Linux 5.16).
    pub saved_at_realtime_ns: u64,
}

impl Vm {
    /// Creates a VM and gives it `memory`, an in-kernel irqchip, a PIT and PC routing.
    pub fn create(kvm: &Kvm, memory: &GuestMemory) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(kvm_error("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_error("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_error("KVM_SET_IDENTITY_MAP_ADDR"))?;
        let vm = Self {
            fd: Arc::new(fd),
            restored_clock: None,
        };
        vm.register_memory(memory)?;
        vm.create_devices()?;
        Ok(vm)
    }

    /// The guest's RAM, one KVM memory slot per region.
    ///
    /// Must come before [`Vm::create_devices`]. Creating the irqchip registers I/O devices
    /// with KVM, which leaves an SRCU grace period pending, and a memory slot change waits
    /// for it: measured here, registering any slot within ~7 ms after KVM_CREATE_IRQCHIP
    /// took 5-7 ms, against 0.05-0.3 ms before it.
    ///
    /// This is the one step of VM setup whose cost grows with guest size: KVM allocates and
    /// zeroes per-page metadata for every slot (with shadow paging, as under PVM or without
    /// EPT/NPT: reverse maps and write-tracking counters, ~10 bytes per 4 KiB page; 0.6-0.75
    /// ms for 1 GiB here in December 2026; with the TDP MMU the reverse maps are allocated
    /// lazily). It
    /// touches no guest page. Running it on another thread while the rest of a restore goes
    /// on gained nothing measurable on this shared two-core host, and the irqchip and the
    /// vCPUs must wait for it anyway (above), so it stays in line.
    fn register_memory(&self, memory: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in memory.mmap.iter().enumerate() {
            let memory_region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by `memory`,
            // which the caller keeps alive as long as the VM (both live in the same `Machine`).
            unsafe { self.fd.set_user_memory_region(memory_region) }
                .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// In-kernel irqchip (PIC, IOAPIC, LAPICs), PIT, routing.
    fn create_devices(&self) -> Result<(), VmError> {
        self.fd
            .create_irq_chip()
            .map_err(kvm_error("KVM_CREATE_IRQCHIP"))?;
        let pit_config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit_config)
            .map_err(kvm_error("KVM_CREATE_PIT2"))?;
        self.fd
            .set_gsi_routing(&pc_gsi_routing())
            .map_err(kvm_error("KVM_SET_GSI_ROUTING"))?;
        Ok(())
    }

    fn irqchip(&self, chip_id: u32, operation: &'static str) -> Result<kvm_irqchip, VmError> {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd
            .get_irqchip(&mut chip)
            .map_err(kvm_error(operation))?;
        Ok(chip)
    }
}

/// GSI routing of a PC: GSI 0-15 to the PICs (except the cascade, 2) and GSI 0-23 to the
/// IOAPIC, with GSI 0 (the PIT) on IOAPIC pin 2 to match the MADT's interrupt override.
fn pc_gsi_routing() -> KvmIrqRouting {
    let mut entries = Vec::new();
    let mut route = |gsi: u32, irqchip: u32, pin: u32| {
        let mut entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        entry.u.irqchip.irqchip = irqchip;
        entry.u.irqchip.pin = pin;
        entries.push(entry);
    };
    for gsi in 0..16 {
        if gsi == 2 {
            continue;
        }
        if gsi < 8 {
            route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi);
        } else {
            route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8);
        }
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => route(0, KVM_IRQCHIP_IOAPIC, 2),
            2 => {}
            _ => route(gsi, KVM_IRQCHIP_IOAPIC, gsi),
        }
    }
    KvmIrqRouting::from_entries(&entries).expect("39 routes fit KVM's routing table")
}

/// A level-triggered GSI driven with KVM_IRQ_LINE (the ACPI SCI).
pub struct KvmIrqLine {
    pub vm: Arc<VmFd>,
    pub gsi: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, asserted: bool) {
        // Fails only if the irqchip is gone, i.e. the VM is being torn down.
        let _ = self.vm.set_irq_line(self.gsi, asserted);
    }
}

/// Saving irqchip, PIT and kvmclock; restore applies them to a freshly created VM.
impl Persist for Vm {
    type State = VmState;
    type RestoreArgs = Vm;
    type Error = VmError;

    fn save(&self) -> Result<VmState, VmError> {
        let clock = self.fd.get_clock().map_err(kvm_error("KVM_GET_CLOCK"))?;
        let saved_at_realtime_ns = realtime_ns();
        Ok(VmState {
            pic_master: self.irqchip(KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP(PIC master)")?,
            pic_slave: self.irqchip(KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP(PIC slave)")?,
            ioapic: self.irqchip(KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP(IOAPIC)")?,
            pit: self.fd.get_pit2().map_err(kvm_error("KVM_GET_PIT2"))?,
            clock,
            saved_at_realtime_ns,
        })
    }

    /// Restores irqchip and PIT, and kvmclock advanced by the host time that passed since the
    /// snapshot, as KVM documents for migration: the guest sees the interval as elapsed time
    /// (as after a host suspend), never as time going backwards. The guest's TSC cannot stay
    /// frozen on every host (under PVM it is the host's TSC, whatever the VMM writes), and
    /// kvmclock must move with it or the guest's two clocks disagree by the interval.
    fn restore(mut vm: Vm, state: &VmState) -> Result<Vm, VmError> {
        vm.fd
            .set_irqchip(&state.pic_master)
            .map_err(kvm_error("KVM_SET_IRQCHIP(PIC master)"))?;
        vm.fd
            .set_irqchip(&state.pic_slave)
            .map_err(kvm_error("KVM_SET_IRQCHIP(PIC slave)"))?;
        vm.fd
            .set_irqchip(&state.ioapic)
            .map_err(kvm_error("KVM_SET_IRQCHIP(IOAPIC)"))?;
        vm.fd
            .set_pit2(&state.pit)
            .map_err(kvm_error("KVM_SET_PIT2"))?;
        vm.restore_clock(state)?;
        Ok(vm)
    }
}

impl Vm {
    /// KVM_SET_CLOCK from the saved clock, advanced by the realtime elapsed since: by KVM
    /// itself when the saved clock carries KVM_CLOCK_REALTIME (it pairs the realtime read
    /// with its own clock read), otherwise by lull-vmm's own realtime stamp.
    fn restore_clock(&mut self, state: &VmState) -> Result<(), VmError> {
        let saved = state.clock;
        let by_kernel = kvm_clock_data {
            flags: KVM_CLOCK_REALTIME,
            ..saved
        };
        let kernel_advanced =
            saved.flags & KVM_CLOCK_REALTIME != 0 && self.fd.set_clock(&by_kernel).is_ok();
        if !kernel_advanced {
            let elapsed = realtime_ns().saturating_sub(state.saved_at_realtime_ns);
            let by_vmm = kvm_clock_data {
                clock: saved.clock.saturating_add(elapsed),
                flags: 0,
                ..saved
            };
            self.fd
                .set_clock(&by_vmm)
                .map_err(kvm_error("KVM_SET_CLOCK"))?;
        }
        let now = self.fd.get_clock().map_err(kvm_error("KVM_GET_CLOCK"))?;
        self.restored_clock = Some(ClockRestore {
            saved_ns: saved.clock,
            saved_host_tsc: host_tsc(&saved),
            restored_ns: now.clock,
            restored_host_tsc: host_tsc(&now),
        });
        Ok(())
    }

    /// kvmclock now, as KVM_GET_CLOCK reports it.
    pub fn clock(&self) -> Result<kvm_clock_data, VmError> {
        self.fd.get_clock().map_err(kvm_error("KVM_GET_CLOCK"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::RamRegion;

    #[test]
    fn routing_matches_the_madt_overrides() {
        let routing = pc_gsi_routing();
        let entries = routing.as_slice();
        let ioapic_pin = |gsi: u32| {
            entries
                .iter()
                .find(|e| e.gsi == gsi && unsafe_free_irqchip(e) == KVM_IRQCHIP_IOAPIC)
                .map(unsafe_free_pin)
        };
        assert_eq!(ioapic_pin(0), Some(2));
        assert_eq!(ioapic_pin(2), None);
        assert_eq!(ioapic_pin(9), Some(9));
        assert_eq!(ioapic_pin(23), Some(23));
        assert_eq!(entries.len(), 15 + 23);
    }

    fn unsafe_free_irqchip(entry: &kvm_irq_routing_entry) -> u32 {
        // SAFETY: every entry built by pc_gsi_routing is of type IRQCHIP, so `irqchip` is the
        // initialised union member.
        unsafe { entry.u.irqchip.irqchip }
    }

    fn unsafe_free_pin(entry: &kvm_irq_routing_entry) -> u32 {
        // SAFETY: as above.
        unsafe { entry.u.irqchip.pin }
    }

    /// Saves a VM's irqchip/PIT/clock, restores into a second VM, saves again: equal.
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn vm_state_round_trips_through_a_second_vm() {
        let kvm = crate::testing::kvm("vm_state_round_trips_through_a_second_vm");
        let regions = [RamRegion {
            guest_address: 0,
            size: 2 << 20,
        }];
        let first_memory = GuestMemory::anonymous(&regions).unwrap();
        let first = Vm::create(&kvm, &first_memory).unwrap();
        // Make the state non-default: raise the SCI line (IOAPIC pin 9 level).
        first.fd.set_irq_line(9, true).unwrap();
        let state = first.save().unwrap();
        let json = serde_json::to_vec(&state).unwrap();
        let state: VmState = serde_json::from_slice(&json).unwrap();

        let memory = GuestMemory::anonymous(&regions).unwrap();
        let second = Vm::restore(Vm::create(&kvm, &memory).unwrap(), &state).unwrap();
        let again = second.save().unwrap();
        let bytes = |chip: &kvm_irqchip| serde_json::to_vec(chip).unwrap();
        assert_eq!(bytes(&again.ioapic), bytes(&state.ioapic));
        assert_eq!(bytes(&again.pic_master), bytes(&state.pic_master));
        assert_eq!(bytes(&again.pic_slave), bytes(&state.pic_slave));
        assert_eq!(again.pit.channels[0].count, state.pit.channels[0].count);
        assert!(
            again.clock.clock >= state.clock.clock,
            "guest clock never goes backwards"
        );
        assert!(again.clock.clock - state.clock.clock < 5_000_000_000);
    }
}
