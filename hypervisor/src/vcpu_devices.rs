//! What this VMM's vCPU exits reach: the port bus, the MMIO bus and the
//! hypercall doorbell, gathered as the vCPU's `ExitDevices`
//! (`crate::vstate::exit`). `vstate` knows no device; this module is where
//! the concrete ones meet it, one level above both.
//!
//! The doorbell's ports are served here, on the vCPU thread, without the
//! port bus's per-device lock, so that vCPUs hint concurrently. This module
//! must never hold state of its own, and never decide what an access
//! means: the bus or the device it reaches does.

use std::sync::Arc;

use pagehint_abi::ports::HYPERCALL_PORT;
use pagehint_abi::GuestPhys;

use crate::devices::mmio::MmioBus;
use crate::devices::pio::PioBus;
use crate::hypercall::HypercallDevice;
use crate::vstate::exit::{ExitDevices, PioOutcome};

/// Width of the hypercall doorbell.
pub const HYPERCALL_PORT_LEN: u16 = 4;

/// The devices a vCPU's exits reach: the port bus, the MMIO bus and the
/// hypercall doorbell.
#[derive(Debug, Clone)]
pub struct VcpuDevices {
    pub pio: Arc<PioBus>,
    pub mmio: Arc<MmioBus>,
    pub hypercalls: Arc<HypercallDevice>,
}

/// The doorbell's offset of `port`, if it is one of the doorbell's.
fn doorbell_offset(port: u16) -> Option<u16> {
    port.checked_sub(HYPERCALL_PORT)
        .filter(|&o| o < HYPERCALL_PORT_LEN)
}

impl ExitDevices for VcpuDevices {
    fn pio_write(&self, port: u16, data: &[u8]) -> PioOutcome {
        if let Some(offset) = doorbell_offset(port) {
            self.hypercalls.write(offset, data);
            return PioOutcome::Continue;
        }
        self.pio.write(port, data)
    }

    fn pio_read(&self, port: u16, data: &mut [u8]) {
        match doorbell_offset(port) {
            Some(offset) => self.hypercalls.read(offset, data),
            None => self.pio.read(port, data),
        }
    }

    fn mmio_read(&self, addr: GuestPhys, data: &mut [u8]) -> bool {
        self.mmio.read(addr, data)
    }

    fn mmio_write(&self, addr: GuestPhys, data: &[u8]) -> bool {
        self.mmio.write(addr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doorbell_is_four_ports_from_the_hypercall_port() {
        assert_eq!(doorbell_offset(HYPERCALL_PORT), Some(0));
        assert_eq!(doorbell_offset(HYPERCALL_PORT + 3), Some(3));
        assert_eq!(doorbell_offset(HYPERCALL_PORT + 4), None);
        assert_eq!(doorbell_offset(HYPERCALL_PORT - 1), None);
        assert_eq!(doorbell_offset(0), None);
    }
}
