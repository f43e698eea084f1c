//! Counters of what the VMM saw, grouped per component, and their JSON dump.
//!
//! Every counter is a relaxed atomic so that vCPU threads bump them without
//! locks. This module only counts: it must never decide anything, never
//! block and never fail, whatever the guest does.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// vCPU exits, by kind (summed over all vCPUs).
#[derive(Debug, Default)]
pub struct ExitMetrics {
    pub io_in: Counter,
    pub io_out: Counter,
    pub mmio_read: Counter,
    pub mmio_write: Counter,
    pub hlt: Counter,
    /// `KVM_RUN` returned `EINTR` (a kick) or `EAGAIN` (an AP woke up).
    pub interrupted: Counter,
    pub shutdown: Counter,
    pub internal_error: Counter,
    pub fail_entry: Counter,
    pub other: Counter,
}

/// The port-I/O bus.
#[derive(Debug, Default)]
pub struct BusMetrics {
    /// Reads of a port no device claims (answered with all-ones).
    pub unhandled_reads: Counter,
    /// Writes to a port no device claims (ignored).
    pub unhandled_writes: Counter,
    /// MMIO loads no device claims (answered with all-ones).
    pub unhandled_mmio_reads: Counter,
    /// MMIO stores no device claims (ignored).
    pub unhandled_mmio_writes: Counter,
}

/// The hypercall port.
#[derive(Debug, Default)]
pub struct HypercallMetrics {
    /// `HELLO` calls, whatever their result.
    pub hello: Counter,
    /// Calls with an operation code we do not know.
    pub unknown_op: Counter,
    /// `HELLO` with another ABI version.
    pub bad_version: Counter,
    /// Doorbell writes naming a misaligned block or one outside RAM.
    pub bad_block: Counter,
    /// Doorbell writes that were not 32 bits wide, or reads of the port.
    pub bad_access: Counter,
}

/// The serial console.
#[derive(Debug, Default)]
pub struct SerialMetrics {
    /// Register writes the UART model refused or could not complete.
    pub write_errors: Counter,
}

/// The virtio block device.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Requests by type.
    pub reads: Counter,
    pub writes: Counter,
    pub flushes: Counter,
    pub get_id: Counter,
    pub unsupported: Counter,
    /// Bytes moved between the image and guest memory.
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    /// Requests that failed, by why.
    pub err_outside_ram: Counter,
    pub err_past_end: Counter,
    pub err_bad_length: Counter,
    pub err_too_long: Counter,
    pub err_layout: Counter,
    pub err_header: Counter,
    pub err_read_only: Counter,
    pub err_io: Counter,
    /// Chains completed without a status (no writable status byte).
    pub dropped: Counter,
    /// Interrupts raised (used-buffer and configuration-change).
    pub interrupts: Counter,
    /// Times the driver did something illegal and got DEVICE_NEEDS_RESET.
    pub needs_reset: Counter,
    /// Register accesses of the wrong width or at an unknown offset.
    pub bad_access: Counter,
}

/// Every counter of one VMM run.
#[derive(Debug, Default)]
pub struct Metrics {
    pub exits: ExitMetrics,
    pub bus: BusMetrics,
    pub hypercalls: HypercallMetrics,
    pub serial: SerialMetrics,
    pub block: BlockMetrics,
}

/// Writes `"name": value` pairs of one group as a JSON object.
fn group(out: &mut String, name: &str, fields: &[(&str, &Counter)]) {
    let _ = write!(out, "\"{name}\":{{");
    for (i, (field, counter)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{field}\":{}", counter.get());
    }
    out.push('}');
}

impl Metrics {
    /// All counters as one JSON document, on one line.
    pub fn to_json(&self) -> String {
        let e = &self.exits;
        let b = &self.bus;
        let h = &self.hypercalls;
        let mut out = String::from("{");
        group(
            &mut out,
            "exits",
            &[
                ("io_in", &e.io_in),
                ("io_out", &e.io_out),
                ("mmio_read", &e.mmio_read),
                ("mmio_write", &e.mmio_write),
                ("hlt", &e.hlt),
                ("interrupted", &e.interrupted),
                ("shutdown", &e.shutdown),
                ("internal_error", &e.internal_error),
                ("fail_entry", &e.fail_entry),
                ("other", &e.other),
            ],
        );
        out.push(',');
        group(
            &mut out,
            "bus",
            &[
                ("unhandled_reads", &b.unhandled_reads),
                ("unhandled_writes", &b.unhandled_writes),
                ("unhandled_mmio_reads", &b.unhandled_mmio_reads),
                ("unhandled_mmio_writes", &b.unhandled_mmio_writes),
            ],
        );
        out.push(',');
        group(
            &mut out,
            "hypercalls",
            &[
                ("hello", &h.hello),
                ("unknown_op", &h.unknown_op),
                ("bad_version", &h.bad_version),
                ("bad_block", &h.bad_block),
                ("bad_access", &h.bad_access),
            ],
        );
        out.push(',');
        group(
            &mut out,
            "serial",
            &[("write_errors", &self.serial.write_errors)],
        );
        out.push(',');
        let k = &self.block;
        group(
            &mut out,
            "block",
            &[
                ("reads", &k.reads),
                ("writes", &k.writes),
                ("flushes", &k.flushes),
                ("get_id", &k.get_id),
                ("unsupported", &k.unsupported),
                ("bytes_read", &k.bytes_read),
                ("bytes_written", &k.bytes_written),
                ("err_outside_ram", &k.err_outside_ram),
                ("err_past_end", &k.err_past_end),
                ("err_bad_length", &k.err_bad_length),
                ("err_too_long", &k.err_too_long),
                ("err_layout", &k.err_layout),
                ("err_header", &k.err_header),
                ("err_read_only", &k.err_read_only),
                ("err_io", &k.err_io),
                ("dropped", &k.dropped),
                ("interrupts", &k.interrupts),
                ("needs_reset", &k.needs_reset),
                ("bad_access", &k.bad_access),
            ],
        );
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_group_and_counts() {
        let m = Metrics::default();
        m.exits.io_out.inc();
        m.exits.io_out.inc();
        m.hypercalls.hello.inc();
        let json = m.to_json();
        assert!(json.starts_with("{\"exits\":{\"io_in\":0,\"io_out\":2,"));
        assert!(json.contains("\"hypercalls\":{\"hello\":1,"));
        assert!(json.contains("\"bus\":{"));
        m.block.bytes_read.add(512);
        assert!(m.to_json().contains("\"block\":{\"reads\":0,"));
        assert!(m.to_json().contains("\"bytes_read\":512,"));
        assert!(json.ends_with("}}"));
        assert_eq!(json.matches('{').count(), json.matches('}').count());
    }
}
