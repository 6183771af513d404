//! Whether guest hypercalls come back on this host, and what lull-vmm does about it.
//!
//! Some KVM hosts never complete a hypercall: on this project's build machines (`kvm_pvm`,
//! where guests run in KVM's instruction emulator) a guest VMCALL spins forever inside the
//! host kernel, at 100% of a core, until a signal ends KVM_RUN. A guest that believes the KVM
//! paravirt features needing hypercalls (PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD) are there
//! would hang a vCPU on its first IPI or spin-lock kick.
//!
//! So at start-up lull-vmm asks ([`decide`]): it runs a throwaway one-vCPU VM whose guest
//! makes one hypercall with an unknown number (a working KVM answers -KVM_ENOSYS, -1000) and
//! then writes the answer to an I/O port. If the port write does not arrive within
//! [`PROBE_TIMEOUT`], the vCPU thread is kicked out of KVM_RUN by a signal and the answer is
//! "hypercalls do not return". The verdict is cached in `/run/lull-vmm/hypercall-probe`
//! (keyed by host kernel release and KVM API version; `/run` is emptied at each host boot), so
//! only the first VM after a host boot pays for the probe. `--pv-hypercalls on|off` skips it.
//!
//! When hypercalls do not return, the CPUID policy hides the features that need them
//! (`arch::cpuid::kvm_pv_features`) and the VM gets the FIX_HYPERCALL_INSN quirk disabled
//! ([`disable_fix_hypercall_insn_quirk`]): KVM then raises #UD in the guest for a VMCALL it
//! would otherwise have "fixed up" and retried forever, so a stray hypercall costs the guest
//! an exception instead of costing the host a core.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_DISABLE_QUIRKS2,
    KVM_X86_QUIRK_FIX_HYPERCALL_INSN,
};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::KVM_TSS_ADDRESS;
use crate::arch::regs;
use crate::vstate::vcpu::{run_with_deadline, DeadlineRun};

/// How long the probe guest may take, from the first KVM_RUN, to come back from its
/// hypercall. A working KVM answers in microseconds even in its instruction emulator.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(20);
/// KVM's "no such hypercall" (`-KVM_ENOSYS`), what a working KVM answers the probe.
pub const KVM_ENOSYS: i64 = 1000;
/// The hypercall number the probe makes: none KVM knows (they are 1-12), so harmless.
const PROBE_HYPERCALL: u32 = 0x4c75_6c6c;
/// The port the probe guest writes the hypercall's answer to.
const PROBE_PORT: u16 = 0x80;
/// Where the probe's code goes in its guest RAM.
const PROBE_CODE_ADDRESS: u64 = 0x1000;
/// The probe VM's RAM (boot GDT at 0x500, code at 0x1000).
const PROBE_RAM_BYTES: usize = 0x10000;
/// Environment variable naming the directory of the verdict cache (default `/run/lull-vmm`).
pub const RUN_DIR_ENV: &str = "LULL_VMM_RUN_DIR";
const DEFAULT_RUN_DIR: &str = "/run/lull-vmm";
const CACHE_FILE_NAME: &str = "hypercall-probe";
const CACHE_MAGIC: &str = "lull-vmm hypercall probe 1";

/// `--pv-hypercalls`: probe (auto), or take the answer from the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PvHypercalls {
    /// Probe (or use the cached verdict).
    #[default]
    Auto,
    /// Assume hypercalls return: show every supported feature, keep KVM's quirk.
    On,
    /// Assume they do not: hide the hypercall features, make VMCALL raise #UD.
    Off,
}

impl FromStr for PvHypercalls {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("'{other}' (expected auto, on or off)")),
        }
    }
}

impl fmt::Display for PvHypercalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// What the probe guest's hypercall did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It came back (with this RAX, truncated to 32 bits: the probe runs in 32-bit mode).
    Returns { rax: u32 },
    /// KVM_RUN had to be interrupted: it never came back.
    Hangs,
    /// The vCPU stopped some other way (a #UD turned triple fault, an emulation failure).
    Fails,
}

impl Verdict {
    pub fn hypercalls_return(self) -> bool {
        matches!(self, Verdict::Returns { .. })
    }

    fn cache_word(self) -> String {
        match self {
            Verdict::Returns { rax } => format!("returns {rax:#x}"),
            Verdict::Hangs => "hangs".into(),
            Verdict::Fails => "fails".into(),
        }
    }

    fn from_cache_word(word: &str) -> Option<Self> {
        match word.split_whitespace().collect::<Vec<_>>()[..] {
            ["hangs"] => Some(Verdict::Hangs),
            ["fails"] => Some(Verdict::Fails),
            ["returns", rax] => u32::from_str_radix(rax.strip_prefix("0x")?, 16)
                .ok()
                .map(|rax| Verdict::Returns { rax }),
            _ => None,
        }
    }
}

/// Where the decision came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A probe ran in this process and took this long (VM set-up included).
    Probed(Duration),
    /// Read from the cache file.
    Cached(PathBuf),
    /// `--pv-hypercalls on|off`.
    Forced(PvHypercalls),
    /// The probe could not run (the reason); hypercalls are treated as not returning.
    Unknown(String),
}

/// The start-up decision: do hypercalls return, and how lull-vmm knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypercallPolicy {
    pub hypercalls_return: bool,
    pub verdict: Option<Verdict>,
    pub source: Source,
    /// Problems met on the way (unreadable cache, cache not writable); one line each.
    pub warnings: Vec<String>,
}

/// Decides for `mode`: forced, cached, or probed now (then cached). Never fails: a probe
/// that cannot run yields "do not return" (the safe side: a few PV features hidden).
pub fn decide(mode: PvHypercalls) -> HypercallPolicy {
    decide_with(mode, &cache_path(), probe)
}

/// The decision when it needs no probe: forced by `mode`, or a valid cached verdict; `None`
/// when [`decide`] has a probe to run (or a cache problem to report). Cheap (a few small
/// reads), so a restore takes it in line instead of paying for a thread.
pub fn decide_without_probe(mode: PvHypercalls) -> Option<HypercallPolicy> {
    decide_without_probe_with(mode, &cache_path())
}

fn decide_without_probe_with(mode: PvHypercalls, cache: &Path) -> Option<HypercallPolicy> {
    let forced = |hypercalls_return| HypercallPolicy {
        hypercalls_return,
        verdict: None,
        source: Source::Forced(mode),
        warnings: Vec::new(),
    };
    match mode {
        PvHypercalls::On => Some(forced(true)),
        PvHypercalls::Off => Some(forced(false)),
        PvHypercalls::Auto => match read_cache(cache, &CacheKey::of_host()) {
            Ok(Some(verdict)) => Some(HypercallPolicy {
                hypercalls_return: verdict.hypercalls_return(),
                verdict: Some(verdict),
                source: Source::Cached(cache.to_path_buf()),
                warnings: Vec::new(),
            }),
            Ok(None) | Err(_) => None,
        },
    }
}

/// [`decide`] with the cache file and the probe given (for tests).
pub fn decide_with(
    mode: PvHypercalls,
    cache: &Path,
    probe: impl FnOnce() -> Result<(Verdict, Duration), String>,
) -> HypercallPolicy {
    if let Some(policy) = decide_without_probe_with(mode, cache) {
        return policy;
    }
    let mut warnings = Vec::new();
    let key = CacheKey::of_host();
    if let Err(problem) = read_cache(cache, &key) {
        warnings.push(format!(
            "ignoring the hypercall probe cache {}: {problem}",
            cache.display()
        ));
    }
    match probe() {
        Ok((verdict, took)) => {
            if let Err(error) = write_cache(cache, &key, verdict, took) {
                warnings.push(format!(
                    "cannot cache the hypercall probe in {}: {error}",
                    cache.display()
                ));
            }
            HypercallPolicy {
                hypercalls_return: verdict.hypercalls_return(),
                verdict: Some(verdict),
                source: Source::Probed(took),
                warnings,
            }
        }
        Err(reason) => HypercallPolicy {
            hypercalls_return: false,
            verdict: None,
            source: Source::Unknown(reason),
            warnings,
        },
    }
}

/// The cache file: `$LULL_VMM_RUN_DIR/hypercall-probe`, by default under `/run/lull-vmm`.
pub fn cache_path() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
        .join(CACHE_FILE_NAME)
}

/// What a cached verdict is valid for: the host kernel (and so its KVM) and the KVM API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub kernel_release: String,
    pub kvm_api_version: i32,
}

impl CacheKey {
    fn of_host() -> Self {
        Self {
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|release| release.trim().to_string())
                .unwrap_or_default(),
            kvm_api_version: Kvm::new().map_or(-1, |kvm| kvm.get_api_version()),
        }
    }
}

/// The cache file's text for `verdict`.
pub fn cache_text(key: &CacheKey, verdict: Verdict, took: Duration) -> String {
    format!(
        "{CACHE_MAGIC}\nkernel {}\nkvm-api {}\nverdict {}\nprobe-us {}\n",
        key.kernel_release,
        key.kvm_api_version,
        verdict.cache_word(),
        took.as_micros()
    )
}

/// The verdict in cache text `text` if it is for `key`; `Ok(None)` if it is for another
/// host kernel or KVM; `Err` if it is not a cache file lull-vmm wrote.
pub fn parse_cache(text: &str, key: &CacheKey) -> Result<Option<Verdict>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(CACHE_MAGIC) {
        return Err(format!("does not start with '{CACHE_MAGIC}'"));
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|line| line.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| format!("no '{name}' line where expected"))
    };
    let kernel = field("kernel")?;
    let api = field("kvm-api")?;
    let verdict = field("verdict")?;
    let verdict =
        Verdict::from_cache_word(verdict).ok_or_else(|| format!("unknown verdict '{verdict}'"))?;
    field("probe-us")?
        .parse::<u64>()
        .map_err(|_| "probe-us is not a number".to_string())?;
    let api: i32 = api
        .parse()
        .map_err(|_| format!("kvm-api '{api}' is not a number"))?;
    if kernel != key.kernel_release || api != key.kvm_api_version {
        return Ok(None);
    }
    Ok(Some(verdict))
}

fn read_cache(path: &Path, key: &CacheKey) -> Result<Option<Verdict>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
            parse_cache(&text, key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// Writes the cache atomically (temporary file, rename), creating its directory.
fn write_cache(
    path: &Path,
    key: &CacheKey,
    verdict: Verdict,
    took: Duration,
) -> std::io::Result<()> {
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory)?;
    }
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, cache_text(key, verdict, took))?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Runs the probe (see the module documentation): returns the verdict and how long the whole
/// probe took. A timed-out run counts as a hang only if the vCPU thread was actually busy
/// (a hypercall that spins uses a whole core); one starved of CPU by a busy host is run again
/// with a longer deadline, and `Err` if it never got enough CPU to tell.
pub fn probe() -> Result<(Verdict, Duration), String> {
    let begin = Instant::now();
    let kvm = Kvm::new().map_err(|error| format!("cannot open /dev/kvm: {error}"))?;
    let mut timeout = PROBE_TIMEOUT;
    for _ in 0..3 {
        match probe_once(&kvm, timeout, false)? {
            DeadlineRun::Done(verdict) => return Ok((verdict, begin.elapsed())),
            DeadlineRun::TimedOut { cpu_time } if cpu_time >= timeout / 2 => {
                return Ok((Verdict::Hangs, begin.elapsed()))
            }
            DeadlineRun::TimedOut { .. } => timeout *= 5,
        }
    }
    Err(format!(
        "the probe vCPU got too little CPU to tell within {} ms",
        timeout.as_millis() / 5
    ))
}

/// The probe guest (32-bit protected mode, paging off): one hypercall with an unknown number,
/// then the answer (EAX) out to [`PROBE_PORT`], then halt.
pub fn probe_code(amd: bool) -> Vec<u8> {
    let mut code = vec![0xb8]; // mov $PROBE_HYPERCALL, %eax
    code.extend_from_slice(&PROBE_HYPERCALL.to_le_bytes());
    code.extend_from_slice(&[0x31, 0xdb, 0x31, 0xc9, 0x31, 0xd2, 0x31, 0xf6]); // args 0
                                                                               // The host's own instruction (VMMCALL on AMD, VMCALL on Intel), as Linux guests use.
    code.extend_from_slice(if amd {
        &[0x0f, 0x01, 0xd9]
    } else {
        &[0x0f, 0x01, 0xc1]
    });
    code.extend_from_slice(&[0x66, 0xba]); // mov $PROBE_PORT, %dx
    code.extend_from_slice(&PROBE_PORT.to_le_bytes());
    code.extend_from_slice(&[0xef, 0xf4, 0xeb, 0xfd]); // out %eax, %dx; 1: hlt; jmp 1b
    code
}

/// Whether the host CPU is AMD's (or Hygon's): its hypercall instruction is VMMCALL.
fn host_is_amd() -> bool {
    let vendor = std::arch::x86_64::__cpuid(0);
    let ebx = vendor.ebx.to_le_bytes();
    &ebx == b"Auth" || &ebx == b"Hygo"
}

fn probe_once(
    kvm: &Kvm,
    timeout: Duration,
    quirk_disabled: bool,
) -> Result<DeadlineRun<Verdict>, String> {
    let failed = |what: &str| {
        let what = what.to_string();
        move |error: kvm_ioctls::Error| format!("probe VM: {what} failed: {error}")
    };
    let vm = kvm.create_vm().map_err(failed("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(failed("KVM_SET_TSS_ADDR"))?;
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), PROBE_RAM_BYTES)])
        .map_err(|error| format!("probe VM: cannot map its RAM: {error}"))?;
    regs::write_boot_gdt(&memory).map_err(|error| format!("probe VM: {error}"))?;
    memory
        .write_slice(&probe_code(host_is_amd()), GuestAddress(PROBE_CODE_ADDRESS))
        .map_err(|error| format!("probe VM: {error}"))?;
    let region = memory.iter().next().expect("one region");
    let slot = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping of `memory_size` bytes owned by `memory`, which
    // outlives the VM (dropped at the end of this function, after `vm` and `vcpu`, declared
    // later).
    unsafe { vm.set_user_memory_region(slot) }.map_err(failed("KVM_SET_USER_MEMORY_REGION"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(failed("KVM_CREATE_VCPU"))?;
    let sregs = vcpu.get_sregs().map_err(failed("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&regs::boot_sregs(sregs))
        .map_err(failed("KVM_SET_SREGS"))?;
    let registers = kvm_bindings::kvm_regs {
        rip: PROBE_CODE_ADDRESS,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&registers).map_err(failed("KVM_SET_REGS"))?;
    if quirk_disabled {
        disable_fix_hypercall_insn_quirk(&vm).map_err(|error| error.to_string())?;
    }
    Ok(run_with_deadline(&mut vcpu, timeout, |exit| match exit {
        Ok(VcpuExit::IoOut(PROBE_PORT, data)) => {
            let mut rax = [0u8; 4];
            rax[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            Some(Verdict::Returns {
                rax: u32::from_le_bytes(rax),
            })
        }
        Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..))
        | Ok(VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) => None,
        _ => Some(Verdict::Fails),
    }))
}

/// Why the FIX_HYPERCALL_INSN quirk could not be disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuirkError {
    /// This KVM cannot disable it (KVM_CAP_DISABLE_QUIRKS2 lacks the bit, before Linux 5.19).
    Unsupported,
    /// KVM_ENABLE_CAP failed.
    Failed(String),
}

impl fmt::Display for QuirkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuirkError::Unsupported => {
                f.write_str("this KVM cannot disable the FIX_HYPERCALL_INSN quirk")
            }
            QuirkError::Failed(error) => write!(
                f,
                "KVM_ENABLE_CAP(KVM_CAP_DISABLE_QUIRKS2, FIX_HYPERCALL_INSN) failed: {error}"
            ),
        }
    }
}

/// Disables KVM's FIX_HYPERCALL_INSN quirk on `vm`: a VMCALL/VMMCALL KVM would have rewritten
/// into the host's hypercall instruction and retried (forever, on hosts whose hypercalls do
/// not return) raises #UD in the guest instead. Any time before the vCPUs run (KVM reads the
/// quirk when it emulates the instruction).
pub fn disable_fix_hypercall_insn_quirk(vm: &VmFd) -> Result<(), QuirkError> {
    let supported = vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_DISABLE_QUIRKS2));
    if supported <= 0 || supported as u32 & KVM_X86_QUIRK_FIX_HYPERCALL_INSN == 0 {
        return Err(QuirkError::Unsupported);
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_DISABLE_QUIRKS2,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_X86_QUIRK_FIX_HYPERCALL_INSN);
    vm.enable_cap(&cap)
        .map_err(|error| QuirkError::Failed(error.to_string()))
}

/// The one line lull-vmm logs about hypercalls: what was found (and how), which features the
/// guest does not see because of it (`hidden`, names), and what a VMCALL does (`quirk`: the
/// result of disabling the quirk, `None` when hypercalls return and it was left alone).
/// `shown_anyway`: features needing hypercalls that the guest sees although they do not
/// return (a restored guest keeps the CPUID of its snapshot).
pub fn summary(
    policy: &HypercallPolicy,
    hidden: &[String],
    shown_anyway: &[String],
    quirk: Option<&Result<(), QuirkError>>,
) -> String {
    let how = match &policy.source {
        Source::Probed(took) => format!("probe {:.1} ms", took.as_secs_f64() * 1e3),
        Source::Cached(path) => format!("cached in {}", path.display()),
        Source::Forced(mode) => format!("--pv-hypercalls {mode}"),
        Source::Unknown(reason) => format!("probe failed: {reason}"),
    };
    let found = match (&policy.source, policy.verdict) {
        (Source::Forced(_), _) if policy.hypercalls_return => {
            "hypercalls treated as returning".to_string()
        }
        (Source::Forced(_), _) => "hypercalls treated as not returning".to_string(),
        (_, Some(Verdict::Returns { rax })) => format!(
            "hypercalls return on this host (answered {})",
            i64::from(rax as i32)
        ),
        (_, Some(Verdict::Fails)) => "hypercalls fault on this host".to_string(),
        _ => "hypercalls do not return on this host".to_string(),
    };
    let mut line = format!("kvm: {found} ({how})");
    if !hidden.is_empty() {
        line += &format!("; {} hidden", hidden.join(", "));
    }
    if !shown_anyway.is_empty() {
        line += &format!(
            "; the restored guest's CPUID still shows {} (from its snapshot)",
            shown_anyway.join(", ")
        );
    }
    match quirk {
        None => {}
        Some(Ok(())) => line += "; VMCALL raises #UD",
        Some(Err(error)) => line += &format!("; {error}: a guest VMCALL will hang its vCPU"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey {
            kernel_release: "6.18.44-test".into(),
            kvm_api_version: 12,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lull-vmm-hypercall-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn modes_parse_and_unknown_values_are_refused() {
        assert_eq!("auto".parse(), Ok(PvHypercalls::Auto));
        assert_eq!("on".parse(), Ok(PvHypercalls::On));
        assert_eq!("off".parse(), Ok(PvHypercalls::Off));
        let error = "yes".parse::<PvHypercalls>().unwrap_err();
        assert!(error.contains("auto, on or off"), "{error}");
    }

    #[test]
    fn cache_text_round_trips_for_every_verdict() {
        for verdict in [
            Verdict::Hangs,
            Verdict::Fails,
            Verdict::Returns { rax: 0xffff_fc18 },
        ] {
            let text = cache_text(&key(), verdict, Duration::from_micros(21_000));
            assert_eq!(parse_cache(&text, &key()), Ok(Some(verdict)), "{text}");
        }
    }

    #[test]
    fn cache_for_another_kernel_or_api_is_not_used() {
        let text = cache_text(&key(), Verdict::Hangs, Duration::ZERO);
        let other_kernel = CacheKey {
            kernel_release: "6.1.0".into(),
            ..key()
        };
        let other_api = CacheKey {
            kvm_api_version: 13,
            ..key()
        };
        assert_eq!(parse_cache(&text, &other_kernel), Ok(None));
        assert_eq!(parse_cache(&text, &other_api), Ok(None));
    }

    #[test]
    fn corrupt_cache_text_is_an_error() {
        let good = cache_text(&key(), Verdict::Hangs, Duration::ZERO);
        for bad in [
            String::new(),
            "garbage".into(),
            good.replace("verdict hangs", "verdict maybe"),
            good.replace("kvm-api 12", "kvm-api twelve"),
            good.replace("probe-us 0", "probe-us"),
            good.lines().take(3).collect::<Vec<_>>().join("\n"),
        ] {
            assert!(parse_cache(&bad, &key()).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn forced_modes_do_not_probe() {
        let path = scratch("forced").join("cache");
        for (mode, returns) in [(PvHypercalls::On, true), (PvHypercalls::Off, false)] {
            let policy = decide_with(mode, &path, || panic!("probed"));
            assert_eq!(policy.hypercalls_return, returns);
            assert_eq!(policy.source, Source::Forced(mode));
        }
        assert!(!path.exists());
    }

    #[test]
    fn probe_verdict_is_cached_and_then_reused() {
        let dir = scratch("cache");
        let path = dir.join("sub").join("hypercall-probe");
        let first = decide_with(PvHypercalls::Auto, &path, || {
            Ok((Verdict::Hangs, Duration::from_millis(21)))
        });
        assert!(!first.hypercalls_return);
        assert_eq!(first.source, Source::Probed(Duration::from_millis(21)));
        assert!(first.warnings.is_empty(), "{:?}", first.warnings);
        let second = decide_with(PvHypercalls::Auto, &path, || panic!("probed again"));
        assert_eq!(second.source, Source::Cached(path.clone()));
        assert_eq!(second.verdict, Some(Verdict::Hangs));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_cache_is_ignored_with_a_warning_and_replaced() {
        let dir = scratch("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hypercall-probe");
        std::fs::write(&path, b"\xff\xfe not a cache").unwrap();
        let policy = decide_with(PvHypercalls::Auto, &path, || {
            Ok((
                Verdict::Returns { rax: 0xffff_fc18 },
                Duration::from_millis(1),
            ))
        });
        assert!(policy.hypercalls_return);
        assert_eq!(policy.warnings.len(), 1);
        assert!(
            policy.warnings[0].contains("ignoring"),
            "{:?}",
            policy.warnings
        );
        let again = decide_with(PvHypercalls::Auto, &path, || panic!("probed again"));
        assert_eq!(again.verdict, Some(Verdict::Returns { rax: 0xffff_fc18 }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_probe_means_not_returning_and_is_not_cached() {
        let dir = scratch("failed");
        let path = dir.join("hypercall-probe");
        let policy = decide_with(PvHypercalls::Auto, &path, || Err("no CPU".into()));
        assert!(!policy.hypercalls_return);
        assert!(matches!(policy.source, Source::Unknown(_)));
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_cache_is_a_warning() {
        let policy = decide_with(
            PvHypercalls::Auto,
            Path::new("/proc/lull-vmm-nowhere/hypercall-probe"),
            || Ok((Verdict::Hangs, Duration::ZERO)),
        );
        assert!(!policy.hypercalls_return);
        assert!(policy.warnings.iter().any(|w| w.contains("cannot cache")));
    }

    #[test]
    fn probe_code_ends_in_out_and_halt_after_the_right_instruction() {
        let intel = probe_code(false);
        let amd = probe_code(true);
        assert!(intel.windows(3).any(|w| w == [0x0f, 0x01, 0xc1]));
        assert!(amd.windows(3).any(|w| w == [0x0f, 0x01, 0xd9]));
        assert!(intel.ends_with(&[0xef, 0xf4, 0xeb, 0xfd]));
    }

    #[test]
    fn summary_names_the_finding_the_hidden_features_and_the_quirk() {
        let policy = HypercallPolicy {
            hypercalls_return: false,
            verdict: Some(Verdict::Hangs),
            source: Source::Probed(Duration::from_micros(21_300)),
            warnings: Vec::new(),
        };
        let hidden = ["PV_UNHALT", "PV_SEND_IPI", "PV_SCHED_YIELD"].map(String::from);
        assert_eq!(
            summary(&policy, &hidden, &[], Some(&Ok(()))),
            "kvm: hypercalls do not return on this host (probe 21.3 ms); \
             PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD hidden; VMCALL raises #UD"
        );
        let working = HypercallPolicy {
            hypercalls_return: true,
            verdict: Some(Verdict::Returns { rax: 0xffff_fc18 }),
            source: Source::Cached(PathBuf::from("/run/lull-vmm/hypercall-probe")),
            warnings: Vec::new(),
        };
        assert_eq!(
            summary(&working, &[], &[], None),
            "kvm: hypercalls return on this host (answered -1000) \
             (cached in /run/lull-vmm/hypercall-probe)"
        );
    }

    /// The probe on this machine's /dev/kvm: a verdict within a bounded time (a hang is cut
    /// off by the watchdog; it must not take the test down with it).
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn probe_reaches_a_verdict_quickly() {
        crate::testing::require_kvm("probe_reaches_a_verdict_quickly");
        let begin = Instant::now();
        let (verdict, took) = match probe() {
            Ok(result) => result,
            // A busy host (the CI runs QEMU tests beside this one) can starve the probe vCPU:
            // the probe then says it cannot tell, which is its right answer, and nothing was
            // checked.
            Err(why) if why.contains("too little CPU") => {
                crate::testing::skip("probe_reaches_a_verdict_quickly", &why);
                return;
            }
            Err(why) => panic!("probe ran: {why:?}"),
        };
        eprintln!("probe: {verdict:?} in {took:?}");
        assert!(took <= begin.elapsed());
        assert!(
            begin.elapsed() < Duration::from_secs(5),
            "{:?}",
            begin.elapsed()
        );
        if let Verdict::Returns { rax } = verdict {
            assert_eq!(i64::from(rax as i32), -KVM_ENOSYS);
        }
    }

    /// With FIX_HYPERCALL_INSN disabled the probe's hypercall never hangs: it returns (a host
    /// whose hypercalls work) or faults (#UD; no IDT, so a triple fault), well within the
    /// deadline.
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn without_the_quirk_the_hypercall_does_not_hang() {
        let kvm = crate::testing::kvm("without_the_quirk_the_hypercall_does_not_hang");
        let begin = Instant::now();
        let outcome = probe_once(&kvm, Duration::from_secs(2), true).expect("probe ran");
        eprintln!("without the quirk: {outcome:?} in {:?}", begin.elapsed());
        assert!(matches!(outcome, DeadlineRun::Done(_)), "{outcome:?}");
        assert!(begin.elapsed() < Duration::from_secs(2));
    }
}
