//! Client side of the control API, used by `lull-vmm pause|resume|snapshot|…` and tests.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http;

/// Why a request could not be made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source} (is lull-vmm running with --api-sock {path}?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to {path}: {source}")]
    Exchange {
        path: PathBuf,
        source: http::HttpError,
    },
    #[error("lull-vmm refused the request ({status} {kind}): {message}")]
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
}

/// Sends one request; returns the body of a 2xx answer, or the API's error.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    // Snapshots of large guests take a while; everything else answers in milliseconds.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
    let exchange_error = |source| ClientError::Exchange {
        path: socket.to_path_buf(),
        source,
    };
    http::write_request(&mut stream, method, path, body).map_err(|e| exchange_error(e.into()))?;
    let (status, body) = http::read_response(&mut stream).map_err(exchange_error)?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Err(ClientError::Refused {
        status,
        kind: value["error"]["kind"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        message: value["error"]["message"]
            .as_str()
            .unwrap_or("(no message)")
            .to_string(),
    })
}
