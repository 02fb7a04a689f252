//! The memory of one QuickJS runtime: the C allocator, with a limit we enforce ourselves.
//!
//! This module owns the accounting of a runtime's memory and nothing else. QuickJS has a limit
//! of its own, but when it is hit a rule may see anything from an `InternalError` to a bare
//! `null` exception (when even the error object cannot be allocated). Enforcing the limit here
//! tells us for certain that an evaluation failed for lack of memory, and how much memory a
//! runtime still holds afterwards.

use std::cell::Cell;
use std::rc::Rc;

use rquickjs::allocator::Allocator;

/// Shared between the allocator (inside the runtime) and the thread's sandbox.
#[derive(Debug, Default)]
pub(super) struct Budget {
    /// Bytes the runtime may hold; 0 means no limit.
    limit: Cell<usize>,
    /// Bytes the runtime holds now (usable sizes of its live allocations).
    used: Cell<usize>,
    /// Whether an allocation was refused since [`Budget::reset_exhausted`].
    exhausted: Cell<bool>,
}

impl Budget {
    pub(super) fn set_limit(&self, limit: usize) {
        self.limit.set(limit);
    }

    pub(super) fn used(&self) -> usize {
        self.used.get()
    }

    pub(super) fn exhausted(&self) -> bool {
        self.exhausted.get()
    }

    pub(super) fn reset_exhausted(&self) {
        self.exhausted.set(false);
    }

    /// Whether `extra` more bytes fit; records a refusal.
    fn admit(&self, extra: usize) -> bool {
        let limit = self.limit.get();
        let fits = limit == 0 || self.used.get().saturating_add(extra) <= limit;
        if !fits {
            self.exhausted.set(true);
        }
        fits
    }

    fn add(&self, bytes: usize) {
        self.used.set(self.used.get().saturating_add(bytes));
    }

    fn remove(&self, bytes: usize) {
        self.used.set(self.used.get().saturating_sub(bytes));
    }
}

/// `malloc` and friends with [`Budget`] accounting. Returning null makes QuickJS throw its
/// out-of-memory error, which the evaluation reports as a failure (a deny).
#[derive(Debug)]
pub(super) struct LimitedAllocator {
    budget: Rc<Budget>,
}

impl LimitedAllocator {
    pub(super) fn new(budget: Rc<Budget>) -> Self {
        Self { budget }
    }
}

fn usable(ptr: *mut u8) -> usize {
    // SAFETY: only called on non-null pointers returned by malloc/calloc/realloc below and not
    // yet freed.
    unsafe { libc::malloc_usable_size(ptr.cast()) }
}

// SAFETY: every pointer comes from the C allocator (which aligns for any fundamental type, so
// at least to `usize`), is at least the requested size, and is freed/reallocated only by it.
unsafe impl Allocator for LimitedAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.budget.admit(size) {
            return std::ptr::null_mut();
        }
        // SAFETY: plain malloc; a zero size still yields a unique pointer or null.
        let ptr: *mut u8 = unsafe { libc::malloc(size.max(1)) }.cast();
        if !ptr.is_null() {
            self.budget.add(usable(ptr));
        }
        ptr
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else {
            return std::ptr::null_mut();
        };
        if !self.budget.admit(total) {
            return std::ptr::null_mut();
        }
        // SAFETY: plain calloc with an overflow-checked size.
        let ptr: *mut u8 = unsafe { libc::calloc(count.max(1), size.max(1)) }.cast();
        if !ptr.is_null() {
            self.budget.add(usable(ptr));
        }
        ptr
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        self.budget.remove(usable(ptr));
        // SAFETY: the caller passes a live pointer from this allocator.
        unsafe { libc::free(ptr.cast()) };
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if ptr.is_null() {
            return self.alloc(new_size);
        }
        let old = usable(ptr);
        if new_size > old && !self.budget.admit(new_size - old) {
            // The old block stays valid, as with a failed realloc.
            return std::ptr::null_mut();
        }
        // SAFETY: the caller passes a live pointer from this allocator; on failure it stays
        // valid and is still accounted for.
        let moved: *mut u8 = unsafe { libc::realloc(ptr.cast(), new_size.max(1)) }.cast();
        if !moved.is_null() {
            self.budget.remove(old);
            self.budget.add(usable(moved));
        }
        moved
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        usable(ptr)
    }
}
