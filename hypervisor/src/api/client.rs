//! A client of the API socket: one request, one answer, for `vmm ctl` and
//! the tests (people with `curl --unix-socket` need none of it).
//!
//! It speaks only what the server speaks: HTTP/1.1, one request per
//! connection, a `Content-Length` body, `Connection: close`. It must never
//! wait without a deadline, and never read more than [`MAX_ANSWER`] bytes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest the client waits to connect, send, or read the answer.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// The most bytes of an answer (the stats document is a few KiB).
pub const MAX_ANSWER: u64 = 1 << 20;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the VMM at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM at {path} did not answer: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM at {0} sent an answer that is not HTTP")]
    Garbled(PathBuf),
}

/// An answer: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// True for 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error's `fault_message`, or the body as it came.
    pub fn fault_message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.body.trim().to_string())
    }
}

/// Sends `method path` with `body` (JSON, or empty) to the socket at
/// `sock` and returns the answer.
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> Result<Answer, ClientError> {
    let io = |source| ClientError::Io {
        path: sock.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(sock).map_err(|source| ClientError::Connect {
        path: sock.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(DEADLINE)).map_err(io)?;
    s.set_write_timeout(Some(DEADLINE)).map_err(io)?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
    parse_answer(&raw).ok_or_else(|| ClientError::Garbled(sock.to_path_buf()))
}

/// The status and body of a whole answer.
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(raw).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let status = r.code?;
    let body = String::from_utf8_lossy(&raw[head..]).into_owned();
    Some(Answer { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_and_faults_named() {
        let a = parse_answer(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\n{\"fault_message\":\"no\"}\r\n",
        )
        .unwrap();
        assert_eq!(a.status, 400);
        assert!(!a.ok());
        assert_eq!(a.fault_message(), "no");
        let ok = parse_answer(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert!(ok.ok() && ok.body.is_empty());
        assert_eq!(parse_answer(b"HTTP/1.1 20"), None);
        assert_eq!(parse_answer(b"garbage\r\n\r\n"), None);
    }

    #[test]
    fn nobody_listening_is_a_connect_error() {
        let e = request(Path::new("/nonexistent/api.sock"), "GET", "/vm", "").unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }
}
