//! Just enough HTTP/1.1 for a local control socket: one request per connection, bodies sized
//! by Content-Length, bounded header and body sizes. Anything else is a typed error.

use std::io::{self, Read, Write};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Why a request or response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed HTTP: {0}")]
    Malformed(&'static str),
    #[error("request head exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("request body of {0} bytes exceeds {MAX_BODY_BYTES} bytes")]
    BodyTooLarge(usize),
    #[error("chunked transfer encoding is not supported; send Content-Length")]
    Chunked,
}

/// Reads until the blank line ending the head; returns (head, bytes of body already read).
fn read_head(stream: &mut impl Read) -> Result<(String, Vec<u8>), HttpError> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buffer[..end].to_vec())
                .map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
            return Ok((head, buffer[end + 4..].to_vec()));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the end of the head",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn content_length(headers: &[&str]) -> Result<usize, HttpError> {
    let mut length = 0;
    for line in headers {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("header line without ':'"));
        };
        let name = name.trim().to_ascii_lowercase();
        if name == "content-length" {
            length = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed("Content-Length is not a number"))?;
        } else if name == "transfer-encoding" && value.trim().eq_ignore_ascii_case("chunked") {
            return Err(HttpError::Chunked);
        }
    }
    Ok(length)
}

fn read_body(
    stream: &mut impl Read,
    mut body: Vec<u8>,
    length: usize,
    limit: usize,
) -> Result<Vec<u8>, HttpError> {
    if length > limit {
        return Err(HttpError::BodyTooLarge(length));
    }
    if body.len() > length {
        return Err(HttpError::Malformed("more body bytes than Content-Length"));
    }
    let already = body.len();
    body.resize(length, 0);
    stream.read_exact(&mut body[already..])?;
    Ok(body)
}

/// Reads one request.
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let (head, body_start) = read_head(stream)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(
            "request line is not 'METHOD PATH HTTP/1.x'",
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("only HTTP/1.x is spoken here"));
    }
    if method.is_empty() || !target.starts_with('/') {
        return Err(HttpError::Malformed(
            "request target must be an absolute path",
        ));
    }
    let headers: Vec<&str> = lines.collect();
    let length = content_length(&headers)?;
    let body = read_body(stream, body_start, length, MAX_BODY_BYTES)?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Writes a complete response with a JSON body and closes the exchange.
pub fn write_response(stream: &mut impl Write, status: u16, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Writes a request (client side).
pub fn write_request(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Reads a response (client side): status code and body.
pub fn read_response(stream: &mut impl Read) -> Result<(u16, Vec<u8>), HttpError> {
    let (head, body_start) = read_head(stream)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(HttpError::Malformed("status line has no code"))?;
    let headers: Vec<&str> = lines.collect();
    let length = content_length(&headers)?;
    // Metrics can be large; responses are trusted more than requests but still bounded.
    let body = read_body(stream, body_start, length, 16 << 20)?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut &raw[..])
    }

    #[test]
    fn parses_request_with_body() {
        let request = parse(b"PUT /vm/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{\"path\":\"/tmp\"}").unwrap();
        assert_eq!(request.method, "PUT");
        assert_eq!(request.path, "/vm/snapshot");
        assert_eq!(request.body, b"{\"path\":\"/tmp\"}");
    }

    #[test]
    fn query_string_is_dropped_from_the_path() {
        assert_eq!(
            parse(b"GET /vm/metrics?x=1 HTTP/1.1\r\n\r\n").unwrap().path,
            "/vm/metrics"
        );
    }

    #[test]
    fn malformed_requests_are_typed_errors() {
        assert!(matches!(
            parse(b"GARBAGE\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET vm HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / SPDY/3\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nbroken\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::Chunked)
        ));
    }

    #[test]
    fn oversized_head_and_body_are_refused() {
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        assert!(matches!(parse(&huge), Err(HttpError::HeadTooLarge)));
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Err(HttpError::BodyTooLarge(99_999_999))
        ));
    }

    #[test]
    fn short_body_is_an_io_error() {
        assert!(matches!(
            parse(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
            Err(HttpError::Io(_))
        ));
    }

    #[test]
    fn response_round_trips() {
        let mut wire = Vec::new();
        write_response(&mut wire, 409, b"{\"error\":1}").unwrap();
        assert!(wire.starts_with(b"HTTP/1.1 409 Conflict\r\n"));
        let (status, body) = read_response(&mut &wire[..]).unwrap();
        assert_eq!((status, body.as_slice()), (409, &b"{\"error\":1}"[..]));
    }

    #[test]
    fn request_round_trips() {
        let mut wire = Vec::new();
        write_request(&mut wire, "PUT", "/vm/pause", b"").unwrap();
        let request = read_request(&mut &wire[..]).unwrap();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("PUT", "/vm/pause")
        );
    }
}
