//! Live migration, pre-copy: `lull-vmm migrate` asks a running VMM (over its API) to send its
//! guest to `lull-vmm receive` on another (or the same) host, over TCP or a Unix socket, in the
//! stream format of `crates/migration-stream`.
//!
//! Source ([`source`]): dirty logging on (KVM's bitmap united with the pages the virtio device
//! threads write, see `vstate::dirty_log::DirtyTracker`), round 0
//! sends every page the guest may have touched (`GuestMemory::touched_pages`; zero pages as
//! one-byte markers), each later round the pages dirtied since the previous one, until the
//! measured transfer rate says the dirty pages left fit the downtime budget (or the round
//! limit is reached); then the vCPUs pause (and the virtio devices with them), the devices'
//! host side (disk, TAP, gpio socket) is handed over, the last dirty pages, the devices' and
//! vCPUs' `Persist` state and `End` go out, and the source waits for the destination to say
//! its vCPUs run ([`Reply`]). Only then does it exit; on any failure before that it takes its
//! devices' host side back, resumes its guest and keeps running.
//!
//! Destination ([`destination`]): creates the VM from the stream header (RAM, irqchip, vCPUs)
//! before any page arrives, writes pages as they come, restores the state exactly as
//! `lull-vmm restore` does (kvmclock advanced by the host realtime that passed, TSCs moved
//! with it, KVM_KVMCLOCK_CTRL), runs the vCPUs and answers with its CLOCK_MONOTONIC
//! timestamp, from which the source computes the downtime (both VMMs on one host).
//!
//! Guest memory in the stream: page *n* is the *n*-th page of the guest's RAM regions laid end
//! to end (as in a snapshot's memory file), not a guest-physical frame number: the regions
//! follow from the memory size (`layout::ram_regions`), and the destination checks the
//! source's region list against that before it applies any state.

pub mod destination;
pub mod pages;
pub mod postcopy;
pub mod source;

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a migration stream goes: `tcp://HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUrl {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// Why a migration URL was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("'{0}' is not a migration URL: give tcp://HOST:PORT or unix:PATH")]
    Scheme(String),
    #[error("'{0}': a tcp:// URL needs HOST:PORT (IPv6 hosts in brackets: tcp://[::1]:4444)")]
    HostPort(String),
    #[error("'{url}': '{port}' is not a port number (1-65535)")]
    Port { url: String, port: String },
    #[error("'{0}': the socket path is empty")]
    EmptyPath(String),
}

impl FromStr for MigrationUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        if let Some(rest) = url.strip_prefix("tcp://") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| UrlError::HostPort(url.to_string()))?;
            let host = host
                .strip_prefix('[')
                .and_then(|inner| inner.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() || host.contains('/') {
                return Err(UrlError::HostPort(url.to_string()));
            }
            let port = match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(UrlError::Port {
                        url: url.to_string(),
                        port: port.to_string(),
                    })
                }
            };
            return Ok(Self::Tcp {
                host: host.to_string(),
                port,
            });
        }
        if let Some(path) = url.strip_prefix("unix:") {
            // `unix:///run/x` as well as `unix:/run/x` and `unix:relative`.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(UrlError::EmptyPath(url.to_string()));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        Err(UrlError::Scheme(url.to_string()))
    }
}

impl std::fmt::Display for MigrationUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A connected migration socket.
#[derive(Debug)]
pub enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection {
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(stream) => Self::Tcp(stream.try_clone()?),
            Self::Unix(stream) => Self::Unix(stream.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.set_read_timeout(timeout),
            Self::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.set_write_timeout(timeout),
            Self::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    /// Ends the connection both ways (blocked reads and writes return).
    pub fn shutdown_both(&self) {
        let _ = match self {
            Self::Tcp(stream) => stream.shutdown(std::net::Shutdown::Both),
            Self::Unix(stream) => stream.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Tells the peer nothing more will be written.
    pub fn shutdown_write(&self) {
        let _ = match self {
            Self::Tcp(stream) => stream.shutdown(std::net::Shutdown::Write),
            Self::Unix(stream) => stream.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl Read for Connection {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.read(buffer),
            Self::Unix(stream) => stream.read(buffer),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.write(buffer),
            Self::Unix(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.flush(),
            Self::Unix(stream) => stream.flush(),
        }
    }
}

/// Connects to a listening `lull-vmm receive`, giving up after `timeout` per address.
pub fn connect(url: &MigrationUrl, timeout: Duration) -> io::Result<Connection> {
    match url {
        MigrationUrl::Unix(path) => UnixStream::connect(path).map(Connection::Unix),
        MigrationUrl::Tcp { host, port } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
            for address in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&address, timeout) {
                    Ok(stream) => {
                        // Small frames (round ends, state) must not wait for more data.
                        let _ = stream.set_nodelay(true);
                        return Ok(Connection::Tcp(stream));
                    }
                    Err(error) => last = error,
                }
            }
            Err(last)
        }
    }
}

/// A listening migration socket; a Unix socket's file is removed when it is dropped.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `url` (a stale Unix socket file is replaced; any other file is left alone).
    pub fn bind(url: &MigrationUrl) -> io::Result<Self> {
        match url {
            MigrationUrl::Tcp { host, port } => {
                TcpListener::bind((host.as_str(), *port)).map(Self::Tcp)
            }
            MigrationUrl::Unix(path) => {
                if let Ok(metadata) = std::fs::symlink_metadata(path) {
                    if metadata.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    }
                }
                UnixListener::bind(path).map(|listener| Self::Unix(listener, path.clone()))
            }
        }
    }

    /// Waits for the source to connect.
    pub fn accept(&self) -> io::Result<Connection> {
        match self {
            Self::Tcp(listener) => {
                let (stream, _) = listener.accept()?;
                let _ = stream.set_nodelay(true);
                Ok(Connection::Tcp(stream))
            }
            Self::Unix(listener, _) => listener
                .accept()
                .map(|(stream, _)| Connection::Unix(stream)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The destination's one answer on the connection, a JSON line: its vCPUs run (and since
/// when, CLOCK_MONOTONIC), or why it refused the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The VM is created (on the stream header): a post-copy source that switches at once
    /// waits for this before it pauses, so the destination's VM set-up is not downtime. It
    /// may precede the final answer; readers skip it.
    Prepared,
    Running {
        vcpus_running_monotonic_ns: u64,
    },
    Failed {
        error: String,
    },
}

/// Longest reply line read.
const MAX_REPLY_BYTES: u64 = 64 * 1024;

impl Reply {
    pub fn write_to(&self, writer: &mut impl Write) -> io::Result<()> {
        let mut line = serde_json::to_vec(self).map_err(io::Error::other)?;
        line.push(b'\n');
        writer.write_all(&line)?;
        writer.flush()
    }

    /// Reads one reply line; `Ok(None)` when the peer closed without one.
    pub fn read_from(reader: impl Read) -> io::Result<Option<Self>> {
        Self::read_line(&mut io::BufReader::new(reader))
    }

    /// Reads the next reply line from `reader` (which keeps what it read past it).
    pub fn read_line(reader: &mut impl BufRead) -> io::Result<Option<Self>> {
        let mut line = Vec::new();
        reader.take(MAX_REPLY_BYTES).read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Ok(None);
        }
        Self::parse(&line).map(Some)
    }

    /// Decodes one reply line.
    pub fn parse(line: &[u8]) -> io::Result<Self> {
        serde_json::from_slice(line).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the destination's reply is not understood ({error})"),
            )
        })
    }
}

/// Where an outgoing migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// No migration was asked for.
    #[default]
    None,
    Connecting,
    /// Pre-copy rounds while the guest runs.
    Precopy,
    /// vCPUs paused, last pages and state being sent.
    StopAndCopy,
    /// Everything sent; waiting for the destination to run the guest.
    WaitingForDestination,
    /// The guest runs on the destination; the pages it still lacks are being sent (on
    /// request first). No way back: on failure the guest is lost.
    Postcopy,
    /// The guest runs on the destination; this VMM exits.
    Completed,
    /// Failed; the guest runs here again.
    Failed,
    /// Cancelled; the guest runs here again.
    Cancelled,
}

impl MigrationState {
    /// Whether a migration is under way (pause, resume, snapshot and a second migration wait).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Connecting
                | Self::Precopy
                | Self::StopAndCopy
                | Self::WaitingForDestination
                | Self::Postcopy
        )
    }
}

/// Progress of the current or last migration (GET /vm/migration, and in GET /vm).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationStatus {
    pub state: MigrationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The round being sent (0: every touched page; later: pages dirtied since).
    pub round: u32,
    pub bytes_sent: u64,
    pub pages_sent: u64,
    pub zero_pages_sent: u64,
    /// Bytes the dirty pages known now would take (4 KiB each, an upper bound).
    pub bytes_left: u64,
    /// Pages the guest dirtied per second, measured over the last round.
    pub dirty_pages_per_second: f64,
    /// Measured transfer rate over all rounds so far.
    pub transfer_bytes_per_second: f64,
    /// What sending `bytes_left` would take at the measured rate.
    pub expected_downtime_ms: f64,
    pub downtime_budget_ms: u64,
    pub max_rounds: u32,
    pub elapsed_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<MigrationSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a completed migration went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationSummary {
    /// Connect → destination confirmed.
    pub total_ms: f64,
    pub bytes_sent: u64,
    pub pages_sent: u64,
    pub zero_pages_sent: u64,
    /// Rounds including the stop-and-copy one.
    pub rounds: u32,
    /// Pages sent while the vCPUs were paused.
    pub stop_and_copy_pages: u64,
    /// Bytes of device and vCPU state.
    pub state_bytes: u64,
    /// Source vCPUs paused → destination vCPUs running (CLOCK_MONOTONIC of both VMMs).
    pub downtime_ms: f64,
    /// Whether the round limit forced the stop-and-copy before the budget was met.
    pub forced_by_round_limit: bool,
    /// Where the source's share of the downtime went: pausing the vCPUs, reading the dirty
    /// log and saving the state, sending the last pages and the state (µs).
    pub source_phases_us: std::collections::BTreeMap<String, f64>,
    pub source_paused_monotonic_ns: u64,
    pub destination_running_monotonic_ns: u64,
    /// Post-copy only: pages sent after the switch, how many of them the destination asked
    /// for (faults), and switch → the destination has every page (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy: Option<PostcopySummary>,
}

/// The post-copy part of a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostcopySummary {
    pub pages: u64,
    pub requested_pages: u64,
    /// Whether pre-copy ran first and did not converge (else post-copy was asked for at once).
    pub after_precopy: bool,
    pub all_pages_ms: f64,
}

impl MigrationSummary {
    /// The one line `lull-vmm migrate` and the source VMM print.
    pub fn line(&self) -> String {
        let postcopy = self.postcopy.as_ref().map_or(String::new(), |post| {
            format!(
                "; post-copy{}: {} pages after the switch ({} on request), all in {:.1} ms",
                if post.after_precopy {
                    " after pre-copy did not converge"
                } else {
                    ""
                },
                post.pages,
                post.requested_pages,
                post.all_pages_ms
            )
        });
        format!(
            "migration completed in {:.1} ms: {} sent ({} pages, {} of them zero) in {} rounds \
             ({} pages while paused{}), downtime {:.2} ms{postcopy}",
            self.total_ms,
            bytes(self.bytes_sent),
            self.pages_sent,
            self.zero_pages_sent,
            self.rounds,
            self.stop_and_copy_pages,
            if self.forced_by_round_limit {
                ", forced by the round limit"
            } else {
                ""
            },
            self.downtime_ms
        )
    }
}

/// A byte count for people.
pub fn bytes(count: u64) -> String {
    match count {
        0..1024 => format!("{count} B"),
        1024..0x10_0000 => format!("{:.1} KiB", count as f64 / 1024.0),
        _ => format!("{:.1} MiB", count as f64 / (1024.0 * 1024.0)),
    }
}

/// The migration status and controls shared by the API, the migration thread and the machine.
#[derive(Default)]
pub struct MigrationControl {
    status: Mutex<MigrationStatus>,
    cancel: AtomicBool,
    /// The migration socket while a cancel may still stop it: cancelling shuts it down, so a
    /// write blocked on a stalled destination returns at once.
    abort: Mutex<Option<Connection>>,
    /// Set when an API client read a finished status (so the source may exit).
    outcome_read: AtomicBool,
}

impl MigrationControl {
    pub fn status(&self) -> MigrationStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The status for an API client; marks a finished one as read.
    pub fn status_for_client(&self) -> MigrationStatus {
        let status = self.status();
        if matches!(status.state, MigrationState::Completed) {
            self.outcome_read.store(true, Ordering::SeqCst);
        }
        status
    }

    pub fn update(&self, change: impl FnOnce(&mut MigrationStatus)) {
        change(
            &mut self
                .status
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// Claims the right to migrate: false if one is under way.
    pub fn begin(&self, fresh: MigrationStatus) -> bool {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if status.state.is_active() || status.state == MigrationState::Completed {
            return false;
        }
        *status = fresh;
        self.cancel.store(false, Ordering::SeqCst);
        self.outcome_read.store(false, Ordering::SeqCst);
        true
    }

    /// Asks the migration to stop; false if there is none to stop (or it is past the point
    /// where it can: the vCPUs are paused and the state is on its way).
    pub fn request_cancel(&self) -> bool {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(
            status.state,
            MigrationState::Connecting | MigrationState::Precopy
        ) {
            self.cancel.store(true, Ordering::SeqCst);
            if let Some(connection) = self.abort().take() {
                connection.shutdown_both();
            }
            true
        } else {
            false
        }
    }

    fn abort(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.abort
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets a cancel shut `connection` down until [`MigrationControl::enter_stop_and_copy`].
    pub fn set_abort(&self, connection: Option<Connection>) {
        *self.abort() = connection;
    }

    /// Moves to stop-and-copy unless a cancel came first (false): from here on a cancel is
    /// refused, since the destination may already be about to run the guest.
    pub fn enter_stop_and_copy(&self, round: u32) -> bool {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.cancel_requested() {
            return false;
        }
        status.state = MigrationState::StopAndCopy;
        status.round = round;
        self.abort().take();
        true
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    pub fn outcome_was_read(&self) -> bool {
        self.outcome_read.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_clear_errors() {
        assert_eq!(
            "tcp://127.0.0.1:4444".parse(),
            Ok(MigrationUrl::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            })
        );
        assert_eq!(
            "tcp://[::1]:7".parse(),
            Ok(MigrationUrl::Tcp {
                host: "::1".into(),
                port: 7
            })
        );
        assert_eq!(
            "unix:/run/m.sock".parse(),
            Ok(MigrationUrl::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            "unix:///run/m.sock".parse(),
            Ok(MigrationUrl::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            "unix:rel.sock".parse(),
            Ok(MigrationUrl::Unix("rel.sock".into()))
        );
        let error = |url: &str| url.parse::<MigrationUrl>().unwrap_err();
        assert!(matches!(error("http://x:1"), UrlError::Scheme(_)));
        assert!(matches!(error("/tmp/sock"), UrlError::Scheme(_)));
        assert!(matches!(error("tcp://host"), UrlError::HostPort(_)));
        assert!(matches!(error("tcp://:44"), UrlError::HostPort(_)));
        assert!(matches!(error("tcp://h:0"), UrlError::Port { .. }));
        assert!(matches!(error("tcp://h:65536"), UrlError::Port { .. }));
        assert!(matches!(error("tcp://h:x"), UrlError::Port { .. }));
        assert!(matches!(error("unix:"), UrlError::EmptyPath(_)));
        assert_eq!(
            error("tcp://h:x").to_string(),
            "'tcp://h:x': 'x' is not a port number (1-65535)"
        );
    }

    #[test]
    fn urls_display_as_parsed() {
        for url in ["tcp://127.0.0.1:4444", "tcp://[::1]:7", "unix:/run/m.sock"] {
            assert_eq!(url.parse::<MigrationUrl>().unwrap().to_string(), url);
        }
    }

    #[test]
    fn replies_round_trip_and_garbage_is_an_error() {
        for reply in [
            Reply::Prepared,
            Reply::Running {
                vcpus_running_monotonic_ns: 123,
            },
            Reply::Failed {
                error: "frame 3 is corrupted".into(),
            },
        ] {
            let mut wire = Vec::new();
            reply.write_to(&mut wire).unwrap();
            assert_eq!(wire.last(), Some(&b'\n'));
            assert_eq!(Reply::read_from(&wire[..]).unwrap(), Some(reply));
        }
        assert_eq!(Reply::read_from(&b""[..]).unwrap(), None);
        assert!(Reply::read_from(&b"{\"status\":\"maybe\"}\n"[..]).is_err());
    }

    #[test]
    fn one_migration_at_a_time_and_cancel_only_before_stop_and_copy() {
        let control = MigrationControl::default();
        assert!(!control.request_cancel(), "nothing to cancel");
        assert!(control.begin(MigrationStatus {
            state: MigrationState::Connecting,
            ..Default::default()
        }));
        assert!(!control.begin(MigrationStatus::default()), "second refused");
        let (ours, theirs) = UnixStream::pair().unwrap();
        control.set_abort(Some(Connection::Unix(ours)));
        assert!(control.request_cancel());
        assert!(control.cancel_requested());
        let mut byte = [0u8; 1];
        assert_eq!(
            (&theirs).read(&mut byte).unwrap(),
            0,
            "cancel shut the socket down"
        );
        assert!(!control.enter_stop_and_copy(3), "cancelled first");
        control.update(|status| status.state = MigrationState::StopAndCopy);
        assert!(!control.request_cancel(), "too late once paused");
        control.update(|status| status.state = MigrationState::Failed);
        assert!(control.begin(MigrationStatus {
            state: MigrationState::Connecting,
            ..Default::default()
        }));
        assert!(
            !control.cancel_requested(),
            "a new migration starts uncancelled"
        );
        control.update(|status| status.state = MigrationState::Completed);
        assert!(!control.outcome_was_read());
        assert_eq!(control.status_for_client().state, MigrationState::Completed);
        assert!(control.outcome_was_read());
    }
}
