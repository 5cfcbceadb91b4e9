//! A global allocator that keeps freed large blocks for reuse.
//!
//! A training step allocates and frees the same large buffers (activations, gradients, column
//! tiles) every step. The system allocator returns blocks over a few MiB to the kernel and maps
//! fresh ones next time, so every step pays a page fault per 4 KiB of every buffer: about 0.2 s
//! per 400 MB measured here, against 0.05 s to write the same memory once mapped. This
//! allocator rounds large sizes to a size class and parks freed blocks in a small cache,
//! bounded in bytes, from which the next request of that class is served.
//!
//! Binaries opt in: `#[global_allocator] static A: seg_alloc::CachingAlloc = seg_alloc::CachingAlloc::new();`
//! (`seg-adapt`, the benchmarks and the examples do). `SEG_ALLOC_CACHE_MB` sets the bound
//! (default 1024; 0 turns caching off).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks from this size up are cached.
const LARGE: usize = 1 << 20;
/// Cache slots. A VGG16-FCN8s step frees more than 64 large blocks between reuses: with 64
/// slots about 21 000 pages a step were faulted in afresh, with 256 next to none.
const SLOTS: usize = 256;
const ALIGN: usize = 64;
const UNSET: usize = usize::MAX;

/// Size class: `size` rounded up to an eighth of the power of two below it (at most 12.5%
/// slack). Requires `size > 0`.
fn class(size: usize) -> usize {
    let floor = 1usize << (usize::BITS - 1 - size.leading_zeros());
    let step = (floor / 8).max(4096);
    size.div_ceil(step) * step
}

struct Cache {
    /// (address, class size); address 0 marks a free slot.
    slots: [(usize, usize); SLOTS],
    bytes: usize,
}

/// See the module documentation.
pub struct CachingAlloc {
    cache: Mutex<Cache>,
    limit: AtomicUsize,
}

impl Default for CachingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl CachingAlloc {
    pub const fn new() -> Self {
        Self {
            cache: Mutex::new(Cache {
                slots: [(0, 0); SLOTS],
                bytes: 0,
            }),
            limit: AtomicUsize::new(UNSET),
        }
    }

    /// The cache bound in bytes, read once from `SEG_ALLOC_CACHE_MB`. Reading the environment
    /// allocates, below [`LARGE`], so it never re-enters the cached path.
    fn limit(&self) -> usize {
        let l = self.limit.load(Ordering::Relaxed);
        if l != UNSET {
            return l;
        }
        let mb = std::env::var("SEG_ALLOC_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1024);
        let l = mb.saturating_mul(1 << 20).min(UNSET - 1);
        self.limit.store(l, Ordering::Relaxed);
        l
    }

    fn layout(layout: Layout) -> Option<Layout> {
        if layout.size() < LARGE || layout.align() > ALIGN {
            return None;
        }
        Layout::from_size_align(class(layout.size()), ALIGN).ok()
    }

    fn take(&self, size: usize) -> Option<*mut u8> {
        let mut c = self.cache.lock().ok()?;
        let slot = c.slots.iter().position(|&(a, s)| a != 0 && s == size)?;
        let (addr, _) = std::mem::take(&mut c.slots[slot]);
        c.bytes -= size;
        Some(addr as *mut u8)
    }

    /// Parks a block; false when the cache is full (the caller frees it).
    fn park(&self, ptr: *mut u8, size: usize) -> bool {
        let limit = self.limit();
        let Ok(mut c) = self.cache.lock() else { return false };
        if c.bytes + size > limit {
            return false;
        }
        match c.slots.iter().position(|&(a, _)| a == 0) {
            Some(i) => {
                c.slots[i] = (ptr as usize, size);
                c.bytes += size;
                true
            }
            None => false,
        }
    }
}

// SAFETY: every block handed out is either fresh from `System` with the class layout, or a
// block of exactly that class layout that was freed to us and not handed out since; blocks are
// returned to `System` with the layout they were allocated with.
unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::layout(layout) {
            Some(l) => match self.take(l.size()) {
                Some(p) => p,
                // SAFETY: `l` has non-zero size.
                None => unsafe { System.alloc(l) },
            },
            // SAFETY: forwarded as is.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::layout(layout) {
            Some(l) => match self.take(l.size()) {
                Some(p) => {
                    // SAFETY: the cached block holds at least `layout.size()` bytes.
                    unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                    p
                }
                // SAFETY: `l` has non-zero size; fresh pages come zeroed.
                None => unsafe { System.alloc_zeroed(l) },
            },
            // SAFETY: forwarded as is.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::layout(layout) {
            Some(l) => {
                if !self.park(ptr, l.size()) {
                    // SAFETY: allocated by `System` with `l` (see `alloc`).
                    unsafe { System.dealloc(ptr, l) }
                }
            }
            // SAFETY: forwarded as is.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_the_size_with_bounded_slack() {
        for size in [LARGE, LARGE + 1, 3 << 20, 100_000_007, 1 << 30] {
            let c = class(size);
            assert!(c >= size && c - size <= size / 8 + 4096, "{size} -> {c}");
            assert_eq!(class(c), c, "classes are fixed points");
        }
    }

    #[test]
    fn freed_blocks_are_reused_and_zeroed_on_request() {
        let a = CachingAlloc::new();
        a.limit.store(64 << 20, Ordering::Relaxed);
        let l = Layout::from_size_align(3 << 20, 8).unwrap();
        // SAFETY: the layout is non-zero; each block is written within its size and freed once.
        unsafe {
            let p = a.alloc(l);
            p.write_bytes(7, l.size());
            a.dealloc(p, l);
            let q = a.alloc_zeroed(l);
            assert_eq!(p, q, "the parked block comes back");
            assert!(std::slice::from_raw_parts(q, l.size()).iter().all(|&b| b == 0));
            a.dealloc(q, l);
            // Over the bound: freed for real, nothing parked.
            a.limit.store(1 << 20, Ordering::Relaxed);
            let big = Layout::from_size_align(8 << 20, 8).unwrap();
            let r = a.alloc(big);
            a.dealloc(r, big);
            assert_eq!(a.cache.lock().unwrap().bytes, class(3 << 20));
        }
    }
}
