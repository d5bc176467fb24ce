//! What a queued job costs in resident memory, the handle included.
//!
//! One worker is kept busy by a job that blocks, 1,000,000 no-op jobs are queued behind it, and
//! the process's resident set (`/proc/self/statm`) is read before and after. The difference,
//! divided by the number of jobs, is what each queued call holds: its handle (in the caller's
//! `Vec`), its cell (the one allocation per call), and its share of the queue.
//!
//! Run it with `cargo run --release --example memory` (Linux only: it reads `/proc`).

use std::mem::size_of;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::task::Waker;
use std::time::Instant;

use asyncify_pool::{JobError, JobHandle, WorkerPool};

const JOBS: usize = 1_000_000;

#[path = "support/auxv.rs"]
mod support;
use support::auxv;

/// Resident bytes of this process: the second field of `/proc/self/statm`, in pages.
fn resident_bytes() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm's resident field");
    pages * auxv(AT_PAGESZ).unwrap_or(4096)
}

// A mirror of the cell in `src/job.rs` (the types there are private), built from the same
// public pieces, so the compiler lays it out the same way and `size_of` can be printed. `F` is
// the closure: zero-sized for `spawn(|| ())`, `Arc<P>` + the input for `call(input)`.
/// `Captured` is an `Option<Arc<Ctx>>`: one pointer.
type Captured = Option<Arc<()>>;
#[allow(dead_code)]
enum Stage<F, T> {
    Queued(F, Captured),
    Running,
    Done(Result<T, JobError>),
    Closed,
}
/// The waker while the job is pending, the handed-back capture once it ran.
#[allow(dead_code)]
enum Side {
    Waker(Waker),
    Back(Captured),
}
#[allow(dead_code)]
struct Slot<F, T> {
    stage: Stage<F, T>,
    side: Side,
}
#[allow(dead_code)]
struct Cell<F, T> {
    slot: Mutex<Slot<F, T>>,
    cancelled: AtomicBool,
}
type SpawnCell = Cell<(), ()>;
type CallCell = Cell<(Arc<()>, u64), u64>;
/// The queue's message: `Run(Job)` where `Job` is `Option<Arc<dyn Runnable>>`, or a pill.
#[allow(dead_code)]
enum Message {
    Run(Option<Arc<dyn Send + Sync>>),
    Wake,
    Stop,
}

/// glibc's chunk for a request: the request plus an 8-byte header, rounded up to 16, at least 32.
fn malloc_chunk(request: usize) -> usize {
    (request + 8).div_ceil(16).max(2) * 16
}

/// Queues `JOBS` calls made by `call` behind a blocked worker and returns the resident bytes
/// per queued call, after printing what it measured.
fn queue_behind_blocker<T: Send + 'static>(
    label: &str,
    pool: &WorkerPool,
    mut call: impl FnMut(u64) -> JobHandle<T>,
) -> f64 {
    let (release, gate) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let blocker = pool.spawn(move || {
        started_tx.send(()).expect("main is waiting");
        gate.recv().expect("main releases the worker");
    });
    started.recv().expect("the blocker starts");

    // The handles' storage is reserved now but only becomes resident as it is written, so the
    // handles are counted in the difference below.
    let mut handles: Vec<JobHandle<T>> = Vec::with_capacity(JOBS);
    let before = resident_bytes();
    let start = Instant::now();
    for i in 0..JOBS {
        handles.push(call(i as u64));
    }
    let queued_in = start.elapsed();
    let after = resident_bytes();
    let per_job = after.saturating_sub(before) as f64 / JOBS as f64;

    release.send(()).expect("the blocker waits");
    let start = Instant::now();
    blocker.wait().expect("the blocker returns");
    for handle in handles {
        handle.wait().expect("a no-op job");
    }
    let drained_in = start.elapsed();

    println!("{label}: {JOBS} jobs queued behind a blocked worker (pool of 1 thread)");
    println!(
        "  resident before {:.1} MiB, after {:.1} MiB => {per_job:.1} bytes per queued job, \
         handle included",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "  (queued in {:.0} ms, run and collected in {:.0} ms)",
        queued_in.as_secs_f64() * 1e3,
        drained_in.as_secs_f64() * 1e3
    );
    per_job
}

fn main() {
    // Each measurement runs in a fresh process: memory freed by one would be reused by the next.
    match std::env::args().nth(1).as_deref() {
        Some("spawn") => {
            let pool = WorkerPool::new(1);
            queue_behind_blocker("pool.spawn(|| ())", &pool, |_| pool.spawn(|| ()));
            return;
        }
        Some("call") => {
            // The usual call: a program behind an `Arc` and a `u64` input, so the job's
            // closure carries 16 bytes.
            let pool = WorkerPool::new(1);
            let program = pool.asyncify(|x: u64| x);
            queue_behind_blocker("pool.asyncify(|x: u64| x).call(i)", &pool, |i| {
                program.call(i)
            });
            return;
        }
        _ => {}
    }
    let exe = std::env::current_exe().expect("own path");
    for variant in ["spawn", "call"] {
        let status = std::process::Command::new(&exe)
            .arg(variant)
            .status()
            .expect("re-run self");
        assert!(status.success(), "the {variant} measurement failed");
    }

    let handle = size_of::<JobHandle<()>>();
    let cell = size_of::<SpawnCell>();
    let arc_inner = 2 * size_of::<usize>() + cell;
    let message = size_of::<Message>();
    // crossbeam-channel's unbounded (list) flavour: blocks of 31 slots, each the message
    // plus an 8-byte state word, behind a `next` pointer; one block per 31 messages.
    let slot = message + size_of::<usize>();
    let block = size_of::<usize>() + 31 * slot;
    let per_message = malloc_chunk(block) as f64 / 31.0;
    let estimate = handle as f64 + malloc_chunk(arc_inner) as f64 + per_message;

    println!("\nwhere the bytes of `spawn(|| ())` go (sizes on this target; the cell mirrors src/job.rs):");
    println!("  JobHandle<()> in the caller's Vec             {handle:>4} B  (Arc<dyn Completion> 16 + Option<Box<dyn Submit>> 16)");
    println!(
        "  the cell, Arc<Cell<F, T>>: {arc_inner} B = 16 (Arc counts) + {cell} (Cell), a {} B malloc chunk",
        malloc_chunk(arc_inner)
    );
    println!(
        "    Mutex<Slot> {:>3} B: futex + poison flag 8, Slot {} = Stage {} + Side {}",
        size_of::<Mutex<Slot<(), ()>>>(),
        size_of::<Slot<(), ()>>(),
        size_of::<Stage<(), ()>>(),
        size_of::<Side>()
    );
    println!(
        "    Stage {:>3} B: Queued(F, Captured) = F (0 for `|| ()`) + Captured {} (one Arc of the \
         caller's shared context, or none); Done(Result<(), JobError>) {} B",
        size_of::<Stage<(), ()>>(),
        size_of::<Captured>(),
        size_of::<Result<(), JobError>>()
    );
    println!(
        "    Side {:>3} B: the awaiting task's Waker {} while pending, then the Captured the \
         worker hands back (for the caller to release); cancelled flag 1 B (+ padding)",
        size_of::<Side>(),
        size_of::<Waker>()
    );
    println!(
        "  queue slot: Message {message} B + state 8 = {slot} B; a block of 31 is {block} B \
         ({} B chunk) = {per_message:.1} B per job",
        malloc_chunk(block)
    );
    println!(
        "  estimate: {handle} + {} + {per_message:.1} = {estimate:.1} B per job (compare the \
         measured figure above)",
        malloc_chunk(arc_inner)
    );
    let call = 2 * size_of::<usize>() + size_of::<CallCell>();
    println!(
        "  a closure with captures adds them to the cell: `call(u64)` carries Arc<P> 8 + u64 8, \
         so {call} B, a {} B chunk",
        malloc_chunk(call)
    );
}
