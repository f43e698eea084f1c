//! A spin lock that also keeps interrupts off while held, so an interrupt
//! handler on the same CPU can never spin on a lock its own CPU holds; and
//! [`Published`], a value set once and read for ever after without a lock.
//!
//! These primitives are this module's job, so it holds their unsafe code,
//! each block with its reason. A lock must never be held across a context
//! switch.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use alloc::boxed::Box;

use crate::arch::cpu;

pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out one guard at a time, so `T` is only ever
// reached from one CPU at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> SpinGuard<'_, T> {
        self.lock_answering(|| {})
    }

    /// Like [`Self::lock`], calling `poll` while it waits: a CPU spinning
    /// here has interrupts off, so requests it must answer (a TLB
    /// shootdown from the lock's holder) are polled instead.
    pub fn lock_answering(&self, poll: impl Fn()) -> SpinGuard<'_, T> {
        let irq = cpu::interrupts_off();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                poll();
                core::hint::spin_loop();
            }
        }
        SpinGuard { lock: self, irq }
    }

    /// Takes the lock if it is free (for the panic path, which must not
    /// wait on a lock its own CPU may hold).
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        let irq = cpu::interrupts_off();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            Some(SpinGuard { lock: self, irq })
        } else {
            if irq {
                cpu::interrupts_on();
            }
            None
        }
    }
}

pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    irq: bool,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, and `&mut self` that
        // this is the only reference.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        if self.irq {
            cpu::interrupts_on();
        }
    }
}

/// A value published once (leaked, never freed) and read by every CPU
/// after, with one acquire load and no lock.
pub struct Published<T> {
    ptr: AtomicPtr<T>,
}

impl<T: Send + Sync> Published<T> {
    pub const fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Publishes `value` (once: a later call leaks the earlier value, which
    /// readers may still hold).
    pub fn publish(&self, value: Box<T>) {
        self.ptr.store(Box::into_raw(value), Ordering::Release);
    }

    /// The published value, if any.
    #[inline]
    pub fn get(&self) -> Option<&'static T> {
        // SAFETY: the pointer is null or a leaked `Box` (never freed), and
        // the release store in `publish` orders its contents before it.
        unsafe { self.ptr.load(Ordering::Acquire).as_ref() }
    }
}
