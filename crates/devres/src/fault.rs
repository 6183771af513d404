//! Fault injection at managed acquisitions, and a sweep that fails each one in turn.
//!
//! A probe's error paths are where drivers leak: the third of five acquisitions fails, and the
//! two before it must be released. With devres the release is automatic, but only if every
//! acquisition really went through the list. [`sweep_probe_faults`] proves it for one probe by
//! running it once per acquisition point, failing that point, and checking that nothing is left
//! behind.

use alloc::vec::Vec;
use core::fmt;
use core::num::NonZeroUsize;

use crate::leak::LeakTracker;
use crate::list::DevresList;
use crate::resource::ResourceKind;

/// Fails the Nth managed acquisition of a probe.
///
/// Acquisitions are counted by [`should_fail`](Self::should_fail), which the kernel's `devm_*`
/// wrappers call once before each acquisition, and only while a probe runs
/// ([`DevresList::probe`] brackets it). The count restarts with each probe; the injector stays
/// armed until [`disarm`](Self::disarm)ed.
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    fail_at: Option<NonZeroUsize>,
    probing: bool,
    acquisitions: usize,
    fired: bool,
}

impl FaultInjector {
    /// A disarmed injector: nothing fails.
    pub const fn new() -> Self {
        Self {
            fail_at: None,
            probing: false,
            acquisitions: 0,
            fired: false,
        }
    }

    /// Fails acquisition number `n` (counting from 1) of each later probe.
    pub fn fail_at(&mut self, n: NonZeroUsize) {
        self.fail_at = Some(n);
    }

    /// Stops failing acquisitions.
    pub fn disarm(&mut self) {
        self.fail_at = None;
    }

    /// Which acquisition fails, if armed.
    pub fn armed_at(&self) -> Option<NonZeroUsize> {
        self.fail_at
    }

    /// Starts counting for a new probe.
    pub fn begin_probe(&mut self) {
        self.probing = true;
        self.acquisitions = 0;
        self.fired = false;
    }

    /// Stops counting; the counts of the probe stay readable.
    pub fn end_probe(&mut self) {
        self.probing = false;
    }

    /// Counts an acquisition and says whether it must fail. Always `false` outside a probe.
    pub fn should_fail(&mut self) -> bool {
        if !self.probing {
            return false;
        }
        self.acquisitions += 1;
        let fail = self.fail_at.map(NonZeroUsize::get) == Some(self.acquisitions);
        self.fired |= fail;
        fail
    }

    /// Managed acquisitions counted in the current or last probe.
    pub fn acquisitions(&self) -> usize {
        self.acquisitions
    }

    /// Whether the current or last probe had an acquisition failed on purpose.
    pub fn fired(&self) -> bool {
        self.fired
    }
}

/// What a successful [`sweep_probe_faults`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepReport {
    /// Managed acquisitions the probe makes when nothing fails; each was failed once.
    pub acquisition_points: usize,
    /// Points whose injected failure the probe absorbed and still succeeded (an optional
    /// resource, or an error the driver ignored: worth a look).
    pub absorbed: Vec<usize>,
}

/// How a probe failed [`sweep_probe_faults`]. `fail_at` is the failed acquisition point, `None`
/// for the final run in which nothing was failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SweepError {
    /// The list held resources before the sweep began.
    NotEmptyAtStart,
    /// Resources were still in the list after a failed probe or after unbind.
    LeftInList {
        /// The failed acquisition point.
        fail_at: Option<usize>,
        /// How many resources were left.
        remaining: usize,
    },
    /// The leak tracker saw resources acquired and never released.
    Leaked {
        /// The failed acquisition point.
        fail_at: Option<usize>,
        /// Live resources per kind.
        live: Vec<(ResourceKind, usize)>,
    },
    /// The probe failed in the run where no acquisition was failed on purpose: the sweep cannot
    /// tell its own failures from injected ones.
    FailedWithoutInjection,
    /// The probe made more acquisitions than [`MAX_SWEEP_POINTS`] (a loop that acquires forever).
    TooManyPoints,
}

impl fmt::Display for SweepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let point = |f: &mut fmt::Formatter<'_>, at: &Option<usize>| match at {
            Some(n) => write!(f, "with acquisition {n} failed"),
            None => f.write_str("with no acquisition failed"),
        };
        match self {
            Self::NotEmptyAtStart => f.write_str("the device list held resources before the sweep"),
            Self::LeftInList { fail_at, remaining } => {
                write!(f, "{remaining} resources left in the device list ")?;
                point(f, fail_at)
            }
            Self::Leaked { fail_at, live } => {
                write!(f, "resources leaked ")?;
                point(f, fail_at)?;
                for (kind, count) in live {
                    write!(f, "; {count} {kind}")?;
                }
                Ok(())
            }
            Self::FailedWithoutInjection => {
                f.write_str("the probe failed although no acquisition was failed")
            }
            Self::TooManyPoints => write!(
                f,
                "the probe made more than {MAX_SWEEP_POINTS} managed acquisitions"
            ),
        }
    }
}

impl core::error::Error for SweepError {}

/// The most acquisition points [`sweep_probe_faults`] tries before giving up.
pub const MAX_SWEEP_POINTS: usize = 10_000;

/// Runs `probe` through [`DevresList::probe`] once for each managed acquisition point: with
/// acquisition 1 failed, then 2, and so on, until a run completes without reaching the failed
/// point. After every failed probe, and after unbinding every successful one
/// ([`DevresList::release_all`]), the list must be empty and `tracker` (if given: the resources
/// the probe acquires report to it) must count nothing live.
///
/// `list` must start empty, and its fault injector is left disarmed.
pub fn sweep_probe_faults<E>(
    list: &mut DevresList,
    tracker: Option<&LeakTracker>,
    mut probe: impl FnMut(&mut DevresList) -> Result<(), E>,
) -> Result<SweepReport, SweepError> {
    if !list.is_empty() {
        return Err(SweepError::NotEmptyAtStart);
    }
    let mut absorbed = Vec::new();
    let outcome = (1..=MAX_SWEEP_POINTS).find_map(|n| {
        let Some(point) = NonZeroUsize::new(n) else {
            return Some(Err(SweepError::TooManyPoints));
        };
        list.fault_injector_mut().fail_at(point);
        let result = list.probe(&mut probe);
        let fired = list.fault_injector().fired();
        let fail_at = fired.then_some(n);
        match (result, fired) {
            (Err(_), false) => return Some(Err(SweepError::FailedWithoutInjection)),
            (Err(_), true) => {}
            (Ok(()), _) => {
                if fired {
                    absorbed.push(n);
                }
                list.release_all();
            }
        }
        if let Err(error) = check_clean(list, tracker, fail_at) {
            return Some(Err(error));
        }
        (!fired).then(|| Ok(n - 1))
    });
    list.fault_injector_mut().disarm();
    match outcome {
        Some(Ok(acquisition_points)) => Ok(SweepReport {
            acquisition_points,
            absorbed,
        }),
        Some(Err(error)) => Err(error),
        None => Err(SweepError::TooManyPoints),
    }
}

fn check_clean(
    list: &DevresList,
    tracker: Option<&LeakTracker>,
    fail_at: Option<usize>,
) -> Result<(), SweepError> {
    if !list.is_empty() {
        return Err(SweepError::LeftInList {
            fail_at,
            remaining: list.len(),
        });
    }
    if let Some(tracker) = tracker {
        let live = tracker.live_by_kind();
        if !live.is_empty() {
            return Err(SweepError::Leaked { fail_at, live });
        }
    }
    Ok(())
}
