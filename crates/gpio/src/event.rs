//! Line events: what a chip reports from its interrupt, and the per-line queue a consumer reads.
//!
//! The queue follows Linux's GPIO character device (uAPI v2): events carry a timestamp taken by
//! the chip driver when the interrupt arrived (this crate has no clock), a sequence number per
//! chip and one per line, and a full queue drops its *oldest* event so a slow reader sees the
//! most recent edges and can tell from the sequence numbers that it lost some.
//!
//! Kinds are *logical*: on an active-low line a falling edge on the wire is reported as a rising
//! edge, as Linux does for a request with `GPIO_V2_LINE_FLAG_ACTIVE_LOW`.

use alloc::collections::VecDeque;
use core::task::Waker;

/// What happened on a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Inactive to active.
    RisingEdge,
    /// Active to inactive.
    FallingEdge,
    /// The line is (still) at its active level: a level interrupt. Another one is reported only
    /// after the consumer acknowledges this one ([`GpioDesc::ack_level`](crate::GpioDesc::ack_level)).
    LevelActive,
}

/// What a chip saw on the wire, reported through [`EventSink::report`](crate::EventSink::report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RawEvent {
    /// Low to high.
    Rising,
    /// High to low.
    Falling,
    /// A level interrupt fired (the line is at the level its trigger asked for).
    Level,
}

/// One event as a consumer reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LineEvent {
    /// The line's offset on its chip.
    pub offset: u32,
    /// What happened, in logical terms.
    pub kind: EventKind,
    /// When, in nanoseconds of the clock the chip driver used (the kernel uses monotonic time).
    pub timestamp_ns: u64,
    /// Position among all events of the chip, from 1.
    pub seqno: u64,
    /// Position among this line's events, from 1.
    pub line_seqno: u64,
}

/// Events queued per line before the oldest is dropped (Linux's default for one line).
pub const DEFAULT_EVENT_QUEUE_LEN: usize = 16;

/// The queue of one line requested for events.
#[derive(Debug)]
pub(crate) struct EventQueue {
    pub(crate) events: VecDeque<LineEvent>,
    pub(crate) capacity: usize,
    pub(crate) dropped: u64,
    pub(crate) line_seqno: u64,
    pub(crate) waker: Option<Waker>,
    /// A level event was delivered and the interrupt stays masked until it is acknowledged.
    pub(crate) level_masked: bool,
}

impl EventQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
            line_seqno: 0,
            waker: None,
            level_masked: false,
        }
    }

    /// Queues `event`, dropping the oldest if full; returns the waker to wake (outside locks).
    pub(crate) fn push(&mut self, mut event: LineEvent) -> Option<Waker> {
        self.line_seqno += 1;
        event.line_seqno = self.line_seqno;
        if self.events.len() >= self.capacity {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event);
        self.waker.take()
    }
}
