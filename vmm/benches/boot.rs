//! Boot and exit-cost benchmark: this VMM against QEMU's microvm machine on
//! the same guest ELF, side by side, measured in one run.
//!
//! For each host it prints the median of several runs of
//! - time from process start to the guest's first console line,
//! - time from process start to a clean exit,
//! - the round trip of one port write to a port nobody claims, from the
//!   difference between runs with 0 and with N writes,
//!
//! and the ratio VMM / QEMU (below 1 means this VMM is faster).
//! Run with `cargo bench --bench boot` or `scripts/bench-boot.sh`.

// A benchmark is a test program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 9;
const PORT_WRITES: u64 = 20_000;
const FIRST_LINE: &str = "guest: pagehint kernel booting";

struct Sample {
    first_line: Duration,
    exit: Duration,
}

fn guest_kernel() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guest/x86_64-unknown-none/guest/guest-kernel")
}

fn vmm_cmd(append: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmm"));
    c.args(["run", "--mem", "64M", "--vcpus", "2", "--"]);
    c.args(append.split_whitespace());
    c
}

fn qemu_cmd(append: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel", "kvm", "-machine", "microvm", "-smp", "2", "-m", "64",
    ])
    .args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-kernel")
    .arg(guest_kernel())
    .args(["-append", append]);
    c
}

/// Runs one boot; `ok` is the exit status that means a clean guest exit.
fn sample(mut cmd: Command, ok: i32) -> Sample {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut first_line = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.expect("read stdout");
        if first_line.is_none() && line.contains(FIRST_LINE) {
            first_line = Some(start.elapsed());
        }
    }
    let status = child.wait().expect("wait");
    let exit = start.elapsed();
    assert_eq!(status.code(), Some(ok), "{cmd:?} did not exit cleanly");
    Sample {
        first_line: first_line.expect("no first console line"),
        exit,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct HostResult {
    first_line: Duration,
    exit: Duration,
    port_rtt: Duration,
}

fn measure(make: &dyn Fn(&str) -> Command, ok: i32) -> HostResult {
    let boots: Vec<Sample> = (0..RUNS).map(|_| sample(make("hello"), ok)).collect();
    let base: Vec<Duration> = (0..RUNS)
        .map(|_| sample(make("portio 0"), ok).exit)
        .collect();
    let heavy: Vec<Duration> = (0..RUNS)
        .map(|_| sample(make(&format!("portio {PORT_WRITES}")), ok).exit)
        .collect();
    let delta = median(heavy).saturating_sub(median(base));
    HostResult {
        first_line: median(boots.iter().map(|s| s.first_line).collect()),
        exit: median(boots.iter().map(|s| s.exit).collect()),
        port_rtt: delta / PORT_WRITES as u32,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    println!(
        "boot benchmark: median of {RUNS} runs, guest {}",
        guest_kernel().display()
    );
    let vmm = measure(&vmm_cmd, 0);
    let qemu = if qemu_ok {
        // isa-debug-exit: guest status 0 is QEMU status 1.
        Some(measure(&qemu_cmd, 1))
    } else {
        println!("qemu-system-x86_64 not installed: QEMU column left empty");
        None
    };
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "metric", "this VMM", "QEMU microvm", "VMM/QEMU"
    );
    type Metric = fn(&HostResult) -> Duration;
    let rows: [(&str, Metric); 3] = [
        ("start to first console line", |r| r.first_line),
        ("start to clean exit (hello)", |r| r.exit),
        ("port write round trip", |r| r.port_rtt),
    ];
    for (name, f) in rows {
        let v = f(&vmm);
        let (q, ratio) = match &qemu {
            Some(q) => {
                let q = f(q);
                (
                    ms_or_us(q),
                    format!("{:.2}", v.as_secs_f64() / q.as_secs_f64().max(1e-9)),
                )
            }
            None => ("-".into(), "-".into()),
        };
        println!("{name:<34} {:>12} {q:>12} {ratio:>12}", ms_or_us(v));
    }
}

fn ms_or_us(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.2} us", d.as_secs_f64() * 1e6)
    } else {
        ms(d)
    }
}
