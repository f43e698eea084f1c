//! Fuzz target: the kernel loader, `loader::check_image` and
//! `loader::load_kernel` (the ELF/PVH image the user names with
//! `--kernel`), and the guest command line (`build_cmdline`,
//! `write_boot_info`).
//!
//! Asserts: an image the check accepts has every PT_LOAD segment with data
//! between `KERNEL_START` and the end of RAM, with its file bytes inside
//! the image (restated here from the ELF layout, not taken from the
//! loader); a loaded kernel's entry point lies in RAM at or above
//! `KERNEL_START`; loading never writes the low boot area; an accepted
//! command line fits `CMDLINE_MAX` with its NUL and is written there
//! intact. It must never hand the loader an image larger than the input.

#![no_main]

use hypervisor::loader::{build_cmdline, check_image, load_kernel, write_boot_info};
use libfuzzer_sys::fuzz_target;
use pagehint_abi::boot::{CMDLINE_ADDR, CMDLINE_MAX, KERNEL_START};
use pagehint_fuzz::{ram, Input, RAM_SIZE};
use vm_memory::{Bytes, GuestAddress};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Every PT_LOAD segment of an image `check_image` accepted lies where the
/// VMM promises.
fn segments_are_sane(image: &[u8], ram: u64) {
    let phoff = u64_at(image, 32) as usize;
    let phnum = usize::from(u16_at(image, 56));
    assert_eq!(u16_at(image, 54), 56);
    let mut loads = 0;
    for i in 0..phnum {
        let ph = &image[phoff + i * 56..phoff + i * 56 + 56];
        let p_type = u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]);
        let (offset, paddr, filesz, memsz) = (
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        // linux-loader copies any PT_LOAD with file bytes.
        if p_type != 1 || (memsz == 0 && filesz == 0) {
            continue;
        }
        loads += 1;
        assert!(filesz <= memsz);
        assert!(
            offset + filesz <= image.len() as u64,
            "segment data past the file"
        );
        assert!(
            paddr >= KERNEL_START,
            "segment at {paddr:#x} in the boot area"
        );
        assert!(
            paddr + memsz <= ram,
            "segment {paddr:#x}+{memsz:#x} past RAM"
        );
    }
    assert!(loads > 0);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    if mode % 8 == 0 {
        // The command line: arguments split at 0xff.
        let raw = input.rest();
        let args: Vec<String> = raw
            .split(|&b| b == 0xff)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Ok(line) = build_cmdline(&args) else {
            let joined = args.join(" ");
            assert!(joined.len() >= CMDLINE_MAX || joined.contains('\0'));
            return;
        };
        assert!(line.len() < CMDLINE_MAX && !line.contains('\0'));
        let ram = ram();
        assert!(write_boot_info(&ram, &line).is_ok());
        let mut back = vec![0u8; line.len() + 1];
        assert!(ram
            .mem()
            .read_slice(&mut back, GuestAddress(CMDLINE_ADDR))
            .is_ok());
        assert_eq!(&back[..line.len()], line.as_bytes());
        assert_eq!(back[line.len()], 0);
        return;
    }
    let image = input.rest();
    // The check alone, against a RAM size the fuzzer picks too.
    let size = match mode % 4 {
        0 => RAM_SIZE,
        1 => u64::from(mode) << 20,
        2 => u64::MAX,
        _ => KERNEL_START + 0x1000,
    };
    if check_image(image, size).is_ok() {
        segments_are_sane(image, size);
    }
    // The load into fresh RAM.
    let ram = ram();
    let loaded = load_kernel(&ram, image);
    if let Ok(entry) = loaded.map(|e| e.as_u64()) {
        assert!(
            check_image(image, RAM_SIZE).is_ok(),
            "loaded an image the check refuses"
        );
        assert!(
            entry >= KERNEL_START && entry < RAM_SIZE,
            "entry {entry:#x}"
        );
    }
    // Nothing below the kernel's load address was written (compared as
    // slices: one memcmp, not a traced comparison per byte).
    let mut low = vec![0u8; KERNEL_START as usize];
    let zero = vec![0u8; KERNEL_START as usize];
    assert!(ram.mem().read_slice(&mut low, GuestAddress(0)).is_ok());
    assert!(low == zero, "the loader wrote the boot area");
});
