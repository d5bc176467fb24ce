//! One timer per pool: every wait for a point in time (a call's deadline, a retry's backoff, a
//! rate limit's next token, a batch's straggler deadline) is an entry here, served by a single
//! thread, not a thread per wait.
//!
//! # Protocol
//!
//! Entries sit in a map ordered by time, each a `Weak` alarm (a wait whose owner is gone rings
//! nothing) with a key to take it out again. The timer thread rings what is due, outside the
//! lock, then sleeps on a condition variable until the earliest entry (or, with none, until
//! told). The thread is started on the pool's first entry, so a pool that never waits for time
//! has none.
//!
//! A new entry wakes the thread only if it is due before the thread would look anyway
//! (`wake_at`). A cancelled entry wakes nothing: the thread finds it gone when it looks. So a
//! steady stream of calls with the same timeout, each finished before its deadline, wakes the
//! timer about once per timeout, not once per call; and a pool with nothing waiting has its
//! timer asleep without a timeout, using no CPU.
//!
//! At the pool's close every entry is told at once ([`Alarm::close`]: each ends its wait, or
//! keeps its entry, as a running call's deadline does); the thread serves the entries kept
//! until none is left, and leaves.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::guard;
use crate::sync::{lock, wait, Condvar, Mutex};

/// What an entry rings: called once, on the timer thread (or, for a pool whose timer thread
/// could not start, on the thread that closes the pool), outside every lock of the timer.
pub(crate) trait Alarm: Send + Sync + 'static {
    /// Its time came.
    fn ring(self: Arc<Self>);
    /// The pool closed before its time: end the wait now, or say `true` to keep the entry
    /// until its time (a running call's deadline still matters after the close).
    fn close(self: Arc<Self>) -> bool {
        self.ring();
        false
    }
}

/// Names an entry, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey(Instant, u64);

impl TimerKey {
    /// When the entry rings.
    pub(crate) fn when(&self) -> Instant {
        self.0
    }

    /// What tells it from other entries for the same time (with [`when`](Self::when), all of
    /// the key: an owner may keep just this, in an atomic).
    pub(crate) fn seq(&self) -> u64 {
        self.1
    }

    /// The key of the entry for `when` with sequence number `seq`.
    pub(crate) fn from_parts(when: Instant, seq: u64) -> Self {
        TimerKey(when, seq)
    }
}

/// The pool is closed: no new entry is taken.
#[derive(Debug)]
pub(crate) struct Closed;

pub(crate) struct Timer {
    shared: Arc<Shared>,
    name: String,
    stack_size: usize,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    entries: BTreeMap<TimerKey, Weak<dyn Alarm>>,
    next_seq: u64,
    /// The thread looks at the entries again by then; `None`: only when notified.
    wake_at: Option<Instant>,
    started: bool,
    closed: bool,
}

impl Timer {
    pub(crate) fn new(name: String, stack_size: usize) -> Self {
        Timer {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    entries: BTreeMap::new(),
                    next_seq: 0,
                    wake_at: None,
                    started: false,
                    closed: false,
                }),
                cv: Condvar::new(),
            }),
            name,
            stack_size,
        }
    }

    /// Rings `alarm` at `when`, or when the pool closes if that is sooner.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the pool is closed: the caller ends its wait itself.
    pub(crate) fn at(&self, when: Instant, alarm: Weak<dyn Alarm>) -> Result<TimerKey, Closed> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Err(Closed);
        }
        let key = TimerKey(when, state.next_seq);
        state.next_seq += 1;
        state.entries.insert(key, alarm);
        if !state.started {
            state.started = self.start();
        }
        if state.wake_at.is_none_or(|at| when < at) {
            state.wake_at = Some(when);
            self.shared.cv.notify_one();
        }
        Ok(key)
    }

    /// Takes the entry out, if it has not rung. Wakes nobody.
    pub(crate) fn cancel(&self, key: TimerKey) {
        let mut state = lock(&self.shared.state);
        // The entry is a `Weak`: dropping it under the lock frees at most an emptied
        // allocation and runs no user code.
        state.entries.remove(&key);
        if state.closed && state.entries.is_empty() {
            // The last entry kept at the close is gone: the thread may leave now rather than
            // at that entry's time.
            self.shared.cv.notify_one();
        }
    }

    /// Tells every entry that the pool closed (on the timer thread), which then serves those
    /// kept and leaves; later entries are refused.
    pub(crate) fn close(&self) {
        let orphans = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return;
            }
            state.closed = true;
            if state.started {
                self.shared.cv.notify_one();
                BTreeMap::new()
            } else {
                std::mem::take(&mut state.entries)
            }
        };
        // No thread (the OS refused one): nothing could serve an entry kept, so each ends now.
        for alarm in orphans.into_values().filter_map(|a| a.upgrade()) {
            guard::quietly("a timer's alarm", || {
                let _ = alarm.close();
            });
        }
    }

    /// The number of entries waiting (for tests: none may stay behind a call that ended).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        lock(&self.shared.state).entries.len()
    }

    /// Starts the thread (under the state's lock, which it takes only once started); false if
    /// the OS refused one: the entries wait for the next try, or ring at the close.
    fn start(&self) -> bool {
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-timer", self.name))
            .stack_size(self.stack_size)
            .spawn(move || serve(&shared));
        match spawned {
            Ok(_) => true,
            Err(e) => {
                guard::warn(format_args!(
                    "no timer thread ({e}); deadlines and backoffs wait for the next try"
                ));
                false
            }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The timer thread: ring what is due, sleep until the next entry; at the close, tell every
/// entry, and leave once those kept have rung.
fn serve(shared: &Shared) {
    let mut state = lock(&shared.state);
    let mut told = false;
    loop {
        if state.closed && !told {
            told = true;
            let entries = std::mem::take(&mut state.entries);
            drop(state);
            let kept: Vec<_> = entries
                .into_iter()
                .filter(|(_, alarm)| {
                    alarm.upgrade().is_some_and(|alarm| {
                        let mut keep = false;
                        guard::quietly("a timer's alarm", || keep = alarm.close());
                        keep
                    })
                })
                .collect();
            state = lock(&shared.state);
            state.entries.extend(kept);
            continue;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = state.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        if !due.is_empty() {
            drop(state);
            ring_all(due);
            state = lock(&shared.state);
            continue;
        }
        if state.closed && state.entries.is_empty() {
            return;
        }
        let wake_at = state.entries.first_key_value().map(|(key, _)| key.0);
        state.wake_at = wake_at;
        state = wait(&shared.cv, state, wake_at);
    }
}

fn ring_all(alarms: impl IntoIterator<Item = Weak<dyn Alarm>>) {
    for alarm in alarms {
        if let Some(alarm) = alarm.upgrade() {
            // An alarm wakes callers and drops their values: user code.
            guard::quietly("a timer's alarm", || alarm.ring());
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::mpsc;
    use std::time::Duration;

    struct Report(Mutex<mpsc::Sender<(usize, Instant)>>, usize);

    impl Alarm for Report {
        fn ring(self: Arc<Self>) {
            let _ = lock(&self.0).send((self.1, Instant::now()));
        }
    }

    fn alarm(tx: &mpsc::Sender<(usize, Instant)>, n: usize) -> Arc<dyn Alarm> {
        Arc::new(Report(Mutex::new(tx.clone()), n))
    }

    /// Entries ring in time order, not before their time, and a cancelled one never rings.
    #[test]
    fn rings_in_order_and_not_before_time() {
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let alarms: Vec<_> = (0..4).map(|n| alarm(&tx, n)).collect();
        let at = |ms| start + Duration::from_millis(ms);
        timer.at(at(60), Arc::downgrade(&alarms[2])).unwrap();
        timer.at(at(20), Arc::downgrade(&alarms[0])).unwrap();
        let cancelled = timer.at(at(40), Arc::downgrade(&alarms[3])).unwrap();
        timer.at(at(40), Arc::downgrade(&alarms[1])).unwrap();
        timer.cancel(cancelled);
        let rung: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(60)).unwrap())
            .collect();
        assert_eq!(rung.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2]);
        for (n, when) in &rung {
            let due = [20, 40, 60][*n];
            assert!(*when >= at(due), "alarm {n} rang before its time");
        }
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the cancelled one rang"
        );
        assert_eq!(timer.len(), 0);
    }

    /// An alarm whose owner is gone rings nothing; the close rings the rest at once and
    /// refuses new entries.
    #[test]
    fn close_rings_everything_at_once() {
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let kept = alarm(&tx, 1);
        timer
            .at(
                Instant::now() + Duration::from_secs(3600),
                Arc::downgrade(&kept),
            )
            .unwrap();
        let gone = alarm(&tx, 2);
        timer
            .at(
                Instant::now() + Duration::from_secs(3600),
                Arc::downgrade(&gone),
            )
            .unwrap();
        drop(gone);
        timer.close();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap().0, 1);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert!(timer.at(Instant::now(), Arc::downgrade(&kept)).is_err());
    }

    /// An entry kept at the close (a running call's deadline) still rings at its time, and
    /// the thread leaves after it.
    #[test]
    fn an_entry_kept_at_the_close_rings_at_its_time() {
        struct Keep(Mutex<mpsc::Sender<&'static str>>);
        impl Alarm for Keep {
            fn ring(self: Arc<Self>) {
                let _ = lock(&self.0).send("rang");
            }
            fn close(self: Arc<Self>) -> bool {
                let _ = lock(&self.0).send("told");
                true
            }
        }
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let keep: Arc<dyn Alarm> = Arc::new(Keep(Mutex::new(tx)));
        let due = Instant::now() + Duration::from_millis(50);
        timer.at(due, Arc::downgrade(&keep)).unwrap();
        timer.close();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), "told");
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), "rang");
        assert!(Instant::now() >= due, "it rang before its time");
        assert!(timer.at(Instant::now(), Arc::downgrade(&keep)).is_err());
    }

    /// An alarm that panics costs the timer nothing: the next one still rings.
    #[test]
    fn a_panicking_alarm_does_not_stop_the_timer() {
        struct Boom(AtomicUsize);
        impl Alarm for Boom {
            fn ring(self: Arc<Self>) {
                self.0.fetch_add(1, SeqCst);
                panic!("planned: an alarm panics");
            }
        }
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let boom = Arc::new(Boom(AtomicUsize::new(0)));
        let boom_dyn: Arc<dyn Alarm> = boom.clone();
        let after = alarm(&tx, 7);
        timer.at(Instant::now(), Arc::downgrade(&boom_dyn)).unwrap();
        timer
            .at(
                Instant::now() + Duration::from_millis(10),
                Arc::downgrade(&after),
            )
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap().0, 7);
        assert_eq!(boom.0.load(SeqCst), 1);
    }
}
