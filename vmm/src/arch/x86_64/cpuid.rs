//! CPUID for each vCPU: what KVM supports (KVM_GET_SUPPORTED_CPUID), with the topology and
//! APIC IDs filled in per vCPU and the TSC-deadline timer advertised when KVM emulates it.

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

/// Adapts the host-supported CPUID for vCPU `index` of `vcpu_count` (one package, one core
/// per vCPU, APIC ID = index).
pub fn vcpu_cpuid(supported: &CpuId, index: u8, vcpu_count: u8, tsc_deadline: bool) -> CpuId {
    let mut cpuid = supported.clone();
    ensure_brand_string(&mut cpuid);
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
        let cpuid = vcpu_cpuid(&supported, 3, 4, true);
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
        let cpuid = vcpu_cpuid(&supported, 0, 1, false);
        assert_eq!(find(&cpuid, 0x8000_0000, 0).eax, 0x8000_0004);
        let first = find(&cpuid, 0x8000_0002, 0);
        assert_eq!(&first.eax.to_le_bytes(), b"Lull");
        let mut host_brand = entry(0x8000_0002, 0);
        host_brand.eax = u32::from_le_bytes(*b"Host");
        let kept = vcpu_cpuid(&CpuId::from_entries(&[host_brand]).unwrap(), 0, 1, false);
        assert_eq!(&find(&kept, 0x8000_0002, 0).eax.to_le_bytes(), b"Host");
    }

    #[test]
    fn single_vcpu_has_no_htt_and_zero_shift() {
        let mut leaf1 = entry(1, 0);
        leaf1.edx = HTT_BIT;
        let supported = CpuId::from_entries(&[leaf1, entry(0xb, 1)]).unwrap();
        let cpuid = vcpu_cpuid(&supported, 0, 1, false);
        assert_eq!(find(&cpuid, 1, 0).edx & HTT_BIT, 0);
        assert_eq!(find(&cpuid, 1, 0).ecx & TSC_DEADLINE_BIT, 0);
        assert_eq!(find(&cpuid, 0xb, 1).eax, 0);
    }
}
