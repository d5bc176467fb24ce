//! Helpers shared by the behaviour tests: gates and gauges that synchronise without timing
//! assumptions, and a bound that turns a hang into a failure.
//!
//! Every wait here is bounded by [`HANG`] only so that a bug shows up as a failing test instead
//! of a stuck `cargo test`; a passing run never gets near it.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use asyncify_pool::{JobError, JobHandle};

/// Turns a hang into a failure; never reached by a passing run.
pub const HANG: Duration = Duration::from_secs(30);

/// Waits for `handle` from a thread that is *not* a worker of its pool (`wait_timeout` does not
/// run other jobs while it waits; inside a job use `wait`).
pub fn wait<T>(mut handle: JobHandle<T>) -> Result<T, JobError> {
    handle.wait_timeout(HANG).expect("a job hung")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` until `done` holds, panicking after [`HANG`].
fn wait_until<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    what: &str,
    mut done: impl FnMut(&T) -> bool,
) -> MutexGuard<'a, T> {
    let deadline = Instant::now() + HANG;
    while !done(&guard) {
        let now = Instant::now();
        assert!(now < deadline, "hung waiting for {what}");
        guard = cv
            .wait_timeout(guard, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    guard
}

/// The panics these tests provoke on purpose (messages starting with "planned", or a `u32`
/// payload) are noise in the output; every other panic is still printed.
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
        let mut state = lock(&self.state);
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.n {
            *state = (0, generation + 1);
            self.cv.notify_all();
            return;
        }
        let what = format!("{} threads at a barrier", self.n);
        drop(wait_until(&self.cv, state, &what, |s| s.1 != generation));
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
