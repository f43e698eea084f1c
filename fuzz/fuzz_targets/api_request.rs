//! Fuzz target: the API socket's request parser (`api::http::parse`) and
//! router (`api::routes::route`), with any bytes a client could send,
//! whole or cut anywhere.
//!
//! Asserts: a parsed request never claims more bytes than it was given,
//! and parsing exactly those bytes again gives the same request; a request
//! cut short is never a different complete request; every refusal carries
//! 400, 405 or 413; every routed answer carries one of the API's statuses
//! and, on the wire, says its length and ends with its body; a body longer
//! than `MAX_BODY` is never accepted. It must never keep state between
//! inputs.

#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};

use hypervisor::api::http::{parse, Parsed, Request, Response, MAX_BODY};
use hypervisor::api::routes::{route, VmControl};
use libfuzzer_sys::fuzz_target;

/// A VMM that answers with fixed documents and accepts budgets above 1 MiB.
struct Fake {
    stopped: AtomicBool,
}

impl VmControl for Fake {
    fn vm(&self) -> serde_json::Value {
        serde_json::json!({"state": "running"})
    }
    fn stats(&self) -> serde_json::Value {
        serde_json::json!({"exits": {}})
    }
    fn memory(&self) -> serde_json::Value {
        serde_json::json!({"frames": {}})
    }
    fn set_budget(&self, bytes: Option<u64>) -> Result<(), String> {
        match bytes {
            Some(b) if b < 1 << 20 => Err("below the floor".into()),
            _ => Ok(()),
        }
    }
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// The wire form of `r` says its status and length and ends with its body.
fn check_wire(r: &Response) {
    let bytes = r.to_bytes();
    let text = String::from_utf8(bytes).expect("responses are UTF-8");
    assert!(text.starts_with(&format!("HTTP/1.1 {} ", r.status)));
    assert!(text.contains(&format!("Content-Length: {}\r\n\r\n", r.body.len())));
    assert!(text.ends_with(&r.body));
    if !r.body.is_empty() {
        let _: serde_json::Value = serde_json::from_str(&r.body).expect("bodies are JSON");
    }
}

fn check_routed(req: &Request) {
    let fake = Fake {
        stopped: AtomicBool::new(false),
    };
    let r = route(req, &fake);
    assert!(
        [200, 204, 400, 404, 405].contains(&r.status),
        "status {}",
        r.status
    );
    if fake.stopped.load(Ordering::SeqCst) {
        assert_eq!((r.status, req.path.as_str()), (204, "/actions"));
    }
    check_wire(&r);
}

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Done(req, n)) => {
            assert!(n <= data.len());
            assert!(req.body.len() <= MAX_BODY);
            assert_eq!(parse(&data[..n]), Ok(Parsed::Done(req.clone(), n)));
            // Any shorter cut is incomplete or refused, never another
            // whole request.
            let cut = n / 2;
            if let Ok(Parsed::Done(other, m)) = parse(&data[..cut]) {
                panic!("a cut at {cut} of {n} bytes parsed as {other:?} ({m})");
            }
            check_routed(&req);
        }
        Ok(Parsed::Partial) => {}
        Err(e) => {
            assert!([400, 405, 413].contains(&e.status()), "{e}");
            check_wire(&Response::fault(e.status(), &e.to_string()));
        }
    }
});
