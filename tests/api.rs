//! The operators' API (`vmm run --api-sock`) against the real guest under
//! KVM: every endpoint, a budget set through the socket reaching its target
//! within two reclaimer rounds, every kind of bad request answered with its
//! error while the guest keeps running, `vmm ctl`, and the stop through the
//! socket (exit 143, the final stats, the socket file removed).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{spawn_logged, wait_exit, wait_until};
use common::{read_json, require_kvm, vmm_path};
use hypervisor::api::client::{request, Answer};
use pagehint_abi::exit::vmm as code;
use serde_json::Value;

/// A temporary directory for one test's socket, stats and stderr.
struct Place(PathBuf);

impl Place {
    fn new(tag: &str) -> Place {
        let d = std::env::temp_dir().join(format!("vmm-api-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Place(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The VMM under test, killed if the test fails before it stopped (its
/// guest would idle for minutes).
struct Vmm(std::process::Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn get(sock: &Path, path: &str) -> Value {
    let a = request(sock, "GET", path, "").unwrap();
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

fn patch_budget(sock: &Path, body: &str) -> Answer {
    request(sock, "PATCH", "/memory", body).unwrap()
}

/// Sends `bytes` as they are and returns the whole answer.
fn raw(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `vmm ctl --api-sock SOCK ARGS`: its status and stdout.
fn ctl(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(vmm_path())
        .args(["ctl", "--api-sock", sock.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every bad request the API must refuse, each with the status it must
/// get and a word of its message.
fn bad_requests(sock: &Path) {
    let cases: [(&[u8], &str, &str); 6] = [
        (b"\x16\x03\x01 not http\r\n\r\n", "400", "malformed"),
        (
            b"GET /memory HTTP/1.1\r\nContent-Length: nine\r\n\r\n",
            "400",
            "Content-Length",
        ),
        (b"DELETE /vm HTTP/1.1\r\n\r\n", "405", "not supported"),
        (b"GET /balloon HTTP/1.1\r\n\r\n", "404", "no resource"),
        (
            b"PATCH /memory HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"budget\"",
            "400",
            "bad body",
        ),
        (
            b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400",
            "chunked",
        ),
    ];
    for (bytes, status, word) in cases {
        let a = raw(sock, bytes);
        assert!(
            a.starts_with(&format!("HTTP/1.1 {status} ")),
            "{bytes:?}: {a}"
        );
        assert!(
            a.contains("fault_message") && a.contains(word),
            "{bytes:?}: {a}"
        );
    }
    let huge = vec![b'x'; 70_000];
    let a = raw(sock, &huge);
    assert!(a.starts_with("HTTP/1.1 413 "), "{a}");
    // A slow client: half a request, then nothing. A second client is
    // turned away meanwhile; the slow one gets 408 at the deadline.
    let mut slow = UnixStream::connect(sock).unwrap();
    slow.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let second = request(sock, "GET", "/vm", "").unwrap();
    assert_eq!(second.status, 503, "{}", second.body);
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = String::new();
    let _ = slow.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
}

#[test]
fn the_api_reads_sets_the_budget_refuses_bad_requests_and_stops_the_vm() {
    require_kvm();
    let place = Place::new("all");
    let sock = place.path("api.sock");
    let stats = place.path("stats.json");
    let stderr = place.path("stderr");
    // 32 MiB touched then freed (Unused, still resident: --unused-delay
    // off leaves them to a budget), then a long idle.
    let mut vmm = Vmm(spawn_logged(
        &[
            "run",
            "--mem",
            "128M",
            "--unused-delay",
            "off",
            "--api-sock",
            sock.to_str().unwrap(),
            "--stats",
            stats.to_str().unwrap(),
            "--",
            "copies=1",
            "churn-idle",
            "1",
            "32",
            "600000",
        ],
        &stderr,
    ));
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    wait_until(
        Duration::from_secs(60),
        || sock.exists(),
        || format!("no socket: {}", log()),
    );

    // Bad requests while the guest boots and churns: each gets its error.
    let t = Instant::now();
    bad_requests(&sock);
    eprintln!("bad requests answered in {:?}", t.elapsed());

    // The guest kept running: its churn ends with 32 MiB Unused resident.
    let churned = || {
        let m = get(&sock, "/memory");
        m["bytes"]["unused"].as_u64().unwrap() >= 32 << 20
            && m["resident_bytes"].as_u64().unwrap() >= 32 << 20
    };
    wait_until(Duration::from_secs(240), churned, || {
        format!("no churn: {} {}", get(&sock, "/memory"), log())
    });

    // The reads.
    let vm = get(&sock, "/vm");
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["config"]["mem_bytes"], 128u64 << 20, "{vm}");
    assert!(vm["uptime_ms"].as_u64().unwrap() > 0);
    let s = get(&sock, "/stats");
    assert!(s["exits"]["io_out"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["hypercalls"]["set_state_table"], 1, "{s}");
    let m = get(&sock, "/memory");
    let f = &m["frames"];
    let total: u64 = ["stable", "unused", "volatile", "potentially_volatile"]
        .iter()
        .map(|k| f[k].as_u64().unwrap())
        .sum();
    assert_eq!(total * 4096, 128 << 20, "every frame in one state: {m}");
    assert!(m["budget_bytes"].is_null(), "{m}");
    let floor = m["floor_bytes"].as_u64().unwrap();
    assert!(floor < 8 << 20, "{m}");

    // A budget below the floor is refused and changes nothing.
    let low = patch_budget(&sock, "{\"budget_bytes\": 4096}");
    assert_eq!(low.status, 400, "{}", low.body);
    assert!(low.fault_message().contains("floor"), "{}", low.body);
    assert!(get(&sock, "/memory")["budget_bytes"].is_null());
    let (status, _, err) = ctl(&sock, &["set-budget", "1K"]);
    assert_eq!(status, code::API_REFUSED, "{err}");
    assert!(
        err.starts_with("vmm: error: PATCH /memory: budget 1024 bytes is below"),
        "{err}"
    );

    // The budget through `vmm ctl`: reached within two reclaimer rounds.
    let (status, out, err) = ctl(&sock, &["set-budget", "8M"]);
    assert_eq!(status, 0, "{out}{err}");
    let reached = || !get(&sock, "/memory")["budget_progress"]["reached_in_rounds"].is_null();
    wait_until(Duration::from_secs(10), reached, || {
        format!("budget not reached: {}", get(&sock, "/memory"))
    });
    let m = get(&sock, "/memory");
    let p = &m["budget_progress"];
    eprintln!("budget 8 MiB reached: {p}");
    assert_eq!(m["budget_bytes"], 8u64 << 20);
    assert!(
        p["reached_in_rounds"].as_u64().unwrap() <= 2,
        "goal: 2 rounds: {m}"
    );
    // Measured again by later rounds, not only estimated.
    std::thread::sleep(Duration::from_millis(500));
    let m = get(&sock, "/memory");
    assert!(m["resident_bytes"].as_u64().unwrap() <= 8 << 20, "{m}");
    assert!(
        m["discarded_total"].as_u64().unwrap() >= 24 << 20 >> 12,
        "{m}"
    );
    let (status, out, _) = ctl(&sock, &["get"]);
    assert_eq!(status, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["budget_bytes"],
        8u64 << 20
    );
    // Removed again.
    assert_eq!(patch_budget(&sock, "{\"budget_bytes\": null}").status, 204);
    assert!(get(&sock, "/memory")["budget_bytes"].is_null());

    // The stop, through the socket: the SIGTERM path.
    let _ = std::fs::remove_file(&stats);
    let (status, out, err) = ctl(&sock, &["stop"]);
    assert_eq!(status, 0, "{out}{err}");
    let exit = wait_exit(&mut vmm.0, Duration::from_secs(20), "no stop within 20 s");
    let err = log();
    assert_eq!(exit.code(), Some(code::SIGTERM), "{err}");
    assert!(err.contains("vmm: error: stopped through the API"), "{err}");
    assert_eq!(err.matches("vmm: error:").count(), 1, "one line: {err}");
    let doc = read_json(&stats);
    assert_eq!(doc["memory"]["budget_bytes"], Value::Null, "{doc}");
    assert!(
        doc["reclaim"]["pages_discarded"].as_u64().unwrap() > 0,
        "{doc}"
    );
    assert!(!sock.exists(), "the socket file is removed");
    let (status, _, err) = ctl(&sock, &["get"]);
    assert_eq!(status, code::API_UNREACHABLE, "{err}");
}

#[test]
fn a_live_socket_is_not_taken_over_and_a_plain_file_is_refused() {
    require_kvm();
    let place = Place::new("busy");
    let sock = place.path("api.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let r = common::vmm_quick(&["run", "--api-sock", sock.to_str().unwrap()]);
    r.expect_status(code::CONFIG);
    r.expect_stderr("another process is listening there");
    let file = place.path("file");
    std::fs::write(&file, b"x").unwrap();
    let r = common::vmm_quick(&["run", "--api-sock", file.to_str().unwrap()]);
    r.expect_status(code::CONFIG);
    r.expect_stderr("is not a socket");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the file is left alone"
    );
}
