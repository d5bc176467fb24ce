//! Helpers shared by the behaviour tests: gates and gauges that synchronise without timing
//! assumptions, and a bound that turns a hang into a failure.
//!
//! Every wait here is bounded by [`HANG`] only so that a bug shows up as a failing test instead
//! of a stuck `cargo test`; a passing run never gets near it.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use asyncify_pool::{JobError, JobHandle, WorkerPool};

/// The one bound on every wait in the tests. It only turns a hang into a failure (instead of a
/// stuck `cargo test`); it is no timing assertion, and a passing run never gets near it.
pub const HANG: Duration = Duration::from_secs(60);

/// Waits for `handle` from a thread that is *not* a worker of its pool (`wait_timeout` does not
/// run other jobs while it waits; inside a job use `wait`).
pub fn wait<T>(mut handle: JobHandle<T>) -> Result<T, JobError> {
    handle.wait_timeout(HANG).expect("a job hung")
}

/// Locks `m`, also after a panic poisoned it (a failing test must not hide behind a second
/// failure).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` until `done` holds or [`HANG`] has passed; returns the guard and whether
/// `done` holds.
fn wait_within<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    mut done: impl FnMut(&T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    let deadline = Instant::now() + HANG;
    while !done(&guard) {
        let now = Instant::now();
        if now >= deadline {
            return (guard, false);
        }
        guard = cv
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    (guard, true)
}

/// Waits on `cv` until `done` holds, panicking after [`HANG`].
fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    what: &str,
    done: impl FnMut(&T) -> bool,
) -> MutexGuard<'a, T> {
    let (guard, done) = wait_within(cv, guard, done);
    assert!(done, "hung waiting for {what}");
    guard
}

/// Spins, yielding, until `done()`; panics after [`HANG`] (for conditions no condvar signals).
pub fn spin_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !done() {
        assert!(Instant::now() < deadline, "hung waiting for {what}");
        std::thread::yield_now();
    }
}

/// The environment variable `name` parsed as a `T`, or `default` when it is unset or does not
/// parse (for scaling a test from the command line).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The panics these tests provoke on purpose (messages starting with "planned", a `u32`
/// payload, or a [`PanicOnDrop`] or [`PoisonPayload`] payload) are noise in the output; every
/// other panic is still printed. Give a planned panic a message starting with "planned".
pub fn quiet_planned_panics() {
    quiet_planned_panics_and(|_| false);
}

/// Like [`quiet_planned_panics`], also quieting payloads `also_planned` accepts. The first call
/// in a test binary installs the hook; later calls change nothing.
pub fn quiet_planned_panics_and(also_planned: fn(&(dyn std::any::Any + Send)) -> bool) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let planned = payload.is::<u32>()
                || payload.is::<PoisonPayload>()
                || payload.is::<PanicOnDrop>()
                || also_planned(payload)
                || payload
                    .downcast_ref::<&str>()
                    .is_some_and(|m| m.starts_with("planned"))
                || payload
                    .downcast_ref::<String>()
                    .is_some_and(|m| m.starts_with("planned"));
            if !planned {
                default(info);
            }
        }));
    });
}

/// Closed until [`open`](Self::open)ed, then lets everyone through.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn open(&self) {
        *lock(&self.open) = true;
        self.cv.notify_all();
    }

    pub fn wait(&self) {
        drop(wait_until(&self.cv, lock(&self.open), "a gate", |open| {
            *open
        }));
    }
}

/// A barrier of `n` that panics after [`HANG`] instead of waiting forever, so a worker stuck in
/// it does not outlive the failing test. Reusable: generation by generation.
pub struct Barrier {
    n: usize,
    state: Mutex<(usize, u64)>,
    cv: Condvar,
}

impl Barrier {
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Barrier {
            n,
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
        })
    }

    pub fn wait(&self) {
        assert!(
            self.try_wait(),
            "hung waiting for {} threads at a barrier",
            self.n
        );
    }

    /// Like [`wait`](Self::wait), but after [`HANG`] gives up and returns `false` instead of
    /// panicking (for a test that reports the failure itself).
    pub fn try_wait(&self) -> bool {
        let mut state = lock(&self.state);
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.n {
            *state = (0, generation + 1);
            self.cv.notify_all();
            return true;
        }
        let (mut state, met) = wait_within(&self.cv, state, |s| s.1 != generation);
        if !met {
            state.0 -= 1; // this one left: a late arrival does not complete the generation
        }
        met
    }
}

/// What a [`Gauge`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GaugeState {
    /// Jobs inside now.
    pub current: usize,
    /// The most that were inside at once.
    pub max: usize,
    /// Jobs that have entered, ever.
    pub entered: usize,
    /// Jobs that have left, ever.
    pub left: usize,
    /// Passes handed out by [`Gauge::release`] and not yet used.
    tokens: usize,
}

/// A concurrency gauge: jobs [`hold`](Self::hold) inside it until the test releases them one by
/// one, so the test knows exactly how many run at once without any timing assumption.
#[derive(Default)]
pub struct Gauge {
    state: Mutex<GaugeState>,
    cv: Condvar,
}

impl Gauge {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Enters, and returns how many are inside now (this one included).
    pub fn enter(&self) -> usize {
        let mut s = lock(&self.state);
        s.current += 1;
        s.entered += 1;
        s.max = s.max.max(s.current);
        let now = s.current;
        drop(s);
        self.cv.notify_all();
        now
    }

    pub fn leave(&self) {
        let mut s = lock(&self.state);
        s.current -= 1;
        s.left += 1;
        drop(s);
        self.cv.notify_all();
    }

    /// Enters, waits for a pass from [`release`](Self::release), leaves. Returns how many were
    /// inside when this one entered.
    pub fn hold(&self) -> usize {
        let now = self.enter();
        let mut s = wait_until(&self.cv, lock(&self.state), "a gauge pass", |s| {
            s.tokens > 0
        });
        s.tokens -= 1;
        drop(s);
        self.leave();
        now
    }

    /// Hands out `n` passes.
    pub fn release(&self, n: usize) {
        lock(&self.state).tokens += n;
        self.cv.notify_all();
    }

    pub fn state(&self) -> GaugeState {
        *lock(&self.state)
    }

    /// Waits until `done` holds for the gauge's state.
    pub fn wait_for(&self, what: &str, done: impl FnMut(&GaugeState) -> bool) -> GaugeState {
        *wait_until(&self.cv, lock(&self.state), what, done)
    }

    /// Lets `jobs` holding jobs through one at a time, each time only once exactly
    /// `min(limit, still to come)` of them are inside: so every job is shown to run together
    /// with `limit - 1` others, and [`GaugeState::max`] records any job beyond `limit`.
    pub fn drive(&self, jobs: usize, limit: usize) {
        for i in 0..jobs {
            let expected = limit.min(jobs - i);
            let what = format!("{expected} jobs inside at once (after {i} left)");
            self.wait_for(&what, |s| s.left == i && s.current >= expected);
            self.release(1);
        }
        self.wait_for("every job to leave", |s| s.left == jobs);
    }
}

// ---------------------------------------------------------------------------------------------
// Pool scenarios that several test files set up the same way.

/// Blocks `workers` idle workers of `pool` until the returned gate opens, and returns once all
/// of them are blocked. The jobs are spawned one at a time, each once the one before it has
/// started, so that each has left the queue before the next comes (which matters for a bounded
/// queue).
pub fn occupy(pool: &WorkerPool, workers: usize) -> (Arc<Gate>, Vec<JobHandle<()>>) {
    let gate = Gate::new();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let handles = (0..workers)
        .map(|i| {
            let (gate, started) = (Arc::clone(&gate), started_tx.clone());
            let handle = pool.spawn(move || {
                started.send(()).unwrap();
                gate.wait();
            });
            started_rx.recv_timeout(HANG).unwrap_or_else(|_| {
                panic!("only {i} of {workers} blockers started: no worker took the job")
            });
            handle
        })
        .collect();
    (gate, handles)
}

/// Nests `levels` jobs on `pool`, each spawned and waited on (`wait`, so the waiting worker
/// helps) from inside the one before it; returns `levels`.
pub fn depth(pool: WorkerPool, levels: u32) -> u32 {
    if levels == 0 {
        return 0;
    }
    let inner = pool.clone();
    pool.spawn(move || depth(inner, levels - 1)).wait().unwrap() + 1
}

/// Runs one job on every worker of `pool` at once: each runs `probe`, then meets the others at a
/// [`Barrier`], so no worker runs two and each has finished whatever it ran before. Returns, per
/// job, what `probe` saw and whether all the jobs met within [`HANG`].
pub fn probe_every_worker<T: Send + 'static>(
    pool: &WorkerPool,
    probe: fn() -> T,
) -> Vec<(T, bool)> {
    let barrier = Barrier::new(pool.threads());
    let probes: Vec<_> = (0..pool.threads())
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            pool.spawn(move || {
                let seen = probe();
                (seen, barrier.try_wait())
            })
        })
        .collect();
    probes
        .into_iter()
        .map(|mut h| {
            // Twice the barrier's own bound, so that a probe that gave up at the barrier is
            // reported as not met rather than as hung.
            h.wait_timeout(HANG * 2)
                .expect("a probe job hung")
                .expect("a probe job failed")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Child processes, for scenarios that may abort the process (a stack overflow) or hang forever.

/// Runs `scenario` in a child process, so that an abort or a hang fails this test instead of
/// killing or stalling the suite.
///
/// The test calls `in_child("<its own exact test name>", || ...)`. In the parent this re-runs
/// the test binary on that one test with `ASYNCIFY_CHILD=<name>`; there the call runs
/// `scenario` and returns. The child is killed after [`HANG`]. The parent panics with the tail
/// of the child's output unless the child ran exactly that test and it passed.
pub fn in_child(name: &str, scenario: impl FnOnce()) {
    if std::env::var_os("ASYNCIFY_CHILD").is_some_and(|v| v == name) {
        scenario();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("ASYNCIFY_CHILD", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child process");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + HANG;
    let status = loop {
        match child.try_wait().expect("poll the child process") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let ran_it = stdout.contains("test result: ok. 1 passed");
    let what = match status {
        None => format!("timed out after {HANG:?} (a hang) and was killed"),
        Some(s) if s.success() && ran_it => return,
        Some(s) if s.success() => "ran no test of that exact name".to_owned(),
        Some(s) => describe_exit(s),
    };
    panic!(
        "child process for `{name}` {what}\n--- child panics ---\n{}\n--- child stderr (tail) ---\n{}\n--- child stdout (tail) ---\n{}",
        panics(&stderr),
        tail(&stderr, 20),
        tail(&stdout, 10),
    );
}

/// The child's panic messages (each "panicked at" line and the message lines after it, before
/// any backtrace), so they are not lost in the tail behind a backtrace.
fn panics(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.contains("panicked at") || line.contains("overflowed its stack") {
            out.push(line);
            out.extend(
                lines
                    .by_ref()
                    .take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note:"))
                    .take(6),
            );
            if out.len() > 60 {
                break;
            }
        }
    }
    out.join("\n")
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                6 => "SIGABRT (e.g. a stack overflow, or a panic while panicking)",
                7 => "SIGBUS",
                9 => "SIGKILL",
                11 => "SIGSEGV (e.g. a stack overflow)",
                _ => "a signal",
            };
            return format!("was killed by signal {signal}: {name}");
        }
    }
    format!("failed ({status})")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Hostile user code: wakers and values that misbehave.

/// A waker that counts its wake-ups.
pub struct CountingWaker {
    count: AtomicUsize,
}

impl CountingWaker {
    pub fn new() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker {
            count: AtomicUsize::new(0),
        });
        let waker = Waker::from(Arc::clone(&counter));
        (counter, waker)
    }

    pub fn count(&self) -> usize {
        self.count.load(SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.count.fetch_add(1, SeqCst);
    }
}

struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("planned: a waker that panics when woken");
    }
    fn wake_by_ref(self: &Arc<Self>) {
        panic!("planned: a waker that panics when woken (by ref)");
    }
}

/// A waker whose `wake` and `wake_by_ref` panic (with a "planned" message).
pub fn panicking_waker() -> Waker {
    Waker::from(Arc::new(PanickingWaker))
}

/// Counts its own drops, wherever they happen (to see whether and where a value was dropped).
#[derive(Debug)]
pub struct Tracked(pub Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// A pool of `threads` threads whose queue holds at most `capacity` jobs.
pub fn bounded_pool(threads: usize, capacity: usize) -> WorkerPool {
    WorkerPool::builder()
        .threads(threads)
        .queue_capacity(capacity)
        .build()
        .expect("a bounded pool")
}

/// A pool of one thread with a 1 MiB stack: deep nested waits there reach half of it soon and
/// go to spare threads.
pub fn one_thread_with_a_1m_stack() -> WorkerPool {
    WorkerPool::builder()
        .threads(1)
        .stack_size(1 << 20)
        .build()
        .expect("a one-thread pool")
}

/// A value whose destructor panics (with a "planned" message), unless already panicking.
#[derive(Debug)]
pub struct PanicOnDrop(pub &'static str);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("planned: drop of {}", self.0);
        }
    }
}

/// A panic payload whose own destructor panics: whoever catches a panic carrying it and drops
/// the payload gets a second panic, `"planned: payload drop"`.
#[derive(Debug)]
pub struct PoisonPayload;

impl Drop for PoisonPayload {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("planned: payload drop");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// After an attack: is the pool whole?

/// Runs one job per worker, all of which must be inside at once (a [`Barrier`] of `threads`),
/// so every worker is alive and holds a permit it can use. Each job is spawned once the one
/// before it has started, so that none waits for room in a bounded queue.
pub fn assert_every_worker_runs(pool: &WorkerPool, threads: usize) {
    let barrier = Barrier::new(threads);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (barrier, started) = (Arc::clone(&barrier), started_tx.clone());
            let handle = pool.spawn(move || {
                let _ = started.send(());
                barrier.wait();
                std::thread::current().id()
            });
            started_rx.recv_timeout(HANG).unwrap_or_else(|_| {
                panic!("only {i} of {threads} workers took a job: a worker or a permit is gone")
            });
            handle
        })
        .collect();
    let mut ids: Vec<_> = handles
        .into_iter()
        .map(|mut h| {
            h.wait_timeout(HANG * 2)
                .expect("a job on every worker hung: a worker or a permit is gone")
                .expect("a job on every worker failed: a worker or a permit is gone")
        })
        .collect();
    ids.sort_by_key(|id| format!("{id:?}"));
    ids.dedup();
    assert_eq!(
        ids.len(),
        threads,
        "the barrier jobs ran on {} threads",
        ids.len()
    );
}

/// Shuts `pool` down on a helper thread and asserts that `shutdown` returned, without
/// panicking, within [`HANG`].
pub fn assert_shutdown_returns(pool: &WorkerPool) {
    let pool = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.shutdown()));
        let _ = tx.send(outcome.is_ok());
    });
    match rx.recv_timeout(HANG) {
        Ok(true) => {}
        Ok(false) => panic!("shutdown panicked"),
        Err(_) => panic!("shutdown hung: a worker never left the live count"),
    }
}

/// Runs `f` on a helper thread and returns its result, panicking if it takes longer than
/// [`HANG`] (for calls that have no bound of their own: `Batch::wait`, `block_on`, shutdown).
/// A panic in `f` propagates.
pub fn within_hang<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let helper = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(helper.join().expect_err("the helper sent nothing"))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} hung"),
    }
}
