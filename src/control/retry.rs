//! [`Retry`]: which outcomes a call tries again, how often, and how long it waits in between.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{erase, Classifier, Classify};
use crate::error::JobError;
use crate::limits::{DEFAULT_RETRY_BASE, DEFAULT_RETRY_CAP};

/// A retry policy for [`AsyncProgram::retry`](crate::AsyncProgram::retry): up to `attempts`
/// runs of a call, with exponential backoff, jitter and a cap between them.
///
/// * **What is retried:** an output for which [`retry_if`](Self::retry_if) says true, and a
///   panic if [`retry_panics`](Self::retry_panics) is set. Nothing else: a call that timed out,
///   was cancelled or met a shut-down pool ends there.
/// * **Backoff:** before retry `k` (1 for the second attempt) the call waits
///   `min(cap, base × 2^(k-1))`; with jitter (the default) a uniformly random time between half
///   of that and all of it, so that callers that failed together do not retry together. The
///   wait holds no worker: the call waits on the pool's timer, outside the pool.
/// * **Deadline:** with [`timeout`](crate::AsyncProgram::timeout), the deadline bounds the
///   whole call; a retry whose backoff would end past it is not made, and the call ends with
///   the last attempt's outcome.
///
/// `O` is the program's output type. The defaults: base 100 ms, cap 10 s, jitter on.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
/// use std::time::Duration;
/// use asyncify_pool::{Retry, WorkerPool};
///
/// let pool = WorkerPool::new(1);
/// let calls = AtomicU32::new(0);
/// // A flaky backend: the first two calls answer 503.
/// let fetch = pool
///     .asyncify(move |_: ()| if calls.fetch_add(1, SeqCst) < 2 { 503 } else { 200 })
///     .retry(Retry::new(5).backoff(Duration::from_millis(1), Duration::from_millis(10)).retry_if(|s: &u16| *s == 503));
/// assert_eq!(fetch.call(()).wait(), Ok(200));
/// assert_eq!(fetch.stats().attempts, 3);
/// ```
pub struct Retry<O> {
    attempts: u32,
    base: Duration,
    cap: Duration,
    jitter: bool,
    panics: bool,
    retry_if: Option<Classify<O>>,
}

impl<O> Retry<O> {
    /// At most `attempts` runs in all (the first one included). 0 and 1 both mean one run: no
    /// retry.
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = asyncify_pool::Retry::<u16>::new(3);
    /// assert_eq!(policy.attempts(), 3);
    /// ```
    pub fn new(attempts: u32) -> Self {
        Retry {
            attempts: attempts.max(1),
            base: DEFAULT_RETRY_BASE,
            cap: DEFAULT_RETRY_CAP,
            jitter: true,
            panics: false,
            retry_if: None,
        }
    }

    /// The most runs a call makes.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(asyncify_pool::Retry::<()>::new(0).attempts(), 1);
    /// ```
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The first backoff (`base`) and the longest (`cap`). `Duration::ZERO` for both retries at
    /// once; `Duration::MAX` is fine (the backoff saturates at `cap`). A backoff longer than an
    /// `Instant` can hold waits for ever, holding no worker: until the call is dropped or
    /// aborted, or its pool shuts down (which answers it with its last output); a detached
    /// call, which nobody can drop, keeps its input until an `AbortHandle` or the shutdown
    /// ends it. With a deadline, a backoff that would end past it is not made: the last output
    /// is the answer.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = asyncify_pool::Retry::<u16>::new(4)
    ///     .backoff(Duration::from_millis(200), Duration::from_secs(5));
    /// # let _ = policy;
    /// ```
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap;
        self
    }

    /// Whether each backoff is randomised (between half of it and all of it). On by default.
    ///
    /// # Examples
    ///
    /// ```
    /// let exact = asyncify_pool::Retry::<u16>::new(2).jitter(false);
    /// # let _ = exact;
    /// ```
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Whether a panicking run is retried (off by default: a panic is usually a bug, not a
    /// transient failure). The last panic is what the caller gets if every attempt panics.
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = asyncify_pool::Retry::<u16>::new(3).retry_panics(true);
    /// # let _ = policy;
    /// ```
    pub fn retry_panics(mut self, on: bool) -> Self {
        self.panics = on;
        self
    }

    /// Retries a run whose output `classify` says is worth another try (a 429 or a 503, an
    /// `Err` of a transient kind). It runs on the thread that finished the run, once per run;
    /// if it panics, the output is not retried.
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = asyncify_pool::Retry::new(3)
    ///     .retry_if(|r: &Result<String, std::io::Error>| r.is_err());
    /// # let _ = policy;
    /// ```
    pub fn retry_if(mut self, classify: impl Fn(&O) -> bool + Send + Sync + 'static) -> Self {
        self.retry_if = Some(Arc::new(classify));
        self
    }
}

impl<O> Clone for Retry<O> {
    fn clone(&self) -> Self {
        Retry {
            retry_if: self.retry_if.clone(),
            ..*self
        }
    }
}

impl<O> fmt::Debug for Retry<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("attempts", &self.attempts)
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("jitter", &self.jitter)
            .field("retry_panics", &self.panics)
            .field("retry_if", &self.retry_if.is_some())
            .finish()
    }
}

/// Clones an input given as `&dyn Any` into a `&mut Option<I>` given as `&mut dyn Any`; does
/// nothing if they are not of the type the policy was set for.
type CloneInput = dyn Fn(&dyn Any, &mut dyn Any) + Send + Sync;

/// A [`Retry`] as a program keeps it, with its types erased (a program's options do not name
/// its input or output types), and how to copy an input for another attempt.
#[derive(Clone)]
pub(crate) struct Policy {
    attempts: u32,
    base: Duration,
    cap: Duration,
    jitter: bool,
    panics: bool,
    retry_if: Option<Classifier>,
    clone_input: Arc<CloneInput>,
}

impl Policy {
    pub(crate) fn new<I, O>(retry: Retry<O>) -> Self
    where
        I: Clone + Send + 'static,
        O: 'static,
    {
        let retry_if = retry.retry_if.map(erase);
        Policy {
            attempts: retry.attempts,
            base: retry.base,
            cap: retry.cap,
            jitter: retry.jitter,
            panics: retry.panics,
            retry_if,
            clone_input: Arc::new(|input: &dyn Any, copy: &mut dyn Any| {
                if let (Some(input), Some(copy)) =
                    (input.downcast_ref::<I>(), copy.downcast_mut::<Option<I>>())
                {
                    *copy = Some(input.clone());
                }
            }),
        }
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// A copy of `input` for another attempt: `None` if this policy was set for another input
    /// type (no retries then), `Some(Err)` with the message if `Clone` panicked.
    pub(crate) fn copy<I: 'static>(&self, input: &I) -> Option<Result<I, String>> {
        let mut copy: Option<I> = None;
        match crate::guard::call(|| (self.clone_input)(input, &mut copy)) {
            Ok(()) => copy.map(Ok),
            Err(message) => Some(Err(message)),
        }
    }

    /// True if the policy retries panics (an attempt that may want another must then catch
    /// its program's panic: see `control::start`).
    pub(crate) fn retries_panics(&self) -> bool {
        self.panics
    }

    /// Whether an attempt whose program returned `out` is worth another one (runs the
    /// classifier: user code, so never under a lock).
    pub(crate) fn retries_output<O: 'static>(&self, out: &O) -> bool {
        self.retry_if.as_ref().is_some_and(|classify| {
            crate::guard::call(|| classify(out as &dyn Any)).unwrap_or(false)
        })
    }

    /// Whether an attempt that ended with `outcome` is worth another one. Runs the classifier
    /// (user code), so never under a lock.
    pub(crate) fn wants_another<O: 'static>(&self, outcome: &Result<O, JobError>) -> bool {
        match outcome {
            Ok(out) => self.retries_output(out),
            Err(e) => self.panics && e.is_panic(),
        }
    }

    /// The wait before retry `retry` (1 for the second attempt).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let doubling = 2u32
            .checked_pow(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let full = self
            .base
            .checked_mul(doubling)
            .unwrap_or(Duration::MAX)
            .min(self.cap);
        if self.jitter {
            let half = full / 2;
            half + (full - half).mul_f64(random_fraction())
        } else {
            full
        }
    }
}

thread_local! {
    /// A xorshift state per thread for jitter: no shared state, no dependency.
    static RANDOM: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // The standard library's per-process random keys, mixed with this thread's address.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(&h as *const _ as usize);
    h.finish() | 1
}

/// A uniformly distributed number in [0, 1).
fn random_fraction() -> f64 {
    // `try_with`: in a thread-local's destructor, a fresh seed's first step.
    let x = RANDOM
        .try_with(|r| {
            let x = xorshift(r.get());
            r.set(x);
            x
        })
        .unwrap_or_else(|_| xorshift(seed()));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn policy(base_ms: u64, cap_ms: u64, jitter: bool) -> Policy {
        Policy::new::<u8, u8>(
            Retry::new(10)
                .backoff(
                    Duration::from_millis(base_ms),
                    Duration::from_millis(cap_ms),
                )
                .jitter(jitter),
        )
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy(100, 1_000, false);
        let waits: Vec<u128> = (1..=6).map(|k| p.backoff(k).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let p = policy(100, 10_000, true);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let d = p.backoff(3);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
            seen.insert(d.as_millis());
        }
        assert!(
            seen.len() > 50,
            "jitter spreads the waits: {} distinct",
            seen.len()
        );
    }

    #[test]
    fn extreme_backoffs_saturate() {
        let p = Policy::new::<u8, u8>(Retry::new(u32::MAX).backoff(Duration::MAX, Duration::MAX));
        assert!(p.backoff(u32::MAX) >= Duration::MAX / 2);
        let p = policy(0, 0, true);
        assert_eq!(p.backoff(1), Duration::ZERO);
        assert_eq!(Retry::<u8>::new(0).attempts(), 1);
    }

    #[test]
    fn classifier_and_copies() {
        let p = Policy::new::<String, u16>(Retry::new(3).retry_if(|s: &u16| *s == 429));
        assert!(p.wants_another(&Ok::<u16, JobError>(429)));
        assert!(!p.wants_another(&Ok::<u16, JobError>(200)));
        assert!(!p.wants_another(&Err::<u16, _>(JobError::panicked("x".into()))));
        assert!(
            !p.wants_another(&Ok::<u32, JobError>(429)),
            "another output type"
        );
        assert_eq!(p.copy(&"in".to_owned()), Some(Ok("in".to_owned())));
        assert_eq!(p.copy(&5u8), None, "another input type");
    }
}
