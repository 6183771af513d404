//! KVM dirty-page logging for live migration: one bitmap per memory slot, re-armed by hand
//! (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` with `KVM_CLEAR_DIRTY_LOG`).
//!
//! Why the bitmap with manual protection rather than the dirty ring: it can be switched on
//! for a VM that is already running (a slot flag), where the ring must be enabled before the
//! vCPUs exist, costs every VM that never migrates a ring per vCPU, and needs the vCPU loop
//! to handle ring-full exits. Manual protection splits KVM's "get and clear" in two: getting
//! the bitmap no longer write-protects anything, so the source can look at how many pages are
//! dirty (to decide whether the rest fits the downtime budget) without losing them, and then
//! re-arm exactly the pages it is about to send.
//!
//! KVM logs what goes through the guest's MMU (the vCPUs, and KVM's own writes such as
//! kvmclock). The virtio device threads write guest RAM from the VMM (used rings, block reads,
//! network RX buffers), which KVM never sees: those writes set the guest memory's own bitmaps
//! (`vm-memory`'s `AtomicBitmap`, see `vstate::memory::GuestMemoryMmap`). [`DirtyTracker`]
//! unites the two for a migration source.

use std::sync::Arc;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap,
    kvm_userspace_memory_region, KVMIO, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MmapRegion};

use crate::vstate::memory::GuestMemoryMmap;
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::vstate::vm::VmError;

vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

const PAGE_SIZE: u64 = 4096;

/// One KVM memory slot as registered by `Vm::register_memory` (slot = region index).
#[derive(Debug, Clone, Copy)]
struct Slot {
    slot: u32,
    guest_phys_addr: u64,
    size: u64,
    userspace_addr: u64,
}

impl Slot {
    fn pages(&self) -> u64 {
        self.size / PAGE_SIZE
    }
}

/// Dirty logging switched on for every slot of a VM. [`DirtyLog::stop`] switches it off
/// (dropping it without does too, ignoring errors).
pub struct DirtyLog {
    vm: Arc<VmFd>,
    slots: Vec<Slot>,
    active: bool,
}

fn kvm_error(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { operation, source }
}

impl DirtyLog {
    /// Turns on manual protection, then dirty logging on every slot of `memory` (registered
    /// in order, as `Vm::register_memory` does). From here on every guest write (and every
    /// write KVM makes to guest memory) sets the page's bit.
    pub fn start(vm: Arc<VmFd>, memory: &GuestMemoryMmap) -> Result<Self, VmError> {
        let cap = kvm_enable_cap {
            cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            args: [u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE), 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&cap)
            .map_err(kvm_error("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)"))?;
        let slots = memory
            .iter()
            .enumerate()
            .map(|(slot, region)| Slot {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            })
            .collect();
        let mut log = Self {
            vm,
            slots,
            active: false,
        };
        log.set_flags(KVM_MEM_LOG_DIRTY_PAGES)?;
        log.active = true;
        Ok(log)
    }

    fn set_flags(&self, flags: u32) -> Result<(), VmError> {
        for slot in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: slot.slot,
                guest_phys_addr: slot.guest_phys_addr,
                memory_size: slot.size,
                userspace_addr: slot.userspace_addr,
                flags,
            };
            // SAFETY: the same slot, address range and host mapping as registered at VM
            // creation (only the flags change); the mapping is owned by the `Machine` that
            // also owns this VM and outlives it.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION(dirty logging)"))?;
        }
        Ok(())
    }

    /// Pages per slot, in slot order.
    pub fn slot_pages(&self) -> Vec<u64> {
        self.slots.iter().map(Slot::pages).collect()
    }

    /// The pages written since logging started or since they were last cleared, per slot.
    /// Clears nothing (manual protection): the same pages are reported again until
    /// [`DirtyLog::clear`].
    pub fn peek(&self) -> Result<Vec<Vec<u64>>, VmError> {
        self.slots
            .iter()
            .map(|slot| {
                self.vm
                    .get_dirty_log(slot.slot, slot.size as usize)
                    .map_err(kvm_error("KVM_GET_DIRTY_LOG"))
            })
            .collect()
    }

    /// Clears the bits set in `bitmaps` (one per slot, as [`DirtyLog::peek`] returned them)
    /// and write-protects those pages again, so the next write to any of them is logged. Call
    /// it before reading the pages to send.
    pub fn clear(&self, bitmaps: &[Vec<u64>]) -> Result<(), VmError> {
        for (slot, bitmap) in self.slots.iter().zip(bitmaps) {
            if bitmap.iter().all(|word| *word == 0) {
                continue;
            }
            assert!(bitmap.len() as u64 * 64 >= slot.pages(), "bitmap too short");
            let clear = kvm_clear_dirty_log {
                slot: slot.slot,
                num_pages: slot.pages() as u32,
                first_page: 0,
                __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
                    dirty_bitmap: bitmap.as_ptr() as *mut libc::c_void,
                },
            };
            // SAFETY: KVM_CLEAR_DIRTY_LOG on our VM fd reads `clear` and `num_pages` bits of
            // the bitmap it points to, which holds at least that many bits (asserted above)
            // and lives until the call returns. It writes nothing of ours.
            let result = unsafe { ioctl_with_ref(self.vm.as_ref(), KVM_CLEAR_DIRTY_LOG(), &clear) };
            if result != 0 {
                return Err(VmError::Kvm {
                    operation: "KVM_CLEAR_DIRTY_LOG",
                    source: kvm_ioctls::Error::last(),
                });
            }
        }
        Ok(())
    }

    /// Switches dirty logging off again (a cancelled or failed migration).
    pub fn stop(mut self) -> Result<(), VmError> {
        self.active = false;
        self.set_flags(0)
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        if self.active {
            let _ = self.set_flags(0);
        }
    }
}

/// The pages the device threads wrote (the guest memory's bitmaps), collected into sets the
/// source clears as it sends them: one bitmap per region, KVM's layout.
pub struct DeviceDirty {
    memory: GuestMemoryMmap,
    /// Marks taken from the memory's bitmaps and not cleared yet.
    pending: Vec<Vec<u64>>,
}

/// The bitmap a region's device writes set.
fn region_bitmap(region: &MmapRegion<AtomicBitmap>) -> &AtomicBitmap {
    region.bitmap()
}

impl DeviceDirty {
    /// Forgets every mark made so far: from here on, a page a device thread writes is
    /// reported. (A page written before is the caller's to find: a migration's first round
    /// sends every page touched, read after this.)
    pub fn start(memory: &GuestMemoryMmap) -> Self {
        let pending = memory
            .iter()
            .map(|region| {
                let bitmap = region_bitmap(region);
                bitmap.reset();
                vec![0; (region.len() / PAGE_SIZE).div_ceil(64) as usize]
            })
            .collect();
        Self {
            memory: memory.clone(),
            pending,
        }
    }

    /// The pages written since [`DeviceDirty::start`] that were not cleared since. The marks
    /// are taken from the memory's bitmaps atomically (a write marks its pages after it
    /// copied: a mark taken here is for data already in memory, and one made after this is
    /// taken next time).
    pub fn collect(&mut self) -> &[Vec<u64>] {
        for (region, pending) in self.memory.iter().zip(&mut self.pending) {
            let marks = region_bitmap(region).get_and_reset();
            for (word, mark) in pending.iter_mut().zip(marks) {
                *word |= mark;
            }
        }
        &self.pending
    }

    /// Forgets the pages set in `bitmaps` (about to be sent): written again, they are
    /// reported again.
    pub fn clear(&mut self, bitmaps: &[Vec<u64>]) {
        for (pending, cleared) in self.pending.iter_mut().zip(bitmaps) {
            for (word, clear) in pending.iter_mut().zip(cleared) {
                *word &= !clear;
            }
        }
    }
}

/// `a` with every page of `b` added (per region; `b` may be shorter).
pub fn unite(mut a: Vec<Vec<u64>>, b: &[Vec<u64>]) -> Vec<Vec<u64>> {
    for (mine, theirs) in a.iter_mut().zip(b) {
        if mine.len() < theirs.len() {
            mine.resize(theirs.len(), 0);
        }
        for (word, other) in mine.iter_mut().zip(theirs) {
            *word |= other;
        }
    }
    a
}

/// Everything a migration source must send again: KVM's dirty log (the guest's writes)
/// united with the device threads' writes ([`DeviceDirty`]), with the same peek-then-clear
/// protocol as [`DirtyLog`].
pub struct DirtyTracker {
    log: DirtyLog,
    devices: DeviceDirty,
}

impl DirtyTracker {
    /// Starts KVM's log, then forgets the devices' earlier marks: call it before reading which
    /// pages were touched, so a page written in between is in one of the two.
    pub fn start(vm: Arc<VmFd>, memory: &GuestMemoryMmap) -> Result<Self, VmError> {
        let log = DirtyLog::start(vm, memory)?;
        Ok(Self {
            log,
            devices: DeviceDirty::start(memory),
        })
    }

    pub fn slot_pages(&self) -> Vec<u64> {
        self.log.slot_pages()
    }

    /// The pages dirtied (by the guest or a device) and not cleared since, per slot.
    pub fn peek(&mut self) -> Result<Vec<Vec<u64>>, VmError> {
        let kvm = self.log.peek()?;
        Ok(unite(kvm, self.devices.collect()))
    }

    /// Re-arms the pages of `bitmaps` (as [`DirtyTracker::peek`] gave them) before they are
    /// read and sent.
    pub fn clear(&mut self, bitmaps: &[Vec<u64>]) -> Result<(), VmError> {
        self.devices.clear(bitmaps);
        self.log.clear(bitmaps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::RamRegion;
    use crate::vstate::memory::GuestMemory;
    use crate::vstate::vm::Vm;
    use vm_memory::{Bytes, GuestAddress};

    /// A write by the VMM through the host mapping is not a guest write: KVM only logs what
    /// goes through its MMU. So drive a real vCPU that writes two pages.
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn guest_writes_are_logged_and_clear_rearms_them() {
        use kvm_ioctls::VcpuExit;
        let kvm = crate::testing::kvm("guest_writes_are_logged_and_clear_rearms_them");
        let regions = [RamRegion {
            guest_address: 0,
            size: 4 << 20,
        }];
        let memory = GuestMemory::anonymous(&regions).unwrap();
        // Flat 32-bit code at 0x1000 (the boot GDT, as the hypercall probe):
        // movb $1, 0x5000; movb $1, 0x9000; out %al, $0x80; movb $2, 0x9000; out %al, $0x80
        // (a port write exits to us; HLT would wait in KVM's in-kernel LAPIC).
        let code: &[u8] = &[
            0xc6, 0x05, 0x00, 0x50, 0x00, 0x00, 0x01, // movb $1, 0x5000
            0xc6, 0x05, 0x00, 0x90, 0x00, 0x00, 0x01, // movb $1, 0x9000
            0xe6, 0x80, // out %al, $0x80
            0xc6, 0x05, 0x00, 0x90, 0x00, 0x00, 0x02, // movb $2, 0x9000
            0xe6, 0x80, // out %al, $0x80
        ];
        crate::arch::regs::write_boot_gdt(&memory.mmap).unwrap();
        memory.mmap.write_slice(code, GuestAddress(0x1000)).unwrap();
        let vm = Vm::create(&kvm, &memory).unwrap();
        let mut vcpu = vm.fd.create_vcpu(0).unwrap();
        let sregs = vcpu.get_sregs().unwrap();
        vcpu.set_sregs(&crate::arch::regs::boot_sregs(sregs))
            .unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).unwrap();

        let log = DirtyLog::start(vm.fd.clone(), &memory.mmap).unwrap();
        assert_eq!(log.slot_pages(), vec![1024]);
        let mut run_to_port = || {
            let outcome = crate::vstate::vcpu::run_with_deadline(
                &mut vcpu,
                std::time::Duration::from_secs(30),
                |exit| match exit {
                    Ok(VcpuExit::IoOut(0x80, _)) => Some(()),
                    other => panic!("unexpected exit {other:?}"),
                },
            );
            assert_eq!(outcome, crate::vstate::vcpu::DeadlineRun::Done(()));
        };
        let bit = |bitmaps: &Vec<Vec<u64>>, page: usize| bitmaps[0][page / 64] >> (page % 64) & 1;
        run_to_port();
        let first = log.peek().unwrap();
        assert_eq!(
            (bit(&first, 5), bit(&first, 9)),
            (1, 1),
            "both written pages"
        );
        assert_eq!(bit(&first, 7), 0, "an untouched page");
        // Peeking does not clear (manual protection).
        assert_eq!(log.peek().unwrap(), first);
        log.clear(&first).unwrap();
        let cleared = log.peek().unwrap();
        assert_eq!((bit(&cleared, 5), bit(&cleared, 9)), (0, 0));
        run_to_port();
        let second = log.peek().unwrap();
        assert_eq!(
            (bit(&second, 5), bit(&second, 9)),
            (0, 1),
            "only the page written after the clear"
        );
        log.stop().unwrap();
    }

    fn memory(pages: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), pages * PAGE_SIZE as usize),
            (GuestAddress(1 << 32), 64 * PAGE_SIZE as usize),
        ])
        .unwrap()
    }

    fn pages_of(bitmaps: &[Vec<u64>]) -> Vec<(usize, u64)> {
        let mut pages = Vec::new();
        for (region, bitmap) in bitmaps.iter().enumerate() {
            for (index, word) in bitmap.iter().enumerate() {
                for bit in 0..64 {
                    if word >> bit & 1 == 1 {
                        pages.push((region, index as u64 * 64 + bit));
                    }
                }
            }
        }
        pages
    }

    #[test]
    fn device_writes_are_reported_until_cleared_and_again_when_rewritten() {
        let memory = memory(200);
        memory.write_slice(&[1; 8], GuestAddress(0x3000)).unwrap();
        let mut devices = DeviceDirty::start(&memory);
        assert!(
            pages_of(devices.collect()).is_empty(),
            "earlier marks forgotten"
        );
        // A write across a page boundary, a used-ring style store, a write in region 1.
        memory
            .write_slice(&[2; 16], GuestAddress(5 * PAGE_SIZE - 8))
            .unwrap();
        memory
            .write_obj(7u16, GuestAddress(130 * PAGE_SIZE + 2))
            .unwrap();
        memory
            .write_slice(&[3; 4], GuestAddress((1 << 32) + 3 * PAGE_SIZE))
            .unwrap();
        let seen = devices.collect().to_vec();
        assert_eq!(pages_of(&seen), vec![(0, 4), (0, 5), (0, 130), (1, 3)]);
        // Reads mark nothing; not clearing keeps the pages reported.
        let mut buffer = [0u8; 64];
        memory
            .read_slice(&mut buffer, GuestAddress(0x9000))
            .unwrap();
        assert_eq!(devices.collect().to_vec(), seen, "kept until cleared");
        // Clear what is sent; a write after that is reported again, the rest not.
        let mut sent = seen.clone();
        sent[0][0] &= !(1 << 5); // page 5 not sent this round
        devices.clear(&sent);
        memory.write_obj(9u8, GuestAddress(4 * PAGE_SIZE)).unwrap();
        assert_eq!(pages_of(devices.collect()), vec![(0, 4), (0, 5)]);
    }

    #[test]
    fn the_union_has_the_pages_of_kvm_and_of_the_devices() {
        let kvm = vec![vec![0b1001, 0], vec![0b10]];
        let devices = vec![vec![0b0110, 1 << 63], vec![0b10]];
        let both = unite(kvm, &devices);
        assert_eq!(
            pages_of(&both),
            vec![(0, 0), (0, 1), (0, 2), (0, 3), (0, 127), (1, 1)]
        );
        // A shorter KVM bitmap (it covers its slot only) still takes every device page.
        assert_eq!(unite(vec![vec![]], &[vec![4]]), vec![vec![4]]);
        // A page in neither stays out.
        assert_eq!(unite(vec![vec![0]], &[vec![0]]), vec![vec![0]]);
    }
}
