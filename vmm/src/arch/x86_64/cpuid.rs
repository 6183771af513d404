//! CPUID for each vCPU: what KVM supports (KVM_GET_SUPPORTED_CPUID), with the topology and
//! APIC IDs filled in per vCPU, the TSC-deadline timer advertised when KVM emulates it, and the
//! KVM paravirt leaves (0x4000_0000 signature, 0x4000_0001 features) filtered by an explicit
//! policy ([`PV_FEATURES`], [`kvm_pv_leaves`]).

use kvm_bindings::CpuId;

/// CPUID.1:ECX bit 24: TSC-deadline mode of the LAPIC timer.
const TSC_DEADLINE_BIT: u32 = 1 << 24;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const HYPERVISOR_BIT: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: more than one logical processor per package (HTT).
const HTT_BIT: u32 = 1 << 28;

/// Brand string reported when the host's is missing (some nested hypervisors report none).
const FALLBACK_BRAND: &[u8; 48] =
    b"Lull VMM virtual CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// Fills leaves 0x8000_0002..=0x8000_0004 with [`FALLBACK_BRAND`] when they are absent or zero.
fn ensure_brand_string(cpuid: &mut CpuId) {
    let brand_leaves = 0x8000_0002..=0x8000_0004u32;
    let present_and_set = cpuid.as_slice().iter().any(|entry| {
        brand_leaves.contains(&entry.function)
            && (entry.eax | entry.ebx | entry.ecx | entry.edx) != 0
    });
    if present_and_set {
        return;
    }
    let words: Vec<u32> = FALLBACK_BRAND
        .chunks(4)
        .map(|chunk| u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    for (leaf_index, function) in brand_leaves.enumerate() {
        let [eax, ebx, ecx, edx] = [0, 1, 2, 3].map(|register| words[leaf_index * 4 + register]);
        let existing = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|entry| entry.function == function);
        match existing {
            Some(entry) => (entry.eax, entry.ebx, entry.ecx, entry.edx) = (eax, ebx, ecx, edx),
            None => {
                let entry = kvm_bindings::kvm_cpuid_entry2 {
                    function,
                    eax,
                    ebx,
                    ecx,
                    edx,
                    ..Default::default()
                };
                // A full table keeps the host's (empty) brand; nothing breaks without one.
                let _ = cpuid.push(entry);
            }
        }
    }
    for entry in cpuid.as_mut_slice() {
        if entry.function == 0x8000_0000 && entry.eax < 0x8000_0004 {
            entry.eax = 0x8000_0004;
        }
    }
}

/// CPUID leaf with the hypervisor signature and the highest hypervisor leaf (EAX).
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf with the KVM paravirt features (EAX) and hints (EDX).
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Why a KVM paravirt feature bit is or is not shown to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvRule {
    /// Shown when the host supports it: KVM implements it in the kernel, and lull-vmm saves
    /// and restores whatever state it has (its MSRs are in every snapshot).
    PassThrough,
    /// Shown when the host supports it and guest hypercalls (VMCALL/VMMCALL) return on this
    /// host: the guest's side of the feature is a hypercall.
    NeedsHypercalls,
    /// Never shown, whatever the host says (the reason is in [`PvFeature::why`]).
    Hidden,
}

/// One bit of CPUID 0x4000_0001 EAX (Linux's `KVM_FEATURE_*`, `asm/kvm_para.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvFeature {
    pub bit: u32,
    pub name: &'static str,
    pub rule: PvRule,
    pub why: &'static str,
}

const fn feature(bit: u32, name: &'static str, rule: PvRule, why: &'static str) -> PvFeature {
    PvFeature {
        bit,
        name,
        rule,
        why,
    }
}

/// The policy for every KVM paravirt feature bit lull-vmm knows. Bits not listed (future
/// features) are cleared until someone decides about them here.
pub const PV_FEATURES: &[PvFeature] = &[
    feature(
        0,
        "CLOCKSOURCE",
        PvRule::PassThrough,
        "kvmclock, MSRs 0x11/0x12",
    ),
    feature(1, "NOP_IO_DELAY", PvRule::PassThrough, "no state"),
    feature(2, "MMU_OP", PvRule::Hidden, "removed from KVM (Linux 3.1)"),
    feature(
        3,
        "CLOCKSOURCE2",
        PvRule::PassThrough,
        "kvmclock, MSRs 0x4b564d00/01",
    ),
    feature(4, "ASYNC_PF", PvRule::PassThrough, "MSR 0x4b564d02"),
    feature(5, "STEAL_TIME", PvRule::PassThrough, "MSR 0x4b564d03"),
    feature(6, "PV_EOI", PvRule::PassThrough, "MSR 0x4b564d04"),
    feature(7, "PV_UNHALT", PvRule::NeedsHypercalls, "KVM_HC_KICK_CPU"),
    feature(
        9,
        "PV_TLB_FLUSH",
        PvRule::PassThrough,
        "steal-time preempted flag, no hypercall",
    ),
    feature(
        10,
        "ASYNC_PF_VMEXIT",
        PvRule::PassThrough,
        "a flag of MSR 0x4b564d02",
    ),
    feature(
        11,
        "PV_SEND_IPI",
        PvRule::NeedsHypercalls,
        "KVM_HC_SEND_IPI",
    ),
    feature(12, "POLL_CONTROL", PvRule::PassThrough, "MSR 0x4b564d05"),
    feature(
        13,
        "PV_SCHED_YIELD",
        PvRule::NeedsHypercalls,
        "KVM_HC_SCHED_YIELD",
    ),
    feature(
        14,
        "ASYNC_PF_INT",
        PvRule::PassThrough,
        "MSRs 0x4b564d06/07",
    ),
    feature(
        15,
        "MSI_EXT_DEST_ID",
        PvRule::Hidden,
        "lull-vmm has no MSI devices and does not enable KVM_CAP_X2APIC_API",
    ),
    feature(
        16,
        "HC_MAP_GPA_RANGE",
        PvRule::Hidden,
        "a hypercall KVM forwards to the VMM (KVM_EXIT_HYPERCALL), which lull-vmm does not serve",
    ),
    feature(
        17,
        "MIGRATION_CONTROL",
        PvRule::Hidden,
        "for encrypted (SEV) guests, which lull-vmm does not run",
    ),
    feature(
        24,
        "CLOCKSOURCE_STABLE_BIT",
        PvRule::PassThrough,
        "kvmclock flag",
    ),
];

/// The features of `eax` (a 0x4000_0001 EAX value) that need hypercalls.
pub fn hypercall_features(eax: u32) -> u32 {
    PV_FEATURES
        .iter()
        .filter(|f| f.rule == PvRule::NeedsHypercalls && eax & (1 << f.bit) != 0)
        .fold(0, |mask, f| mask | (1 << f.bit))
}

/// Names of the features set in `eax` (unknown bits as `bitN`), low bit first.
pub fn pv_feature_names(eax: u32) -> Vec<String> {
    (0..32)
        .filter(|bit| eax & (1 << bit) != 0)
        .map(|bit| {
            PV_FEATURES
                .iter()
                .find(|f| f.bit == bit)
                .map_or_else(|| format!("bit{bit}"), |f| f.name.to_string())
        })
        .collect()
}

/// The 0x4000_0001 EAX lull-vmm shows: the host's bits (`host_eax`, from
/// KVM_GET_SUPPORTED_CPUID) that [`PV_FEATURES`] passes through, without those needing
/// hypercalls unless `hypercalls_return`.
pub fn kvm_pv_features(host_eax: u32, hypercalls_return: bool) -> u32 {
    PV_FEATURES
        .iter()
        .filter(|f| match f.rule {
            PvRule::PassThrough => true,
            PvRule::NeedsHypercalls => hypercalls_return,
            PvRule::Hidden => false,
        })
        .fold(0, |mask, f| mask | (host_eax & (1 << f.bit)))
}

/// Applies the paravirt policy to a CPUID table in place: where the host reports KVM's
/// signature, 0x4000_0000 says KVM with 0x4000_0001 as the highest leaf, and 0x4000_0001 has
/// EAX = [`kvm_pv_features`], no hints in EDX (KVM_HINTS_REALTIME promises dedicated host
/// CPUs, which lull-vmm does not arrange) and EBX/ECX 0 (reserved). Where the host reports no
/// KVM signature, every 0x4000_00xx leaf is removed: their meaning is unknown.
pub fn kvm_pv_leaves(cpuid: &mut CpuId, hypercalls_return: bool) {
    let is_kvm = cpuid.as_slice().iter().any(|entry| {
        entry.function == KVM_CPUID_SIGNATURE && [entry.ebx, entry.ecx, entry.edx] == KVM_SIGNATURE
    });
    let has_features = cpuid
        .as_slice()
        .iter()
        .any(|entry| entry.function == KVM_CPUID_FEATURES);
    if !is_kvm {
        let kept: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|entry| entry.function & 0xffff_ff00 != KVM_CPUID_SIGNATURE)
            .copied()
            .collect();
        *cpuid = CpuId::from_entries(&kept).expect("fewer entries than before");
        return;
    }
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            KVM_CPUID_SIGNATURE => {
                entry.eax = if has_features {
                    KVM_CPUID_FEATURES
                } else {
                    KVM_CPUID_SIGNATURE
                }
            }
            KVM_CPUID_FEATURES => {
                entry.eax = kvm_pv_features(entry.eax, hypercalls_return);
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }
}

/// The 0x4000_0001 EAX of a CPUID table, if it has KVM's leaves.
pub fn pv_features_of(cpuid: &[kvm_bindings::kvm_cpuid_entry2]) -> Option<u32> {
    let is_kvm = cpuid.iter().any(|entry| {
        entry.function == KVM_CPUID_SIGNATURE && [entry.ebx, entry.ecx, entry.edx] == KVM_SIGNATURE
    });
    cpuid
        .iter()
        .find(|entry| is_kvm && entry.function == KVM_CPUID_FEATURES)
        .map(|entry| entry.eax)
}

/// Adapts the host-supported CPUID for vCPU `index` of `vcpu_count` (one package, one core
/// per vCPU, APIC ID = index), with the paravirt leaves of [`kvm_pv_leaves`].
pub fn vcpu_cpuid(
    supported: &CpuId,
    index: u8,
    vcpu_count: u8,
    tsc_deadline: bool,
    hypercalls_return: bool,
) -> CpuId {
    let mut cpuid = supported.clone();
    ensure_brand_string(&mut cpuid);
    kvm_pv_leaves(&mut cpuid, hypercalls_return);
    let apic_id = u32::from(index);
    let count = u32::from(vcpu_count.max(1));
    // Bits needed to number the cores in the package (x2APIC topology shift).
    let core_shift = 32 - (count - 1).leading_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count.min(255) << 16);
                entry.ecx |= HYPERVISOR_BIT;
                if tsc_deadline {
                    entry.ecx |= TSC_DEADLINE_BIT;
                }
                if count > 1 {
                    entry.edx |= HTT_BIT;
                } else {
                    entry.edx &= !HTT_BIT;
                }
            }
            0x4 => {
                // Cache leaves: EAX[31:26] = cores per package - 1; EAX[25:14] = sharing - 1.
                entry.eax &= 0x3fff;
                entry.eax |= (count - 1) << 26;
                let cache_level = (entry.eax >> 5) & 0x7;
                if cache_level >= 3 {
                    entry.eax |= (count - 1) << 14;
                }
            }
            0xb | 0x1f => {
                entry.edx = apic_id;
                match entry.index {
                    // SMT level: one thread per core.
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    // Core level: all vCPUs in one package.
                    1 => {
                        entry.eax = core_shift;
                        entry.ebx = count;
                        entry.ecx = (2 << 8) | 1;
                    }
                    level => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = level;
                    }
                }
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_id_and_topology_are_per_vcpu() {
        let supported = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        let cpuid = vcpu_cpuid(&supported, 3, 4, true, true);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & TSC_DEADLINE_BIT, 0);
        assert_ne!(leaf1.ecx & HYPERVISOR_BIT, 0);
        let core_level = find(&cpuid, 0xb, 1);
        assert_eq!((core_level.eax, core_level.ebx, core_level.edx), (2, 4, 3));
    }

    #[test]
    fn missing_brand_string_is_filled_in() {
        let mut extended = entry(0x8000_0000, 0);
        extended.eax = 0x8000_0001;
        let supported = CpuId::from_entries(&[entry(1, 0), extended]).unwrap();
        let cpuid = vcpu_cpuid(&supported, 0, 1, false, true);
        assert_eq!(find(&cpuid, 0x8000_0000, 0).eax, 0x8000_0004);
        let first = find(&cpuid, 0x8000_0002, 0);
        assert_eq!(&first.eax.to_le_bytes(), b"Lull");
        let mut host_brand = entry(0x8000_0002, 0);
        host_brand.eax = u32::from_le_bytes(*b"Host");
        let kept = vcpu_cpuid(
            &CpuId::from_entries(&[host_brand]).unwrap(),
            0,
            1,
            false,
            true,
        );
        assert_eq!(&find(&kept, 0x8000_0002, 0).eax.to_le_bytes(), b"Host");
    }

    #[test]
    fn single_vcpu_has_no_htt_and_zero_shift() {
        let mut leaf1 = entry(1, 0);
        leaf1.edx = HTT_BIT;
        let supported = CpuId::from_entries(&[leaf1, entry(0xb, 1)]).unwrap();
        let cpuid = vcpu_cpuid(&supported, 0, 1, false, true);
        assert_eq!(find(&cpuid, 1, 0).edx & HTT_BIT, 0);
        assert_eq!(find(&cpuid, 1, 0).ecx & TSC_DEADLINE_BIT, 0);
        assert_eq!(find(&cpuid, 0xb, 1).eax, 0);
    }

    /// This host's KVM (measured): CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, ASYNC_PF,
    /// STEAL_TIME, PV_EOI, PV_UNHALT, PV_TLB_FLUSH, ASYNC_PF_VMEXIT, PV_SEND_IPI,
    /// POLL_CONTROL, PV_SCHED_YIELD, ASYNC_PF_INT, CLOCKSOURCE_STABLE_BIT.
    const MEASURED_HOST_EAX: u32 = 0x0100_7efb;

    fn kvm_leaves(features_eax: u32, features_edx: u32) -> CpuId {
        let mut signature = entry(KVM_CPUID_SIGNATURE, 0);
        [signature.ebx, signature.ecx, signature.edx] = KVM_SIGNATURE;
        signature.eax = 0x4000_0001;
        let mut features = entry(KVM_CPUID_FEATURES, 0);
        features.eax = features_eax;
        features.edx = features_edx;
        CpuId::from_entries(&[entry(1, 0), signature, features]).unwrap()
    }

    #[test]
    fn kvm_signature_constant_spells_kvmkvmkvm() {
        let bytes: Vec<u8> = KVM_SIGNATURE.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&bytes, b"KVMKVMKVM\0\0\0");
    }

    #[test]
    fn measured_host_features_pass_through_when_hypercalls_return() {
        assert_eq!(kvm_pv_features(MEASURED_HOST_EAX, true), MEASURED_HOST_EAX);
    }

    #[test]
    fn hypercall_features_are_cleared_when_hypercalls_do_not_return() {
        let shown = kvm_pv_features(MEASURED_HOST_EAX, false);
        let cleared = MEASURED_HOST_EAX & !shown;
        assert_eq!(cleared, (1 << 7) | (1 << 11) | (1 << 13));
        assert_eq!(
            pv_feature_names(cleared),
            ["PV_UNHALT", "PV_SEND_IPI", "PV_SCHED_YIELD"]
        );
        assert_eq!(hypercall_features(MEASURED_HOST_EAX), cleared);
        assert_eq!(shown, 0x0100_567b);
    }

    #[test]
    fn hidden_and_unknown_bits_are_never_shown() {
        let everything = u32::MAX;
        let shown = kvm_pv_features(everything, true);
        for hidden in [2, 8, 15, 16, 17, 18, 23, 25, 31] {
            assert_eq!(shown & (1 << hidden), 0, "bit {hidden}");
        }
        assert_eq!(shown & (1 << 24), 1 << 24);
        // Nothing is invented: an empty host shows nothing.
        assert_eq!(kvm_pv_features(0, true), 0);
    }

    #[test]
    fn every_policy_bit_is_listed_once() {
        for (i, f) in PV_FEATURES.iter().enumerate() {
            assert!(f.bit < 32);
            assert!(
                PV_FEATURES[i + 1..].iter().all(|g| g.bit != f.bit),
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn pv_leaves_are_rewritten_per_policy_in_the_vcpu_cpuid() {
        let supported = kvm_leaves(MEASURED_HOST_EAX | (1 << 16), 1);
        let cpuid = vcpu_cpuid(&supported, 0, 1, false, false);
        let features = find(&cpuid, KVM_CPUID_FEATURES, 0);
        assert_eq!(features.eax, 0x0100_567b);
        assert_eq!(features.edx, 0, "no KVM_HINTS_REALTIME");
        assert_eq!(find(&cpuid, KVM_CPUID_SIGNATURE, 0).eax, KVM_CPUID_FEATURES);
        assert_eq!(pv_features_of(cpuid.as_slice()), Some(0x0100_567b));
        let with_hypercalls = vcpu_cpuid(&supported, 0, 1, false, true);
        assert_eq!(
            pv_features_of(with_hypercalls.as_slice()),
            Some(MEASURED_HOST_EAX)
        );
    }

    #[test]
    fn leaves_without_the_kvm_signature_are_dropped() {
        let mut supported = kvm_leaves(MEASURED_HOST_EAX, 0);
        for e in supported.as_mut_slice() {
            if e.function == KVM_CPUID_SIGNATURE {
                e.ebx = u32::from_le_bytes(*b"Micr");
            }
        }
        let cpuid = vcpu_cpuid(&supported, 0, 1, false, true);
        assert!(cpuid
            .as_slice()
            .iter()
            .all(|e| e.function & 0xffff_ff00 != KVM_CPUID_SIGNATURE));
        assert_eq!(pv_features_of(cpuid.as_slice()), None);
        assert!(cpuid.as_slice().iter().any(|e| e.function == 1));
    }
}
