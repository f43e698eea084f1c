//! What the fuzz targets share: a cursor that turns the fuzzer's bytes into
//! the values a target needs, fresh guest RAM (the VMM's or plain
//! memory), and a scratch disk image.
//!
//! Each target builds everything it uses anew from its input, so that a
//! crash input replays alone. Nothing here may keep state from one input to
//! the next (but the scratch file's path), or decide anything the VMM code
//! under test should decide.

use std::path::PathBuf;

use hypervisor::memory::GuestRam;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest RAM of the targets: the VMM's smallest size, 16 MiB (4096
/// frames), mapped lazily, so a fresh one per input costs little.
pub const RAM_SIZE: u64 = 16 << 20;

/// The fuzzer's bytes, read front to back; past the end every read is zero.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True once every byte was used.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes not yet used.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// A value below `n` (`n` > 0), from as few bytes as it needs.
    pub fn below(&mut self, n: u64) -> u64 {
        let v = if n <= 1 << 8 {
            u64::from(self.u8())
        } else if n <= 1 << 16 {
            u64::from(self.u16())
        } else if n <= 1 << 32 {
            u64::from(self.u32())
        } else {
            self.u64()
        };
        v % n.max(1)
    }

    /// A guest address: mostly near RAM (inside, just past its end, or
    /// straddling it), sometimes any 64-bit value.
    pub fn gpa(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => self.u64(),
            1 => RAM_SIZE.wrapping_sub(self.below(0x2000)),
            _ => self.below(RAM_SIZE),
        }
    }
}

/// Fresh guest RAM of [`RAM_SIZE`], all zero.
pub fn ram() -> GuestRam {
    match GuestRam::new(RAM_SIZE) {
        Ok(r) => r,
        // Not the VMM's fault: the host could not map 16 MiB.
        Err(e) => panic!("fuzz harness: cannot map guest RAM: {e}"),
    }
}

/// Plain guest memory of `size` bytes at guest-physical 0, all zero (no
/// hole, none of the VMM's layout): where the virtio targets put their
/// queues and buffers.
pub fn plain_memory(size: u64) -> GuestMemoryMmap {
    match GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]) {
        Ok(m) => m,
        Err(e) => panic!("fuzz harness: guest memory: {e}"),
    }
}

/// A scratch file for disk images, one per fuzzing process, in `/dev/shm`
/// where it exists (so that flushes cost nothing).
pub fn scratch_path(name: &str) -> PathBuf {
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("pagehint-fuzz-{}-{name}", std::process::id()))
}
