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

pub mod client;
pub mod http;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::devices::lock;
use crate::machine::{Machine, MachineError};

/// A request the API understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    Info,
    Pause,
    Resume,
    Snapshot { path: PathBuf },
    PowerButton,
    Metrics,
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
pub fn execute(machine: &Mutex<Machine>, request: &ApiRequest) -> Result<(u16, Vec<u8>), ApiError> {
    let mut machine = lock(machine);
    let no_content = |result: Result<(), MachineError>| {
        result.map(|()| (204, Vec::new())).map_err(machine_error)
    };
    let to_json = |value: &dyn erased::Serialize| (200, value.json());
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
pub fn serve_connection(mut stream: UnixStream, machine: &Mutex<Machine>) {
    // A client that stalls must not block the API for long.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let answer = match http::read_request(&mut stream) {
        Ok(request) => {
            route(&request.method, &request.path, &request.body).and_then(|r| execute(machine, &r))
        }
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
            for stream in listener.incoming().flatten() {
                serve_connection(stream, &machine);
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
