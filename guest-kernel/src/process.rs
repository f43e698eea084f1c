//! Starting a user program: a fresh address space, the ELF image copied
//! into it, a stack with the argument string on top, and a task.
//!
//! The image is the kernel's embedded user-program ELF; it is checked by
//! `guest_logic::elf` before anything is copied.
//!
//! Filling the new program's frames is part of its job: two unsafe calls
//! of `MmState::write_frame`, each into a frame `populate_anon` has just
//! mapped into the address space being built, which no task runs yet.

use alloc::boxed::Box;

use guest_logic::elf::{Elf, PF_W, PF_X};
use guest_logic::vma::Backing;
use pagehint_abi::syscall::{prot, STACK_SIZE, STACK_TOP};
use pagehint_abi::PAGE_SIZE;

use crate::mm::{self, addr_space::AsError, MmState};
use crate::task::Task;

/// The user programs, built by `vmm/build.rs` from the `guest-user` crate.
pub(crate) static USER_ELF: &[u8] = include_bytes!(env!("GUEST_USER_ELF"));

/// Builds a task that runs `elf` with `args` as instance `instance`.
pub fn create(elf: &Elf, args: &str, instance: u32) -> Result<Box<Task>, AsError> {
    mm::with(|st| {
        let asid = st.create_space()?;
        match load(st, asid, elf, args) {
            Ok(rsp) => {
                let root = st.root(asid).ok_or(AsError::NoSpace)?;
                Ok(Task::new_user(
                    asid,
                    root,
                    elf.entry(),
                    rsp,
                    [STACK_TOP - 512, args.len() as u64, instance as u64],
                ))
            }
            Err(e) => {
                st.destroy_space(asid);
                Err(e)
            }
        }
    })
}

/// Copies the image into `asid` and sets up the stack; returns the initial
/// stack pointer.
fn load(st: &mut MmState, asid: u32, elf: &Elf, args: &str) -> Result<u64, AsError> {
    for seg in elf.segments() {
        let start = seg.vaddr & !(PAGE_SIZE - 1);
        let end = (seg.vaddr + seg.mem_size).next_multiple_of(PAGE_SIZE);
        let mut p = prot::READ;
        if seg.flags & PF_W != 0 {
            p |= prot::WRITE;
        }
        if seg.flags & PF_X != 0 {
            p |= prot::EXEC;
        }
        st.add_area(asid, start, end - start, p, Backing::Image)?;
        let data = elf.data(&seg);
        let mut va = start;
        while va < end {
            let pa = st.populate_anon(asid, va)?;
            // The part of the file data that falls in this page.
            let page_lo = va.max(seg.vaddr);
            let page_hi = (va + PAGE_SIZE).min(seg.vaddr + seg.file_size);
            if page_lo < page_hi {
                let from = (page_lo - seg.vaddr) as usize;
                let to = (page_hi - seg.vaddr) as usize;
                // SAFETY: `pa` is the frame `populate_anon` just mapped at
                // `va` in this new address space (its mapping holds the
                // reference; no task runs here yet, and we hold the
                // memory-management lock); the data stays inside the page.
                unsafe { MmState::write_frame(pa, page_lo - va, &data[from..to]) };
            }
            va += PAGE_SIZE;
        }
    }
    // The stack: filled on demand, but its top page now, for the arguments.
    st.add_area(
        asid,
        STACK_TOP - STACK_SIZE,
        STACK_SIZE,
        prot::RW,
        Backing::Stack,
    )?;
    let top_page = STACK_TOP - PAGE_SIZE;
    let pa = st.populate_anon(asid, top_page)?;
    let args_at = STACK_TOP - 512;
    if args.len() as u64 > STACK_TOP - args_at {
        // A program name and arguments longer than the 512 bytes kept for
        // them (the command line bounds the arguments, not the name).
        return Err(AsError::BadRange);
    }
    // SAFETY: `pa` is the stack's top frame, just mapped as above; the
    // arguments fit between `args_at` and the page's end (checked).
    unsafe { MmState::write_frame(pa, args_at - top_page, args.as_bytes()) };
    // As after a call: RSP + 8 is 16-byte aligned at the entry point.
    Ok(args_at - 64 - 8)
}
