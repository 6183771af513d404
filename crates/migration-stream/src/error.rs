//! Why a migration stream was refused: one typed error for the decoder (bad input from the
//! peer) and the encoder (a caller asking for a stream the decoder would refuse).

use crate::format::StreamKind;

/// The frame types, with their one-byte tags on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    MemoryPages,
    DirtyRoundEnd,
    DeviceState,
    VcpuState,
    PostcopySwitch,
    PageRequest,
    End,
    Cancel,
}

impl FrameType {
    /// Every frame type, in tag order.
    pub const ALL: [FrameType; 8] = [
        Self::MemoryPages,
        Self::DirtyRoundEnd,
        Self::DeviceState,
        Self::VcpuState,
        Self::PostcopySwitch,
        Self::PageRequest,
        Self::End,
        Self::Cancel,
    ];

    /// The tag byte that starts a frame of this type.
    pub fn tag(self) -> u8 {
        match self {
            Self::MemoryPages => 1,
            Self::DirtyRoundEnd => 2,
            Self::DeviceState => 3,
            Self::VcpuState => 4,
            Self::PostcopySwitch => 5,
            Self::PageRequest => 6,
            Self::End => 7,
            Self::Cancel => 8,
        }
    }

    /// The type a tag byte names, if any.
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|frame_type| frame_type.tag() == tag)
    }
}

impl core::fmt::Display for FrameType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::MemoryPages => "MemoryPages",
            Self::DirtyRoundEnd => "DirtyRoundEnd",
            Self::DeviceState => "DeviceState",
            Self::VcpuState => "VcpuState",
            Self::PostcopySwitch => "PostcopySwitch",
            Self::PageRequest => "PageRequest",
            Self::End => "End",
            Self::Cancel => "Cancel",
        })
    }
}

/// What the receiver's state machine accepts at the point an unexpected frame arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// Pre-copy: pages or the `DirtyRoundEnd` of the open round, or the first device/vCPU state.
    PrecopyRound { round: u64 },
    /// Pages of the open round were sent; its `DirtyRoundEnd` must come before any state.
    RoundEnd { round: u64 },
    /// Device and vCPU state, then `PostcopySwitch` or `End`.
    State,
    /// Post-copy: the remaining pages, then `End`.
    Postcopy,
    /// A page-request stream: `PageRequest`s, then `End`.
    PageRequests,
    /// The stream has ended (`End` or `Cancel`); nothing may follow.
    Nothing,
}

impl core::fmt::Display for Expectation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PrecopyRound { round } => write!(
                f,
                "MemoryPages or DirtyRoundEnd of round {round}, DeviceState, VcpuState or Cancel"
            ),
            Self::RoundEnd { round } => write!(
                f,
                "MemoryPages or DirtyRoundEnd of round {round} (a round is closed before device \
                 state), or Cancel"
            ),
            Self::State => f.write_str("DeviceState, VcpuState, PostcopySwitch, End or Cancel"),
            Self::Postcopy => f.write_str("post-copy MemoryPages, End or Cancel"),
            Self::PageRequests => f.write_str("PageRequest, End or Cancel"),
            Self::Nothing => f.write_str("nothing: the stream has already ended"),
        }
    }
}

/// Why a migration stream was refused. Decoding errors say what the peer sent; the decoder
/// stops at the first one (later pushes return [`StreamError::AfterError`]).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("not a lull-vmm migration stream (the first bytes are not \"LULLMIGR\"): check that the destination is connected to a lull-vmm migration source")]
    BadMagic,
    #[error("migration stream format version {found} is not supported (this lull-vmm reads version {supported}); migrate between lull-vmm builds with the same stream version")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("migration stream format version {found} is from an older lull-vmm (this one reads version {supported}, which adds the virtio devices' state); upgrade the source's lull-vmm to the destination's")]
    OlderVersion { found: u32, supported: u32 },
    #[error("migration stream header is corrupted: CRC-32 is {computed:#010x}, header says {stored:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("expected a {expected} stream, the header says kind {found}: the migration and page-request connections are crossed")]
    WrongStreamKind { expected: StreamKind, found: u32 },
    #[error("source announces a guest page size of {page_size} bytes; a stream needs a power of two from 4 KiB to 2 MiB")]
    BadPageSize { page_size: u32 },
    #[error("source announces {memory_bytes} bytes of guest memory, not a non-zero multiple of its {page_size}-byte pages")]
    BadMemorySize { memory_bytes: u64, page_size: u32 },
    #[error("source announces {vcpu_count} vCPUs; a stream carries 1 to {max}")]
    BadVcpuCount { vcpu_count: u32, max: u32 },
    #[error("migration stream truncated: {got} of {expected} bytes of the current header or frame arrived before the stream ended; the source stopped or the connection dropped")]
    Truncated { expected: u64, got: u64 },
    #[error("migration stream ended after {frames} frames without End or Cancel; the source stopped or the connection dropped, and the migration is incomplete")]
    EndMissing { frames: u64 },
    #[error(
        "frame {frame_index} is corrupted: CRC-32 is {computed:#010x}, frame says {stored:#010x}"
    )]
    FrameChecksum {
        frame_index: u64,
        stored: u32,
        computed: u32,
    },
    #[error("stream checksum at End is {stored:#010x}, the frames received give {computed:#010x}: a whole frame was lost, repeated or reordered")]
    StreamChecksum { stored: u32, computed: u32 },
    #[error(
        "unknown frame type {0:#04x}: the stream is corrupted or from an incompatible lull-vmm"
    )]
    UnknownFrameType(u8),
    #[error("frame announces a {len}-byte payload, over the {max}-byte limit; refused without reading it")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("MemoryPages frame holds {count} pages, over the limit of {max} per frame")]
    TooManyPages { count: u64, max: u32 },
    #[error("guest page frame {gfn} is outside guest memory ({pages} pages)")]
    PageOutOfRange { gfn: u64, pages: u64 },
    #[error("{len} bytes of guest pages are not a whole number of {page_size}-byte pages")]
    PagesNotWhole { len: u64, page_size: u32 },
    #[error("VcpuState for vCPU {index}, but the source has {vcpu_count} vCPUs")]
    VcpuOutOfRange { index: u32, vcpu_count: u32 },
    #[error("state of vCPU {index} arrived twice")]
    DuplicateVcpuState { index: u32 },
    #[error("{found} frame without the state of vCPU {index}: every vCPU's state comes before post-copy or End")]
    VcpuStateMissing { index: u32, found: FrameType },
    #[error("{what} is {len} bytes, over the {max}-byte limit")]
    NameTooLong {
        what: &'static str,
        len: u64,
        max: u32,
    },
    #[error("frame {frame_index} ({frame_type}) is malformed: {reason}")]
    MalformedFrame {
        frame_index: u64,
        frame_type: FrameType,
        reason: &'static str,
    },
    #[error("unexpected {found} frame; here the stream carries {expected} (frames out of order, or an incompatible lull-vmm)")]
    UnexpectedFrame {
        expected: Expectation,
        found: FrameType,
    },
    #[error("pages of dirty round {found} while round {expected} is open: rounds are numbered from 0 and closed in order by DirtyRoundEnd")]
    WrongRound { expected: u64, found: u32 },
    #[error("End says {announced} pages were sent, {received} arrived")]
    PageCountMismatch { announced: u64, received: u64 },
    #[error("the migration stream already failed; start a new migration")]
    AfterError,
    #[error("migration stream I/O: {0}")]
    Io(#[from] std::io::Error),
}
