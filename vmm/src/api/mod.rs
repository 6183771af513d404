//! The control API: REST/JSON over a Unix socket, in the manner of Firecracker.
//! Documented in `vmm/api.yaml` (OpenAPI 3). Errors are `{"error": {"kind", "message"}}` with
//! an HTTP status; a bad request never affects the running VM.
//!
//! | method | path              | body             | answer                         |
//! |--------|-------------------|------------------|--------------------------------|
//! | GET    | /vm               |                  | state, vCPUs, memory           |
//! | PUT    | /vm/pause         |                  | 204                            |
//! | PUT    | /vm/resume        |                  | 204                            |
//! | PUT    | /vm/snapshot      | {"path": DIR}    | sizes and duration             |
//! | PUT    | /vm/power-button  |                  | 204                            |
//! | GET    | /vm/metrics       |                  | counters, rates, host memory   |
//! | PUT    | /vm/migrate       | {"url", "downtime_ms"?, "max_rounds"?, "postcopy"?, "postcopy_after_rounds"?} | 202, status |
//! | GET    | /vm/migration     |                  | migration progress / outcome   |
//! | PUT    | /vm/migration/cancel |               | 202, or 409 with none to stop  |

pub mod client;
pub mod http;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use erased::Serialize as _;
use serde::Deserialize;
use serde_json::json;

use crate::devices::lock;
use crate::machine::{Machine, MachineError};
use crate::migration::source::{self, MigrateOptions, StartError};
use crate::migration::{MigrationControl, MigrationUrl};

/// A request the API understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    Info,
    Pause,
    Resume,
    Snapshot { path: PathBuf },
    PowerButton,
    Metrics,
    Migrate(MigrateOptions),
    MigrationStatus,
    CancelMigration,
}

/// An error answer: HTTP status, a stable machine-readable kind, a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} ({status}): {message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Vec<u8> {
        json!({"error": {"kind": self.kind, "message": self.message}})
            .to_string()
            .into_bytes()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    url: String,
    downtime_ms: Option<u64>,
    max_rounds: Option<u32>,
    /// Post-copy at once (true), or
    postcopy: Option<bool>,
    /// after this many pre-copy rounds that did not converge.
    postcopy_after_rounds: Option<u32>,
}

fn migrate_body(body: &[u8]) -> Result<MigrateOptions, ApiError> {
    let bad = |message: String| ApiError::new(400, "bad_request", message);
    let parsed: MigrateBody = serde_json::from_slice(body).map_err(|error| {
        bad(format!(
            "migrate body must be {{\"url\": \"tcp://HOST:PORT|unix:PATH\", \"downtime_ms\": N, \"max_rounds\": N}}: {error}"
        ))
    })?;
    let url: MigrationUrl = parsed
        .url
        .parse()
        .map_err(|error| bad(format!("{error}")))?;
    let downtime_ms = parsed.downtime_ms.unwrap_or(source::DEFAULT_DOWNTIME_MS);
    let max_rounds = parsed.max_rounds.unwrap_or(source::DEFAULT_MAX_ROUNDS);
    if downtime_ms == 0 {
        return Err(bad("downtime_ms must be at least 1".into()));
    }
    if max_rounds == 0 {
        return Err(bad(
            "max_rounds must be at least 1 (round 0 sends the guest's RAM)".into(),
        ));
    }
    let postcopy = match (parsed.postcopy, parsed.postcopy_after_rounds) {
        (Some(true), Some(_)) => {
            return Err(bad(
                "give postcopy (at once) or postcopy_after_rounds, not both".into(),
            ))
        }
        (Some(true), None) => Some(0),
        (_, Some(0)) => return Err(bad("postcopy_after_rounds must be at least 1".into())),
        (_, rounds) => rounds,
    };
    Ok(MigrateOptions {
        url,
        downtime_ms,
        max_rounds: postcopy.filter(|&rounds| rounds > 0).unwrap_or(max_rounds),
        postcopy,
    })
}

/// Maps method, path and body to a request, or to the error that says what is wrong.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, ApiError> {
    let expect = |wanted: &str, request: ApiRequest| {
        if method == wanted {
            Ok(request)
        } else {
            Err(ApiError::new(
                405,
                "method_not_allowed",
                format!("{path} takes {wanted}, not {method}"),
            ))
        }
    };
    match path.trim_end_matches('/') {
        "/vm" => expect("GET", ApiRequest::Info),
        "/vm/pause" => expect("PUT", ApiRequest::Pause),
        "/vm/resume" => expect("PUT", ApiRequest::Resume),
        "/vm/power-button" => expect("PUT", ApiRequest::PowerButton),
        "/vm/metrics" => expect("GET", ApiRequest::Metrics),
        "/vm/migration" => expect("GET", ApiRequest::MigrationStatus),
        "/vm/migration/cancel" => expect("PUT", ApiRequest::CancelMigration),
        "/vm/migrate" => {
            expect("PUT", ApiRequest::Info)?;
            Ok(ApiRequest::Migrate(migrate_body(body)?))
        }
        "/vm/snapshot" => {
            expect("PUT", ApiRequest::Info)?;
            let parsed: SnapshotBody = serde_json::from_slice(body).map_err(|error| {
                ApiError::new(
                    400,
                    "bad_request",
                    format!("snapshot body must be {{\"path\": \"DIR\"}}: {error}"),
                )
            })?;
            if parsed.path.as_os_str().is_empty() {
                return Err(ApiError::new(400, "bad_request", "snapshot path is empty"));
            }
            Ok(ApiRequest::Snapshot { path: parsed.path })
        }
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no such resource: {path}"),
        )),
    }
}

fn machine_error(error: MachineError) -> ApiError {
    match error {
        MachineError::InvalidState { .. } => ApiError::new(409, "invalid_state", error.to_string()),
        MachineError::Snapshot(_)
        | MachineError::Memory(_)
        | MachineError::SnapshotDirectory { .. } => {
            ApiError::new(500, "snapshot_failed", error.to_string())
        }
        _ => ApiError::new(500, "internal", error.to_string()),
    }
}

/// Carries out a request; returns (status, JSON body).
pub fn execute(
    machine: &Arc<Mutex<Machine>>,
    migration: &MigrationControl,
    request: &ApiRequest,
) -> Result<(u16, Vec<u8>), ApiError> {
    let to_json = |value: &dyn erased::Serialize| (200, value.json());
    // Migration requests first, without holding the machine (the migration thread takes it).
    match request {
        ApiRequest::Migrate(options) => {
            return source::start(machine, options.clone())
                .map(|()| (202, migration.status().json()))
                .map_err(|error| match error {
                    StartError::NotRunning(_) | StartError::Busy => {
                        ApiError::new(409, "invalid_state", error.to_string())
                    }
                    StartError::Thread(_) => ApiError::new(500, "internal", error.to_string()),
                });
        }
        ApiRequest::MigrationStatus => return Ok(to_json(&migration.status_for_client())),
        ApiRequest::CancelMigration => {
            return if migration.request_cancel() {
                Ok((202, migration.status().json()))
            } else {
                Err(ApiError::new(
                    409,
                    "invalid_state",
                    format!(
                        "no migration to cancel: it is {} (cancel is possible while connecting \
                         and during pre-copy, not once the vCPUs are paused)",
                        serde_json::to_value(migration.status().state)
                            .ok()
                            .and_then(|state| state.as_str().map(str::to_string))
                            .unwrap_or_default()
                    ),
                ))
            };
        }
        ApiRequest::Pause | ApiRequest::Resume | ApiRequest::Snapshot { .. }
            if migration.status().state.is_active() =>
        {
            return Err(ApiError::new(
                409,
                "invalid_state",
                "a migration is under way; wait for it or cancel it (PUT /vm/migration/cancel)",
            ));
        }
        _ => {}
    }
    let mut machine = lock(machine);
    let no_content = |result: Result<(), MachineError>| {
        result.map(|()| (204, Vec::new())).map_err(machine_error)
    };
    match request {
        ApiRequest::Info => Ok(to_json(&machine.info())),
        ApiRequest::Pause => no_content(machine.pause()),
        ApiRequest::Resume => no_content(machine.resume()),
        ApiRequest::PowerButton => {
            machine.press_power_button();
            Ok((204, Vec::new()))
        }
        ApiRequest::Metrics => Ok(to_json(&machine.metrics())),
        ApiRequest::Snapshot { path } => machine
            .snapshot(path)
            .map(|report| to_json(&report))
            .map_err(machine_error),
        ApiRequest::Migrate(_) | ApiRequest::MigrationStatus | ApiRequest::CancelMigration => {
            unreachable!("handled above")
        }
    }
}

/// `dyn`-friendly JSON encoding of the few answer types.
mod erased {
    pub trait Serialize {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Serialize for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes())
        }
    }
}

/// Serves one connection: read, route, execute, answer.
pub fn serve_connection(
    mut stream: UnixStream,
    machine: &Arc<Mutex<Machine>>,
    migration: &MigrationControl,
) {
    // A client that stalls must not block the API for long.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let answer = match http::read_request(&mut stream) {
        Ok(request) => route(&request.method, &request.path, &request.body)
            .and_then(|r| execute(machine, migration, &r)),
        Err(http::HttpError::BodyTooLarge(size)) => Err(ApiError::new(
            413,
            "payload_too_large",
            format!("body of {size} bytes is too large"),
        )),
        Err(error) => Err(ApiError::new(400, "bad_request", error.to_string())),
    };
    let (status, body) = answer.unwrap_or_else(|error| (error.status, error.body()));
    let _ = http::write_response(&mut stream, status, &body);
}

/// Accepts connections on `listener` forever, on a thread of its own.
pub fn spawn_server(
    listener: UnixListener,
    machine: Arc<Mutex<Machine>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let migration = lock(&machine).migration();
            for stream in listener.incoming().flatten() {
                serve_connection(stream, &machine, &migration);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_documented_endpoint() {
        assert_eq!(route("GET", "/vm", b""), Ok(ApiRequest::Info));
        assert_eq!(route("PUT", "/vm/pause", b""), Ok(ApiRequest::Pause));
        assert_eq!(route("PUT", "/vm/resume/", b""), Ok(ApiRequest::Resume));
        assert_eq!(
            route("PUT", "/vm/power-button", b""),
            Ok(ApiRequest::PowerButton)
        );
        assert_eq!(route("GET", "/vm/metrics", b""), Ok(ApiRequest::Metrics));
        assert_eq!(
            route("PUT", "/vm/snapshot", br#"{"path": "/tmp/snap"}"#),
            Ok(ApiRequest::Snapshot {
                path: PathBuf::from("/tmp/snap")
            })
        );
    }

    #[test]
    fn migration_endpoints_route_with_defaults_and_checked_bodies() {
        assert_eq!(
            route("PUT", "/vm/migrate", br#"{"url": "unix:/tmp/m.sock"}"#),
            Ok(ApiRequest::Migrate(MigrateOptions {
                url: MigrationUrl::Unix("/tmp/m.sock".into()),
                downtime_ms: 5,
                max_rounds: 30,
                postcopy: None,
            }))
        );
        assert_eq!(
            route(
                "PUT",
                "/vm/migrate",
                br#"{"url": "tcp://127.0.0.1:4444", "downtime_ms": 300, "max_rounds": 2}"#
            ),
            Ok(ApiRequest::Migrate(MigrateOptions {
                url: MigrationUrl::Tcp {
                    host: "127.0.0.1".into(),
                    port: 4444
                },
                downtime_ms: 300,
                max_rounds: 2,
                postcopy: None,
            }))
        );
        let postcopy = |body: &[u8]| match route("PUT", "/vm/migrate", body) {
            Ok(ApiRequest::Migrate(options)) => Ok((options.postcopy, options.max_rounds)),
            Ok(other) => panic!("{other:?}"),
            Err(error) => Err(error.message),
        };
        assert_eq!(
            postcopy(br#"{"url": "unix:/m", "postcopy": true}"#),
            Ok((Some(0), 30))
        );
        assert_eq!(
            postcopy(br#"{"url": "unix:/m", "postcopy_after_rounds": 4}"#),
            Ok((Some(4), 4))
        );
        assert!(postcopy(br#"{"url": "unix:/m", "postcopy_after_rounds": 0}"#).is_err());
        assert!(
            postcopy(br#"{"url": "unix:/m", "postcopy": true, "postcopy_after_rounds": 2}"#)
                .is_err()
        );
        assert_eq!(
            route("GET", "/vm/migration", b""),
            Ok(ApiRequest::MigrationStatus)
        );
        assert_eq!(
            route("PUT", "/vm/migration/cancel", b""),
            Ok(ApiRequest::CancelMigration)
        );
        assert_eq!(route("GET", "/vm/migrate", b"").unwrap_err().status, 405);
        for body in [
            &br#"{"url": "ftp://x"}"#[..],
            br#"{"url": "tcp://x:0"}"#,
            br#"{"url": "unix:/s", "downtime_ms": 0}"#,
            br#"{"url": "unix:/s", "max_rounds": 0}"#,
            br#"{"url": "unix:/s", "speed": 1}"#,
            b"{}",
        ] {
            let error = route("PUT", "/vm/migrate", body).unwrap_err();
            assert_eq!((error.status, error.kind), (400, "bad_request"), "{body:?}");
        }
        let error = route("PUT", "/vm/migrate", br#"{"url": "tcp://h:x"}"#).unwrap_err();
        assert!(
            error.message.contains("not a port number"),
            "{}",
            error.message
        );
    }

    #[test]
    fn wrong_method_is_405_and_unknown_path_404() {
        assert_eq!(route("GET", "/vm/pause", b"").unwrap_err().status, 405);
        assert_eq!(
            route("DELETE", "/vm", b"").unwrap_err().kind,
            "method_not_allowed"
        );
        assert_eq!(route("PUT", "/vm/reboot", b"").unwrap_err().status, 404);
    }

    #[test]
    fn bad_snapshot_bodies_are_400_with_a_reason() {
        for body in [
            &b""[..],
            b"{",
            b"{}",
            br#"{"path": 3}"#,
            br#"{"path": ""}"#,
            br#"{"path": "/x", "extra": 1}"#,
        ] {
            let error = route("PUT", "/vm/snapshot", body).unwrap_err();
            assert_eq!((error.status, error.kind), (400, "bad_request"), "{body:?}");
            assert!(!error.message.is_empty());
        }
    }

    #[test]
    fn error_body_is_json_with_kind_and_message() {
        let error = ApiError::new(409, "invalid_state", "cannot resume: the VM is running");
        let value: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
        assert_eq!(value["error"]["kind"], "invalid_state");
        assert_eq!(
            value["error"]["message"],
            "cannot resume: the VM is running"
        );
    }
}
