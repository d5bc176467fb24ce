//! One timer per pool: every wait for a point in time (a call's deadline, a retry's backoff, a
//! rate limit's next token, a batch's straggler deadline) is an entry here, served by a single
//! thread, not a thread per wait.
//!
//! # Protocol
//!
//! An entry is a `Weak` alarm (a wait whose owner is gone rings nothing) in a slot of a slab,
//! and its key names the slot and the slot's generation, so that a key whose entry has rung or
//! been cancelled takes out nothing (not the entry that reuses the slot). A min-heap orders the
//! entries by time (then by when they were made). Cancelling empties the slot at once and leaves
//! the heap alone; the stale heap entry is dropped when it comes to the top, or when stale ones
//! outnumber the live and the heap is rebuilt. So neither making an entry nor cancelling one
//! needs new memory once the slab and the heap have grown to the pool's load: a call with a deadline
//! that ends in time costs a heap push (at the bottom, for deadlines that come in order) and a
//! slot emptied.
//!
//! The timer thread rings what is due, outside the lock, then sleeps on a condition variable
//! until the earliest entry (or, with none, until told). The thread is started on the pool's
//! first entry, so a pool that never waits for time has none.
//!
//! A new entry wakes the thread only if it is due before the thread would look anyway
//! (`wake_at`). A cancelled entry wakes nothing: the thread finds it gone when it looks. So a
//! steady stream of calls with the same timeout, each finished before its deadline, wakes the
//! timer about once per timeout, not once per call; and a pool with nothing waiting has its
//! timer asleep without a timeout, using no CPU.
//!
//! At the pool's close every entry is told at once ([`Alarm::close`]: each ends its wait, or
//! keeps its entry, as a running call's deadline does); the thread serves the entries kept
//! until none is left, and leaves. After the close only deadlines are taken ([`Timer::deadline`]:
//! a call accepted as the pool closed may still run), and one that finds the thread gone starts
//! it again.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerKey(Instant, u64);

impl TimerKey {
    /// When the entry rings.
    pub(crate) fn when(&self) -> Instant {
        self.0
    }

    /// What tells it from other entries (with [`when`](Self::when), all of the key: an owner
    /// may keep just this, in an atomic). Never `u64::MAX`.
    pub(crate) fn seq(&self) -> u64 {
        self.1
    }

    /// The key of the entry for `when` with sequence number `seq`.
    pub(crate) fn from_parts(when: Instant, seq: u64) -> Self {
        TimerKey(when, seq)
    }

    fn new(when: Instant, index: u32, generation: u32) -> Self {
        TimerKey(when, u64::from(generation) << 32 | u64::from(index))
    }

    /// The slot and its generation.
    fn slot(&self) -> (usize, u32) {
        (
            (self.1 & u64::from(u32::MAX)) as usize,
            (self.1 >> 32) as u32,
        )
    }
}

/// The pool is closed: no new entry but a deadline is taken (and a deadline neither, if no
/// thread serves them and the OS refuses one).
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

/// A slot of the slab: its entry's alarm while it waits.
struct Slot {
    generation: u32,
    alarm: Option<Weak<dyn Alarm>>,
}

/// A place in the heap: the entry in slot `index` of generation `generation`, due at `when`,
/// made `order`th (so that entries for the same time ring in the order they were made).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    when: Instant,
    order: u64,
    index: u32,
    generation: u32,
}

struct State {
    slots: Vec<Slot>,
    /// Empty slots, to reuse.
    free: Vec<u32>,
    /// Earliest first; some are stale (their slot emptied or reused).
    heap: BinaryHeap<Reverse<Due>>,
    /// Entries waiting.
    live: usize,
    next_order: u64,
    /// The thread looks at the entries again by then; `None`: only when notified.
    wake_at: Option<Instant>,
    /// A thread serves the entries (false again once it has left, after the close).
    started: bool,
    closed: bool,
}

impl State {
    /// True if `due` names an entry still waiting.
    fn is_live(&self, due: &Due) -> bool {
        let slot = &self.slots[due.index as usize];
        slot.generation == due.generation && slot.alarm.is_some()
    }

    /// Empties the slot of the entry named by `(index, generation)` if that entry waits
    /// there: its alarm.
    fn take(&mut self, index: usize, generation: u32) -> Option<Weak<dyn Alarm>> {
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let alarm = slot.alarm.take()?;
        if slot.generation < u32::MAX {
            self.free.push(index as u32);
        }
        // (Else the slot is retired: its generations are used up, and a key kept from one of
        // them must never name another entry. 24 bytes per four billion entries.)
        self.live -= 1;
        Some(alarm)
    }

    /// After a burst: the heap's and the free list's room beyond four times what they hold
    /// goes back to the allocator. (The slab keeps its slots, each with its generation: a key
    /// kept from an old entry must not name a new one.)
    fn give_back_memory(&mut self) {
        if self.heap.capacity() > 4 * self.heap.len() + 64 {
            self.heap.shrink_to(2 * self.heap.len() + 64);
        }
        if self.free.capacity() > 4 * self.free.len() + 64 {
            self.free.shrink_to(2 * self.free.len() + 64);
        }
    }

    /// The earliest entry waiting: its time (stale heap entries on top are dropped).
    fn earliest(&mut self) -> Option<Instant> {
        while let Some(Reverse(top)) = self.heap.peek() {
            if self.is_live(top) {
                return Some(top.when);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the alarms due by `now` out.
    fn take_due(&mut self, now: Instant) -> Vec<Weak<dyn Alarm>> {
        let mut due = Vec::new();
        while self.earliest().is_some_and(|when| when <= now) {
            let Reverse(top) = self.heap.pop().expect("earliest() saw it");
            due.extend(self.take(top.index as usize, top.generation));
        }
        if !due.is_empty() {
            self.give_back_memory();
        }
        due
    }

    /// Every entry waiting, with its key, earliest first.
    fn all(&self) -> Vec<(TimerKey, Weak<dyn Alarm>)> {
        let mut live: Vec<&Due> = self
            .heap
            .iter()
            .map(|Reverse(d)| d)
            .filter(|d| self.is_live(d))
            .collect();
        live.sort_unstable();
        live.into_iter()
            .map(|d| {
                let alarm = self.slots[d.index as usize].alarm.clone();
                let key = TimerKey::new(d.when, d.index, d.generation);
                (key, alarm.expect("live"))
            })
            .collect()
    }
}

impl Timer {
    pub(crate) fn new(name: String, stack_size: usize) -> Self {
        Timer {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    slots: Vec::new(),
                    free: Vec::new(),
                    heap: BinaryHeap::new(),
                    live: 0,
                    next_order: 0,
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
        self.insert(when, alarm, false)
    }

    /// Rings `alarm` at `when`, for a call's deadline: like [`at`](Self::at), but taken after
    /// the close too (a call accepted as the pool closed may still run, and its deadline
    /// matters as those kept at the close do), starting a thread again if the last one left.
    ///
    /// # Errors
    ///
    /// [`Closed`] after the close if no thread serves the entries and the OS refuses one.
    pub(crate) fn deadline(
        &self,
        when: Instant,
        alarm: Weak<dyn Alarm>,
    ) -> Result<TimerKey, Closed> {
        self.insert(when, alarm, true)
    }

    fn insert(
        &self,
        when: Instant,
        alarm: Weak<dyn Alarm>,
        after_close: bool,
    ) -> Result<TimerKey, Closed> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            if !after_close {
                return Err(Closed);
            }
            if !state.started {
                // Nothing serves entries any more: a deadline after the close gets a thread
                // of its own, which has no close to tell (its entries all came after it).
                if !self.start(true) {
                    return Err(Closed);
                }
                state.started = true;
            }
        }
        let index = match state.free.pop() {
            Some(index) => index,
            None => {
                // (More than four billion entries at once would not fit in memory first.)
                let index = u32::try_from(state.slots.len())
                    .ok()
                    .filter(|&i| i < u32::MAX)
                    .expect("fewer than 2^32 - 1 timer entries");
                state.slots.push(Slot {
                    generation: 0,
                    alarm: None,
                });
                index
            }
        };
        let slot = &mut state.slots[index as usize];
        // (A slot whose generations ran out is never free: see `State::take`.)
        slot.generation += 1;
        slot.alarm = Some(alarm);
        let generation = slot.generation;
        let order = state.next_order;
        state.next_order += 1;
        state.live += 1;
        state.heap.push(Reverse(Due {
            when,
            order,
            index,
            generation,
        }));
        if !state.started {
            state.started = self.start(false);
        }
        if state.wake_at.is_none_or(|at| when < at) {
            state.wake_at = Some(when);
            self.shared.cv.notify_one();
        }
        Ok(TimerKey::new(when, index, generation))
    }

    /// Takes the entry out, if it has not rung. Wakes nobody.
    pub(crate) fn cancel(&self, key: TimerKey) {
        let mut state = lock(&self.shared.state);
        let (index, generation) = key.slot();
        // The entry is a `Weak`: dropping it under the lock frees at most an emptied
        // allocation and runs no user code.
        if state.take(index, generation).is_none() {
            return;
        }
        if state.heap.len() > 2 * state.live + 64 {
            // Stale places outnumber the live: rebuilt, so the heap stays within twice the
            // entries waiting.
            let mut heap = std::mem::take(&mut state.heap);
            heap.retain(|Reverse(d)| state.is_live(d));
            state.heap = heap;
            state.give_back_memory();
        }
        if state.closed && state.live == 0 {
            // The last entry kept at the close is gone: the thread may leave now rather than
            // at that entry's time.
            self.shared.cv.notify_one();
        }
    }

    /// Tells every entry that the pool closed (on the timer thread), which then serves those
    /// kept and leaves; later entries but deadlines are refused.
    pub(crate) fn close(&self) {
        let orphans = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return;
            }
            state.closed = true;
            if state.started {
                self.shared.cv.notify_one();
                Vec::new()
            } else {
                let all = state.all();
                for (key, _) in &all {
                    let (index, generation) = key.slot();
                    state.take(index, generation);
                }
                all
            }
        };
        // No thread (the OS refused one): nothing could serve an entry kept, so each ends now.
        for (_, alarm) in orphans {
            if let Some(alarm) = alarm.upgrade() {
                guard::quietly("a timer's alarm", || {
                    let _ = alarm.close();
                });
            }
        }
    }

    /// The number of entries waiting (for tests: none may stay behind a call that ended).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        lock(&self.shared.state).live
    }

    /// Starts the thread (under the state's lock, which it takes only once started); false if
    /// the OS refused one: the entries wait for the next try, or ring at the close. `told`:
    /// started after the close, with nothing to tell of it.
    fn start(&self, told: bool) -> bool {
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-timer", self.name))
            .stack_size(self.stack_size)
            .spawn(move || serve(&shared, told));
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
/// entry (unless `told` already), and leave once those kept have rung.
fn serve(shared: &Shared, mut told: bool) {
    let mut state = lock(&shared.state);
    loop {
        if state.closed && !told {
            told = true;
            // Each is told outside the lock; those not kept are taken out after (a cancel in
            // between finds them gone, and their keys stay good meanwhile).
            let all = state.all();
            drop(state);
            let ended: Vec<TimerKey> = all
                .into_iter()
                .filter(|(_, alarm)| {
                    alarm.upgrade().is_none_or(|alarm| {
                        let mut keep = false;
                        guard::quietly("a timer's alarm", || keep = alarm.close());
                        !keep
                    })
                })
                .map(|(key, _)| key)
                .collect();
            state = lock(&shared.state);
            for key in ended {
                let (index, generation) = key.slot();
                state.take(index, generation);
            }
            continue;
        }
        let due = state.take_due(Instant::now());
        if !due.is_empty() {
            drop(state);
            ring_all(due);
            state = lock(&shared.state);
            continue;
        }
        if state.closed && state.live == 0 {
            state.started = false;
            return;
        }
        let wake_at = state.earliest();
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
    /// refuses new entries but deadlines.
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

    /// After the close, while the thread serves an entry kept at the close, a deadline is
    /// still taken and rings at its time (a call accepted as the pool closed keeps its
    /// deadline); other waits are refused. Once the thread has left, a deadline starts another.
    #[test]
    fn a_deadline_is_taken_after_the_close_while_the_thread_serves() {
        struct Keep(Mutex<mpsc::Sender<&'static str>>, &'static str);
        impl Alarm for Keep {
            fn ring(self: Arc<Self>) {
                let _ = lock(&self.0).send(self.1);
            }
            fn close(self: Arc<Self>) -> bool {
                let _ = lock(&self.0).send("told");
                true
            }
        }
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let kept: Arc<dyn Alarm> = Arc::new(Keep(Mutex::new(tx.clone()), "kept rang"));
        let late: Arc<dyn Alarm> = Arc::new(Keep(Mutex::new(tx), "late rang"));
        timer
            .at(
                Instant::now() + Duration::from_millis(1500),
                Arc::downgrade(&kept),
            )
            .unwrap();
        timer.close();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), "told");
        assert!(timer.at(Instant::now(), Arc::downgrade(&late)).is_err());
        let due = Instant::now() + Duration::from_millis(20);
        timer.deadline(due, Arc::downgrade(&late)).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            "late rang"
        );
        assert!(Instant::now() >= due, "it rang before its time");
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            "kept rang"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock(&timer.shared.state).started {
            assert!(Instant::now() < deadline, "the thread did not leave");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Once the thread has left, a deadline starts another.
        timer
            .deadline(Instant::now(), Arc::downgrade(&late))
            .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            "late rang"
        );
        assert!(timer.at(Instant::now(), Arc::downgrade(&late)).is_err());
    }

    /// A pool closed before any wait for time has no timer thread: a deadline after the close
    /// (a call accepted as it closed) starts one and rings at its time (it was refused, and
    /// the call ran past its deadline uncut).
    #[test]
    fn a_deadline_after_a_close_with_no_thread_rings() {
        let timer = Timer::new("t".into(), 1 << 20);
        timer.close();
        let (tx, rx) = mpsc::channel();
        let late = alarm(&tx, 5);
        let due = Instant::now() + Duration::from_millis(20);
        timer.deadline(due, Arc::downgrade(&late)).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap().0, 5);
        assert!(Instant::now() >= due, "it rang before its time");
        assert!(timer.at(Instant::now(), Arc::downgrade(&late)).is_err());
    }

    /// A key names one entry: after its entry rang or was cancelled, it takes out nothing,
    /// not even the entry that now has its slot.
    #[test]
    fn an_old_key_does_not_cancel_the_entry_in_its_slot() {
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let first = alarm(&tx, 1);
        let later = Instant::now() + Duration::from_millis(30);
        let old = timer.at(later, Arc::downgrade(&first)).unwrap();
        timer.cancel(old);
        let second = alarm(&tx, 2);
        let new = timer.at(later, Arc::downgrade(&second)).unwrap();
        assert_eq!(new.slot().0, old.slot().0, "the slot is reused");
        timer.cancel(old);
        timer.cancel(old);
        assert_eq!(timer.len(), 1);
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap().0, 2);
        // And after it rang, its own key takes out nothing either.
        timer.cancel(new);
        let third = alarm(&tx, 3);
        timer.at(Instant::now(), Arc::downgrade(&third)).unwrap();
        timer.cancel(new);
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap().0, 3);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    }

    /// Entries cancelled long before their time do not pile up: the heap stays within twice
    /// the entries waiting (plus a little), and the slab within the most that waited at once.
    #[test]
    fn cancelled_entries_do_not_pile_up() {
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, _rx) = mpsc::channel();
        let far = Instant::now() + Duration::from_secs(3600);
        let keep = alarm(&tx, 0);
        timer.at(far, Arc::downgrade(&keep)).unwrap();
        let each = alarm(&tx, 1);
        for i in 0..100_000u32 {
            let key = timer
                .at(
                    far + Duration::from_nanos(u64::from(i)),
                    Arc::downgrade(&each),
                )
                .unwrap();
            timer.cancel(key);
        }
        assert_eq!(timer.len(), 1);
        let state = lock(&timer.shared.state);
        assert!(
            state.heap.len() <= 2 + 64,
            "{} places in the heap",
            state.heap.len()
        );
        assert!(state.slots.len() <= 2, "{} slots", state.slots.len());
    }

    /// A slot whose generations ran out is retired, not reused: a key kept from its last
    /// entry can never name another (with generations that wrapped, it named the next entry
    /// in the slot, which then lost its deadline).
    #[test]
    fn a_slot_with_its_generations_used_up_is_retired() {
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let far = Instant::now() + Duration::from_secs(3600);
        let first = alarm(&tx, 1);
        let key = timer.at(far, Arc::downgrade(&first)).unwrap();
        timer.cancel(key);
        // As if four billion entries had used the slot since.
        lock(&timer.shared.state).slots[key.slot().0].generation = u32::MAX - 1;
        let last = timer.at(far, Arc::downgrade(&first)).unwrap();
        assert_eq!(last.slot(), (key.slot().0, u32::MAX));
        timer.cancel(last);
        let next = alarm(&tx, 2);
        let new = timer.at(Instant::now(), Arc::downgrade(&next)).unwrap();
        assert_ne!(new.slot().0, last.slot().0, "the retired slot came back");
        timer.cancel(last);
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap().0, 2);
    }

    /// What a burst of entries took is given back once they are gone (but for the slots).
    #[test]
    fn a_burst_gives_its_heap_back() {
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, _rx) = mpsc::channel();
        let far = Instant::now() + Duration::from_secs(3600);
        let each = alarm(&tx, 1);
        let keys: Vec<_> = (0..100_000u32)
            .map(|i| {
                let when = far + Duration::from_nanos(u64::from(i));
                timer.at(when, Arc::downgrade(&each)).unwrap()
            })
            .collect();
        for key in keys {
            timer.cancel(key);
        }
        assert_eq!(timer.len(), 0);
        let state = lock(&timer.shared.state);
        assert!(
            state.heap.capacity() <= 4 * 64 + 64,
            "{}",
            state.heap.capacity()
        );
    }

    /// At the close, the entries waiting are told earliest first, whatever order they were
    /// made in.
    #[test]
    fn the_close_tells_entries_earliest_first() {
        struct Told(Mutex<mpsc::Sender<usize>>, usize);
        impl Alarm for Told {
            fn ring(self: Arc<Self>) {}
            fn close(self: Arc<Self>) -> bool {
                let _ = lock(&self.0).send(self.1);
                false
            }
        }
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let far = Instant::now() + Duration::from_secs(3600);
        let told: Vec<Arc<dyn Alarm>> = [3usize, 1, 2]
            .into_iter()
            .map(|n| Arc::new(Told(Mutex::new(tx.clone()), n)) as Arc<dyn Alarm>)
            .collect();
        for (alarm, n) in told.iter().zip([3u64, 1, 2]) {
            timer
                .at(far + Duration::from_secs(n), Arc::downgrade(alarm))
                .unwrap();
        }
        timer.close();
        let order: Vec<usize> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(60)).unwrap())
            .collect();
        assert_eq!(order, [1, 2, 3]);
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
