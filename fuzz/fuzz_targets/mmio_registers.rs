//! Fuzz target: the register files the guest reaches by MMIO and port
//! I/O: the virtio-mmio block device behind the `MmioBus`
//! (`VirtioBlock`'s registers, its status machine, queue setup and
//! `process_queue` over rings the fuzzer wrote), and the `PioBus` routing
//! with the exit port and the 16550 console, with any address, width and
//! value.
//!
//! Asserts: the identification registers always read their constants and
//! the configuration space the disk's capacity; the status never shows
//! DRIVER_OK without FEATURES_OK; only the two defined interrupt bits are
//! ever set; neither bus hands a device an access that does not start in
//! its window, and the MMIO bus never one that runs past it; the exit port
//! reports exactly the value an `out` wrote, zero-extended; the console
//! prints no more bytes than it was written. It must never keep a
//! device between inputs.

#![no_main]

use std::sync::{Arc, Mutex};

use hypervisor::devices::disk::DiskFile;
use hypervisor::devices::mmio::{MmioBus, MmioDevice};
use hypervisor::devices::pio::{ExitDevice, PioBus, PioDevice, PioOutcome};
use hypervisor::devices::serial::SerialDevice;
use hypervisor::devices::virtio_mmio::{VirtioBlock, DEVICE_ID_BLOCK, MAGIC, VENDOR_ID, VERSION};
use hypervisor::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use pagehint_abi::GuestPhys;
use pagehint_fuzz::{plain_memory, scratch_path, Input};
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 0x4_0000;
/// Where the devices sit.
const VIRTIO: GuestPhys = GuestPhys(0xd000_0000);
const PROBE: GuestPhys = GuestPhys(0xd000_2000);
const WINDOW: u64 = 0x1000;
const PROBE_PORT: u16 = 0x100;
const PROBE_PORTS: u16 = 8;
const EXIT_PORT: u16 = 0x200;
const COM1: u16 = 0x3f8;
const DISK_SECTORS: u64 = 16;

/// A device that checks every access it is handed lies in its window.
struct Probe {
    len: u64,
}

impl MmioDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        assert!(
            offset + data.len() as u64 <= self.len,
            "MMIO access past the window"
        );
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(
            offset + data.len() as u64 <= self.len,
            "MMIO access past the window"
        );
    }
}

impl PioDevice for Probe {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        assert!(
            u64::from(offset) < self.len,
            "port access starts outside the range"
        );
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u16, _data: &[u8]) -> PioOutcome {
        assert!(
            u64::from(offset) < self.len,
            "port access starts outside the range"
        );
        PioOutcome::Continue
    }
}

fn read32(bus: &MmioBus, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.read(VIRTIO + offset, &mut b));
    u32::from_le_bytes(b)
}

fn write32(bus: &MmioBus, offset: u64, v: u32) {
    assert!(bus.write(VIRTIO + offset, &v.to_le_bytes()));
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = plain_memory(MEM);
    let path = scratch_path("mmio.img");
    if std::fs::write(&path, vec![0x11u8; (DISK_SECTORS * 512) as usize]).is_err() {
        panic!("fuzz harness: cannot write {}", path.display());
    }
    let disk = match DiskFile::open(&path, input.bool()) {
        Ok(d) => d,
        Err(e) => panic!("fuzz harness: {e}"),
    };
    let metrics = Arc::new(Metrics::default());
    let (dev, _irq, _notify) = match VirtioBlock::new(mem.clone(), disk, metrics.clone()) {
        Ok(d) => d,
        Err(e) => panic!("fuzz harness: {e}"),
    };
    let dev = Arc::new(Mutex::new(dev));
    let mut mmio = MmioBus::new(metrics.clone());
    let mut pio = PioBus::new(metrics.clone());
    let exit = Arc::new(Mutex::new(ExitDevice::new()));
    let (serial, _serial_irq) = match SerialDevice::new(Vec::<u8>::new(), metrics.clone()) {
        Ok(s) => s,
        Err(e) => panic!("fuzz harness: {e}"),
    };
    let serial = Arc::new(Mutex::new(serial));
    let mut serial_writes = 0usize;
    let inserted = mmio.insert(VIRTIO, WINDOW, dev.clone()).is_ok()
        && mmio
            .insert(PROBE, WINDOW, Arc::new(Mutex::new(Probe { len: WINDOW })))
            .is_ok()
        && pio
            .insert(
                PROBE_PORT,
                PROBE_PORTS,
                Arc::new(Mutex::new(Probe {
                    len: u64::from(PROBE_PORTS),
                })),
            )
            .is_ok()
        && pio.insert(EXIT_PORT, 1, exit.clone()).is_ok()
        && pio.insert(COM1, 8, serial.clone()).is_ok();
    assert!(inserted, "fuzz harness: cannot build the buses");

    for _ in 0..128 {
        if input.is_empty() {
            break;
        }
        let width = match input.u8() % 8 {
            0 => 1,
            1 => 2,
            2 => 8,
            3 => input.below(9) as usize,
            _ => 4,
        };
        let mut buf = [0u8; 8];
        match input.u8() % 10 {
            // A register write, mostly 32-bit and aligned.
            0..=3 => {
                let offset = if input.u8() % 8 == 0 {
                    input.below(0x200)
                } else {
                    input.below(0x30) * 4
                };
                let value = match input.u8() % 4 {
                    0 => input.u32(),
                    1 => input.below(16) as u32,
                    2 => 1 << input.below(32),
                    _ => (input.below(MEM / 16) * 16) as u32,
                };
                buf[..4].copy_from_slice(&value.to_le_bytes());
                let w = if offset % 4 == 0 && input.u8() % 4 != 0 {
                    4
                } else {
                    width
                };
                assert!(mmio.write(VIRTIO + offset, &buf[..w]));
            }
            // A register or configuration read.
            4 => {
                let offset = input.below(0x200);
                assert!(mmio.read(VIRTIO + offset, &mut buf[..width]));
            }
            // The driver's usual bring-up, ring addresses from the input.
            5 => {
                for s in [1, 3] {
                    write32(&mmio, 0x70, s);
                }
                write32(&mmio, 0x24, 1);
                write32(&mmio, 0x20, 1);
                write32(&mmio, 0x70, 0xb);
                write32(&mmio, 0x30, 0);
                write32(&mmio, 0x38, 1 << input.below(5));
                for reg in [0x80, 0x90, 0xa0] {
                    write32(&mmio, reg, (input.below(MEM / 16) * 16) as u32);
                    write32(&mmio, reg + 4, 0);
                }
                write32(&mmio, 0x44, 1);
                write32(&mmio, 0x70, 0xf);
            }
            // The worker serves the queue.
            6 => {
                if let Ok(mut d) = dev.lock() {
                    d.process_queue();
                }
            }
            // The guest writes its memory (rings, descriptors, headers).
            7 => {
                let at = input.below(MEM);
                let n = 1 + input.below(64) as usize;
                let bytes = input.bytes(n);
                let _ = mem.write_slice(bytes, GuestAddress(at));
            }
            // Any MMIO address at all.
            8 => {
                let addr = match input.u8() % 4 {
                    0 => GuestPhys(input.u64()),
                    1 => PROBE + (WINDOW - input.below(8)),
                    _ => PROBE + input.below(WINDOW),
                };
                let _ = mmio.read(addr, &mut buf[..width]);
                let _ = mmio.write(addr, &buf[..width]);
            }
            // Port I/O.
            _ => {
                let port = match input.u8() % 5 {
                    0 => input.u16(),
                    1 => EXIT_PORT,
                    2 => COM1 + input.below(10) as u16,
                    _ => PROBE_PORT + input.below(u64::from(PROBE_PORTS) + 2) as u16,
                };
                let w = [1, 2, 4][input.below(3) as usize];
                let value = input.u32();
                pio.read(port, &mut buf[..w]);
                let out = pio.write(port, &value.to_le_bytes()[..w]);
                if (COM1..COM1 + 8).contains(&port) {
                    serial_writes += 1;
                }
                if port == EXIT_PORT {
                    let v = if w == 4 {
                        value
                    } else {
                        value & ((1 << (8 * w)) - 1)
                    };
                    assert_eq!(out, PioOutcome::Exit(v));
                    if let Ok(e) = exit.lock() {
                        assert_eq!(e.status(), Some(v));
                    }
                }
            }
        }
        // The console prints at most a byte per write it was given.
        if let Ok(s) = serial.lock() {
            assert!(
                s.writer().len() <= serial_writes,
                "console output from nowhere"
            );
        }
        // The register file's invariants.
        assert_eq!(read32(&mmio, 0x00), MAGIC);
        assert_eq!(read32(&mmio, 0x04), VERSION);
        assert_eq!(read32(&mmio, 0x08), DEVICE_ID_BLOCK);
        assert_eq!(read32(&mmio, 0x0c), VENDOR_ID);
        let status = read32(&mmio, 0x70);
        assert!(
            status & 4 == 0 || status & 8 != 0,
            "DRIVER_OK without FEATURES_OK: {status:#x}"
        );
        let irq = read32(&mmio, 0x60);
        assert_eq!(irq & !3, 0, "interrupt status {irq:#x}");
        let mut cap = [0u8; 8];
        assert!(mmio.read(VIRTIO + 0x100, &mut cap));
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    }
});
