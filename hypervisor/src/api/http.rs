//! The API socket's HTTP/1.1: one request read from a client's bytes, one
//! response written back. Header parsing is `httparse`'s; this module adds
//! the limits a VMM needs (a bounded head and body, `Content-Length` only,
//! no chunked bodies) and the JSON error body of Firecracker's and Cloud
//! Hypervisor's APIs (`{"fault_message": "..."}`).
//!
//! It must never block, allocate without a bound, or panic on what a
//! client sends: every malformed request becomes a [`HttpError`] that the
//! server answers with 400 (or 413) and a one-line message.

use std::fmt::Write as _;

/// The most bytes of request line and headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most bytes of a request body (the API's bodies are a few dozen).
pub const MAX_BODY: usize = 64 * 1024;
/// The most headers in one request.
const MAX_HEADERS: usize = 32;

/// A request method the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without a query (`/memory`).
    pub path: String,
    pub body: Vec<u8>,
}

/// Why a request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("request body longer than {MAX_BODY} bytes")]
    BodyTooLong,
    #[error("method {0} is not supported (GET, PUT, PATCH)")]
    BadMethod(String),
    #[error("chunked request bodies are not supported; send Content-Length")]
    Chunked,
}

impl HttpError {
    /// The status that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLong | HttpError::BodyTooLong => 413,
            HttpError::BadMethod(_) => 405,
            _ => 400,
        }
    }
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request, and how many bytes it took.
    Done(Request, usize),
    /// More bytes are needed.
    Partial,
}

/// Parses one request from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::HeadTooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLong);
    }
    let method = match req.method.unwrap_or_default() {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        other => return Err(HttpError::BadMethod(printable(other))),
    };
    let raw_path = req.path.unwrap_or_default();
    let path = raw_path.split('?').next().unwrap_or_default().to_string();
    let mut body_len = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
            body_len = v;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Chunked);
        }
    }
    if body_len > MAX_BODY {
        return Err(HttpError::BodyTooLong);
    }
    let end = head_len + body_len;
    if buf.len() < end {
        return Ok(Parsed::Partial);
    }
    Ok(Parsed::Done(
        Request {
            method,
            path,
            body: buf[head_len..end].to_vec(),
        },
        end,
    ))
}

/// At most 40 printable characters of what a client sent, for a message.
fn printable(s: &str) -> String {
    s.chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// A JSON document, or empty (204).
    pub body: String,
}

impl Response {
    /// 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Self { status: 200, body }
    }

    /// 204, no body.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: String::new(),
        }
    }

    /// An error status with `{"fault_message": message}`.
    pub fn fault(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "fault_message": message }).to_string();
        Self { status, body }
    }

    /// The bytes on the wire; the connection closes after each response.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut out = String::with_capacity(128 + self.body.len());
        let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", self.status);
        out.push_str("Server: pagehint-vmm\r\nConnection: close\r\n");
        if !self.body.is_empty() {
            out.push_str("Content-Type: application/json\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
        out.push_str(&self.body);
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (Request, usize) {
        match parse(buf) {
            Ok(Parsed::Done(r, n)) => (r, n),
            other => panic!("not a whole request: {other:?}"),
        }
    }

    #[test]
    fn a_get_and_a_patch_with_a_body_parse() {
        let get = b"GET /memory?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let (r, n) = done(get);
        assert_eq!(
            (r.method, r.path.as_str(), r.body.len()),
            (Method::Get, "/memory", 0)
        );
        assert_eq!(n, get.len());
        let req = b"PATCH /memory HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"budget_bytes\": 10}";
        let (r, n) = done(req);
        assert_eq!(
            (r.method, r.body.as_slice()),
            (Method::Patch, &b"{\"budget_bytes\": 10}"[..])
        );
        assert_eq!(n, req.len());
    }

    #[test]
    fn partial_requests_wait_for_more() {
        assert_eq!(parse(b"GET /vm HTTP/1.1\r\nHo"), Ok(Parsed::Partial));
        assert_eq!(
            parse(b"PUT /actions HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"act"),
            Ok(Parsed::Partial)
        );
    }

    #[test]
    fn bad_requests_get_their_error_and_status() {
        let e = parse(b"DELETE /vm HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(
            (e.status(), e.clone()),
            (405, HttpError::BadMethod("DELETE".into()))
        );
        assert!(matches!(
            parse(b"\x01\x02 garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        let e = parse(b"PUT /actions HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err();
        assert!(matches!(e, HttpError::Malformed(_)));
        let e = parse(b"PUT /a HTTP/1.1\r\nContent-Length: 999999\r\n\r\n").unwrap_err();
        assert_eq!((e.clone(), e.status()), (HttpError::BodyTooLong, 413));
        let e = parse(b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert_eq!(e, HttpError::Chunked);
        let long = [b"GET /".as_slice(), &[b'a'; MAX_HEAD + 10]].concat();
        assert_eq!(parse(&long), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let r = Response::fault(400, "no such \"path\"").to_bytes();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"fault_message\":\"no such \\\"path\\\"\"}"));
        let n = Response::no_content().to_bytes();
        assert_eq!(
            String::from_utf8(n).unwrap(),
            "HTTP/1.1 204 No Content\r\nServer: pagehint-vmm\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
