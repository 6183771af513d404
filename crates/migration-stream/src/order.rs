//! The order frames must come in, checked by the decoder (so an out-of-order stream is refused)
//! and by the encoder (so the source cannot write one).
//!
//! A migration stream, after its header:
//!
//! ```text
//!             MemoryPages(round r)*  DirtyRoundEnd(r)      (r = 0, 1, 2, ...; pre-copy rounds;
//!   Precopy ──────────────────────────────────────────┐     the last one is stop-and-copy)
//!      │  ▲───────────────────────────────────────────┘
//!      │ DeviceState | VcpuState   (only while no round is open)
//!      ▼
//!    State ── DeviceState | VcpuState ──▶ State
//!      │ End ──────────────────────────────────────────▶ Done
//!      │ PostcopySwitch        (every vCPU's state was sent)
//!      ▼
//!   Postcopy ── MemoryPages(round r, the next round number) ──▶ Postcopy
//!      │ End ──────────────────────────────────────────▶ Done
//! ```
//!
//! `End` also needs every vCPU's state (exactly once each) and the page count it announces. A
//! page-request stream is `PageRequest* End`. `Cancel` may come anywhere before the end and
//! ends the stream; nothing may follow `End` or `Cancel`.

use crate::error::{Expectation, FrameType, StreamError};
use crate::format::{SourceInfo, StreamKind};

/// One frame as the order sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    MemoryPages { round: u32, pages: u64 },
    DirtyRoundEnd { round: u32 },
    DeviceState,
    VcpuState { index: u32 },
    PostcopySwitch,
    PageRequest,
    End { total_pages: u64 },
    Cancel,
}

impl Step {
    fn frame_type(self) -> FrameType {
        match self {
            Self::MemoryPages { .. } => FrameType::MemoryPages,
            Self::DirtyRoundEnd { .. } => FrameType::DirtyRoundEnd,
            Self::DeviceState => FrameType::DeviceState,
            Self::VcpuState { .. } => FrameType::VcpuState,
            Self::PostcopySwitch => FrameType::PostcopySwitch,
            Self::PageRequest => FrameType::PageRequest,
            Self::End { .. } => FrameType::End,
            Self::Cancel => FrameType::Cancel,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Dirty round `round` is open; `round_has_pages` once a page of it was sent.
    Precopy {
        round: u64,
        round_has_pages: bool,
    },
    /// Device and vCPU state; `next_round` numbers the post-copy pages.
    State {
        next_round: u64,
    },
    Postcopy {
        round: u64,
    },
    PageRequests,
    Ended,
}

/// The receiver's (and sender's) position in the stream.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    phase: Phase,
    /// Which vCPUs' state arrived; as long as the header's vCPU count (bounded by the limits).
    vcpus_seen: Vec<bool>,
    /// Pages (or page requests) so far, for `End`'s count.
    items: u64,
}

impl Order {
    pub(crate) fn new(info: &SourceInfo) -> Self {
        let phase = match info.kind {
            StreamKind::Migration => Phase::Precopy {
                round: 0,
                round_has_pages: false,
            },
            StreamKind::PageRequests => Phase::PageRequests,
        };
        let vcpus = match info.kind {
            StreamKind::Migration => usize::try_from(info.vcpu_count).unwrap_or(0),
            StreamKind::PageRequests => 0,
        };
        Self {
            phase,
            vcpus_seen: vec![false; vcpus],
            items: 0,
        }
    }

    /// Whether the stream ended with `End` or `Cancel`.
    pub(crate) fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    fn expectation(&self) -> Expectation {
        match self.phase {
            Phase::Precopy {
                round,
                round_has_pages: false,
            } => Expectation::PrecopyRound { round },
            Phase::Precopy { round, .. } => Expectation::RoundEnd { round },
            Phase::State { .. } => Expectation::State,
            Phase::Postcopy { .. } => Expectation::Postcopy,
            Phase::PageRequests => Expectation::PageRequests,
            Phase::Ended => Expectation::Nothing,
        }
    }

    /// Checks `step` against the order and, when it is accepted, moves past it. A refused step
    /// leaves the order unchanged.
    pub(crate) fn accept(&mut self, step: Step) -> Result<(), StreamError> {
        let unexpected = StreamError::UnexpectedFrame {
            expected: self.expectation(),
            found: step.frame_type(),
        };
        let next = match (self.phase, step) {
            (_, Step::Cancel) if self.phase != Phase::Ended => Phase::Ended,
            (
                Phase::Precopy { round, .. },
                Step::MemoryPages {
                    round: found,
                    pages,
                },
            ) => {
                check_round(round, found)?;
                self.add_items(pages);
                Phase::Precopy {
                    round,
                    round_has_pages: true,
                }
            }
            (Phase::Precopy { round, .. }, Step::DirtyRoundEnd { round: found }) => {
                check_round(round, found)?;
                Phase::Precopy {
                    round: round.saturating_add(1),
                    round_has_pages: false,
                }
            }
            (
                Phase::Precopy {
                    round,
                    round_has_pages: false,
                },
                Step::DeviceState | Step::VcpuState { .. },
            ) => {
                self.note_state(step)?;
                Phase::State { next_round: round }
            }
            (Phase::State { next_round }, Step::DeviceState | Step::VcpuState { .. }) => {
                self.note_state(step)?;
                Phase::State { next_round }
            }
            (Phase::State { next_round }, Step::PostcopySwitch) => {
                self.check_all_vcpus(FrameType::PostcopySwitch)?;
                Phase::Postcopy { round: next_round }
            }
            (
                Phase::Postcopy { round },
                Step::MemoryPages {
                    round: found,
                    pages,
                },
            ) => {
                check_round(round, found)?;
                self.add_items(pages);
                Phase::Postcopy { round }
            }
            (Phase::State { .. } | Phase::Postcopy { .. }, Step::End { total_pages }) => {
                self.check_all_vcpus(FrameType::End)?;
                self.check_count(total_pages)?;
                Phase::Ended
            }
            (Phase::PageRequests, Step::PageRequest) => {
                self.add_items(1);
                Phase::PageRequests
            }
            (Phase::PageRequests, Step::End { total_pages }) => {
                self.check_count(total_pages)?;
                Phase::Ended
            }
            _ => return Err(unexpected),
        };
        self.phase = next;
        Ok(())
    }

    fn add_items(&mut self, count: u64) {
        self.items = self.items.saturating_add(count);
    }

    fn note_state(&mut self, step: Step) -> Result<(), StreamError> {
        if let Step::VcpuState { index } = step {
            // The index was range-checked against the header before the order sees it.
            let vcpu_count = self.vcpus_seen.len().try_into().unwrap_or(u32::MAX);
            let seen = usize::try_from(index)
                .ok()
                .and_then(|index| self.vcpus_seen.get_mut(index))
                .ok_or(StreamError::VcpuOutOfRange { index, vcpu_count })?;
            if *seen {
                return Err(StreamError::DuplicateVcpuState { index });
            }
            *seen = true;
        }
        Ok(())
    }

    fn check_all_vcpus(&self, found: FrameType) -> Result<(), StreamError> {
        match self.vcpus_seen.iter().position(|seen| !seen) {
            Some(index) => Err(StreamError::VcpuStateMissing {
                index: index.try_into().unwrap_or(u32::MAX),
                found,
            }),
            None => Ok(()),
        }
    }

    fn check_count(&self, announced: u64) -> Result<(), StreamError> {
        if announced == self.items {
            Ok(())
        } else {
            Err(StreamError::PageCountMismatch {
                announced,
                received: self.items,
            })
        }
    }

    /// Pages (or requests) accepted so far.
    pub(crate) fn items(&self) -> u64 {
        self.items
    }
}

fn check_round(expected: u64, found: u32) -> Result<(), StreamError> {
    if u64::from(found) == expected {
        Ok(())
    } else {
        Err(StreamError::WrongRound { expected, found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(vcpus: u32) -> Order {
        Order::new(&SourceInfo {
            kind: StreamKind::Migration,
            page_size: 4096,
            vcpu_count: vcpus,
            memory_bytes: 1 << 20,
        })
    }

    #[test]
    fn precopy_then_state_then_end() {
        let mut order = migration(1);
        for step in [
            Step::MemoryPages { round: 0, pages: 3 },
            Step::DirtyRoundEnd { round: 0 },
            Step::MemoryPages { round: 1, pages: 1 },
            Step::DirtyRoundEnd { round: 1 },
            Step::DeviceState,
            Step::VcpuState { index: 0 },
            Step::End { total_pages: 4 },
        ] {
            order.accept(step).unwrap();
        }
        assert!(order.is_ended());
    }

    #[test]
    fn postcopy_pages_take_the_next_round_number() {
        let mut order = migration(1);
        order.accept(Step::DirtyRoundEnd { round: 0 }).unwrap();
        order.accept(Step::VcpuState { index: 0 }).unwrap();
        order.accept(Step::PostcopySwitch).unwrap();
        assert!(matches!(
            order.accept(Step::MemoryPages { round: 0, pages: 1 }),
            Err(StreamError::WrongRound {
                expected: 1,
                found: 0
            })
        ));
        order
            .accept(Step::MemoryPages { round: 1, pages: 1 })
            .unwrap();
        assert!(matches!(
            order.accept(Step::DirtyRoundEnd { round: 1 }),
            Err(StreamError::UnexpectedFrame {
                expected: Expectation::Postcopy,
                found: FrameType::DirtyRoundEnd
            })
        ));
        order.accept(Step::End { total_pages: 1 }).unwrap();
    }

    #[test]
    fn state_waits_for_the_open_round_to_end() {
        let mut order = migration(1);
        order
            .accept(Step::MemoryPages { round: 0, pages: 1 })
            .unwrap();
        assert!(matches!(
            order.accept(Step::VcpuState { index: 0 }),
            Err(StreamError::UnexpectedFrame {
                expected: Expectation::RoundEnd { round: 0 },
                found: FrameType::VcpuState
            })
        ));
    }

    #[test]
    fn refused_step_leaves_the_order_unchanged() {
        let mut order = migration(2);
        order.accept(Step::VcpuState { index: 1 }).unwrap();
        assert!(order.accept(Step::End { total_pages: 0 }).is_err());
        order.accept(Step::VcpuState { index: 0 }).unwrap();
        order.accept(Step::End { total_pages: 0 }).unwrap();
        assert_eq!(order.items(), 0);
    }
}
