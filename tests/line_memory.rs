//! Memory held by calls that left a line (a rate limiter's, a concurrency limit's) without
//! being let out: it comes back while the line still waits, however long that is.
//!
//! Its own test binary, for the counting allocator (the only `unsafe` of the tests: a global
//! allocator cannot be written without it); its tests take turns, so that each counts only
//! its own allocations.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::Duration;

use asyncify_pool::{RateLimiter, WorkerPool};
use common::{wait, Gate, HANG};

/// The system's allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, SeqCst);
        // SAFETY: the caller's guarantees for `alloc` are `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, SeqCst);
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time: the count is the whole process's.
static TURN: Mutex<()> = Mutex::new(());

/// How much the measured calls may leave allocated: 10,000 calls that each kept their
/// allocation (more than the 1 KiB input inline) would leave ten times as much.
const BOUND: isize = 1 << 20;

/// 10,000 calls that waited for a token of a one-an-hour limit and left the line (half
/// dropped, half timed out) give their memory back: the line does not keep every one until
/// the next token, an hour away.
#[test]
fn calls_that_left_a_rate_line_give_their_memory_back() {
    let _turn = common::lock(&TURN);
    let pool = WorkerPool::new(2);
    let limiter = RateLimiter::new(1, Duration::from_secs(3600));
    let p = pool
        .asyncify(|x: [u8; 1024]| x[0])
        .with_rate_limiter(&limiter);
    let timed = p.timeout(Duration::from_millis(1));
    assert_eq!(wait(p.call([1; 1024])), Ok(1)); // the hour's token
                                                // Warm up: the timer, the line's buffer.
    for _ in 0..100 {
        drop(p.call([2; 1024]));
    }
    assert!(wait(timed.call([3; 1024])).unwrap_err().is_timed_out());
    let before = LIVE.load(SeqCst);
    for _ in 0..5_000 {
        drop(p.call([2; 1024]));
    }
    let handles: Vec<_> = (0..5_000).map(|_| timed.call([3; 1024])).collect();
    for mut h in handles {
        let got = h.wait_timeout(HANG).expect("a call hung");
        assert!(got.unwrap_err().is_timed_out());
    }
    assert_eq!(limiter.waiting(), 0, "every call left the line");
    let grown = LIVE.load(SeqCst) - before;
    assert!(
        grown < BOUND,
        "10,000 calls that left the line still hold {grown} bytes ({} per call)",
        grown / 10_000
    );
}

/// The same for a concurrency limit's line, while its one slot is held by a call that does
/// not return: 10,000 dropped calls give their memory back.
#[test]
fn calls_that_left_a_limit_line_give_their_memory_back() {
    let _turn = common::lock(&TURN);
    let pool = WorkerPool::new(2);
    let gate = Gate::new();
    let g = std::sync::Arc::clone(&gate);
    let p = pool
        .asyncify(move |x: [u8; 1024]| {
            if x[0] == 1 {
                g.wait();
            }
            x[0]
        })
        .concurrency_limit(1);
    let holder = p.call([1; 1024]);
    common::spin_until("the holder runs", || p.stats().in_flight == 1);
    for _ in 0..100 {
        drop(p.call([2; 1024]));
    }
    let before = LIVE.load(SeqCst);
    for _ in 0..10_000 {
        drop(p.call([2; 1024]));
    }
    let grown = LIVE.load(SeqCst) - before;
    gate.open();
    assert_eq!(wait(holder), Ok(1));
    assert!(
        grown < BOUND,
        "10,000 calls that left the line still hold {grown} bytes ({} per call)",
        grown / 10_000
    );
}
