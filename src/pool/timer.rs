//! One timer per pool: every wait for a point in time (a call's deadline, a retry's backoff, a
//! rate limit's next token, a batch's straggler deadline) is an entry here, watched by a single
//! thread (and rung by its ringers, below), not a thread per wait.
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
//! The timer thread takes what is due out, then sleeps on a condition variable until the
//! earliest entry (or, with none, until told). The thread is started on the pool's first entry,
//! so a pool that never waits for time has none.
//!
//! # Ringers
//!
//! Ringing is user code: an alarm wakes its caller's waker and drops the values of the call it
//! ends (its input, a kept output), and any of these may block. So the timer thread rings
//! nothing itself: it hands what is due to a *ringer* thread, which rings each alarm outside
//! every lock, in the order they came due. If the ringers, all busy, take no task for [`STALL`]
//! while tasks wait (they are stuck in user code), the timer thread starts another, up to
//! [`MAX_RINGERS`] (the ringers then take the tasks in order, and may finish them out of it);
//! an idle ringer leaves after [`RINGER_KEEP_ALIVE`]. An alarm that lets many calls go at once
//! (a limiter's line at the pool's close) hands each call's end on as a task of its own
//! ([`hand_to_ringers`]), taken after the rings and tells that wait and by at most
//! [`MAX_HANDED`] ringers at once. So an alarm that blocks for good costs one ringer, and every other
//! deadline, backoff and token of the pool still comes, late by at most [`STALL`] (unless a
//! stream of rings that each take nearly that long keeps one ringer busy: those are not
//! spread over more ringers). (Before ringers,
//! an input whose `Drop` blocked after a timeout stopped every deadline of its pool.) In the
//! usual case one ringer serves the pool while alarms ring, and none is left a second after.
//!
//! A new entry wakes the thread only if it is due before the thread would look anyway
//! (`wake_at`). A cancelled entry wakes nothing: the thread finds it gone when it looks. So a
//! steady stream of calls with the same timeout, each finished before its deadline, wakes the
//! timer about once per timeout, not once per call; and a pool with nothing waiting has its
//! timer asleep without a timeout, using no CPU.
//!
//! At the pool's close every entry is told at once, by the ringers ([`Alarm::close`]: each
//! ends its wait, or keeps its entry, as a running call's deadline does; an entry does not
//! ring while it is being told, so that none is both told and rung at once, and one whose
//! `close` blocks holds up no other); the thread serves the entries kept
//! until none is left, and leaves. After the close only deadlines are taken ([`Timer::deadline`]:
//! a call accepted as the pool closed may still run), and one that finds the thread gone starts
//! it again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::guard;
use crate::sync::{lock, wait, Condvar, Mutex};

/// What an entry rings: called once, on a ringer thread (on the timer thread if the OS
/// refused a ringer; for a pool whose timer thread could not start, on the thread that closes
/// the pool), outside every lock of the timer.
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
}

struct Shared {
    state: Mutex<State>,
    /// The timer thread waits here.
    cv: Condvar,
    /// Idle ringers wait here.
    ringer_cv: Condvar,
    /// The pool's thread name and stack size, for the timer's threads.
    name: String,
    stack_size: usize,
}

/// What a ringer does: ring an entry that came due, tell one that the pool closed (and take
/// it out unless it says to keep it), or run a piece of an alarm's work that was handed on to
/// be a task of its own ([`hand_to_ringers`]; counted in `running_handed` while it runs).
enum Task {
    Ring(Weak<dyn Alarm>),
    Close(TimerKey, Weak<dyn Alarm>),
    Handed(RingerTask),
}

/// A piece of an alarm's work, for [`hand_to_ringers`].
pub(crate) type RingerTask = Box<dyn FnOnce() + Send>;

thread_local! {
    /// On a ringer thread: the timer it rings for.
    static RINGING_FOR: std::cell::RefCell<Option<Arc<Shared>>> =
        const { std::cell::RefCell::new(None) };
}

/// Called by an alarm as it rings or is told of the close, on a ringer: queues `task` for the
/// ringers as a task of its own, behind every ring and tell that waits (those go first), and
/// gives back `None`. Gives it back to be run there and then off a ringer, or if the timer's
/// thread has left (nothing would start a ringer for it).
///
/// For an alarm that lets many calls go at once (a limiter at the pool's close lets its whole
/// line go): each call's end runs user code (its input's `Drop`, its waker) that may block, and
/// as tasks of their own the calls behind one that blocks are taken by another ringer. At most
/// [`MAX_HANDED`] ringers run such tasks at once, so that however many of them block, rings
/// and tells still have ringers.
///
/// Only for an alarm's own work: user code that runs on a ringer (a waker, a `Drop`) and lets
/// a call go must do it there, or a waker that waits for that call would wait for itself.
pub(crate) fn hand_to_ringers(task: RingerTask) -> Option<RingerTask> {
    let shared = RINGING_FOR.try_with(|r| r.borrow().clone()).ok().flatten();
    let Some(shared) = shared else {
        return Some(task);
    };
    let mut state = lock(&shared.state);
    if !state.started {
        return Some(task);
    }
    state.handed.push_back(task);
    // The timer thread looks: it starts another ringer if this one is stuck.
    shared.cv.notify_one();
    None
}

/// How long the ringers, all busy with a task, may take no other while tasks wait before the
/// timer thread starts another ringer: a ring that long is user code that blocks (or a ringer
/// preempted in the middle of one). A ringer woken but not yet running counts as idle.
const STALL: Duration = Duration::from_millis(10);

/// How long an idle ringer waits for a task before it leaves.
const RINGER_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// The most ringers at once. Each beyond the first was started because those before it were
/// stuck in user code for longer than [`STALL`]; past this many, what is due waits for one of
/// them to come back.
const MAX_RINGERS: usize = 16;

/// The most ringers that run tasks handed on by alarms ([`hand_to_ringers`]) at once: the
/// others are left for rings and tells, which a line of calls that all block cannot take.
const MAX_HANDED: usize = MAX_RINGERS / 2;

/// A slot of the slab: its entry's alarm while it waits.
struct Slot {
    generation: u32,
    alarm: Option<Weak<dyn Alarm>>,
    /// A ringer tells it of the close right now: it does not ring until that is done.
    telling: bool,
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
    /// Rings and tells that came due, for the ringers, in order.
    pending: VecDeque<Task>,
    /// Tasks handed on by alarms ([`hand_to_ringers`]), in order, taken after `pending`.
    handed: VecDeque<RingerTask>,
    /// Ringers running one of `handed` now.
    running_handed: usize,
    /// Entries being told of the close (their slots say so): none of them rings until it has
    /// been told, so that no alarm is told and rung at once.
    telling: usize,
    /// Ringer threads alive, and how many of them wait for a task.
    ringers: usize,
    idle_ringers: usize,
    /// Tasks taken by ringers so far: the timer thread sees from it that they move.
    taken: u64,
}

impl State {
    /// The next task a ringer may take: a ring or a tell, else a handed task if fewer than
    /// [`MAX_HANDED`] ringers run one (counted from here until [`Task::Handed`] has run).
    fn next_task(&mut self) -> Option<Task> {
        if let Some(task) = self.pending.pop_front() {
            return Some(task);
        }
        if self.running_handed >= MAX_HANDED {
            return None;
        }
        let task = self.handed.pop_front()?;
        self.running_handed += 1;
        Some(Task::Handed(task))
    }

    /// True if a ringer would find a task to take now.
    fn has_task(&self) -> bool {
        !self.pending.is_empty() || !self.handed.is_empty() && self.running_handed < MAX_HANDED
    }

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
        if std::mem::take(&mut slot.telling) {
            self.telling -= 1;
        }
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

    /// When the earliest entry that may ring now (not being told of the close) is due.
    fn next_ring(&mut self) -> Option<Instant> {
        if self.telling == 0 {
            return self.earliest();
        }
        // Only while the close is told: a look at every entry.
        self.heap
            .iter()
            .map(|Reverse(d)| d)
            .filter(|d| self.is_live(d) && !self.slots[d.index as usize].telling)
            .map(|d| d.when)
            .min()
    }

    /// Takes the alarms due by `now` out (but those being told of the close).
    fn take_due(&mut self, now: Instant) -> Vec<Weak<dyn Alarm>> {
        let mut due = Vec::new();
        let mut held = Vec::new();
        while self.earliest().is_some_and(|when| when <= now) {
            let Reverse(top) = self.heap.pop().expect("earliest() saw it");
            if self.slots[top.index as usize].telling {
                held.push(Reverse(top));
                continue;
            }
            due.extend(self.take(top.index as usize, top.generation));
        }
        self.heap.extend(held);
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
                    pending: VecDeque::new(),
                    handed: VecDeque::new(),
                    running_handed: 0,
                    telling: 0,
                    ringers: 0,
                    idle_ringers: 0,
                    taken: 0,
                }),
                cv: Condvar::new(),
                ringer_cv: Condvar::new(),
                name,
                stack_size,
            }),
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
            // Nothing serves entries any more: a deadline after the close gets a thread of
            // its own, which has no close to tell (its entries all came after it).
            if let Err(e) = self.serve_now(&mut state, true) {
                drop(state);
                no_thread(&e);
                return Err(Closed);
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
                    telling: false,
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
        let refused = self.serve_now(&mut state, false).err();
        if state.wake_at.is_none_or(|at| when < at) {
            state.wake_at = Some(when);
            self.shared.cv.notify_one();
        }
        drop(state);
        if let Some(e) = refused {
            no_thread(&e);
        }
        Ok(TimerKey::new(when, index, generation))
    }

    /// Queues `task` for the ringers, from any thread (a worker that must not run user code
    /// in the middle of taking a job), as [`hand_to_ringers`] does from a ringer: gives back
    /// `None`, starting the timer's thread if none serves yet. Gives `task` back to be run
    /// there and then once the pool is closed, or if the OS refuses the thread.
    ///
    /// With a ringer idle and no task waiting, that ringer is woken directly; else the timer
    /// thread is, which wakes or starts one (another if those alive take no task for
    /// [`STALL`]).
    pub(crate) fn hand_off(&self, task: RingerTask) -> Option<RingerTask> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Some(task);
        }
        if let Err(e) = self.serve_now(&mut state, false) {
            drop(state);
            no_thread(&e);
            return Some(task);
        }
        let alone = !state.has_task() && state.running_handed < MAX_HANDED;
        state.handed.push_back(task);
        if alone && state.idle_ringers > 0 {
            self.shared.ringer_cv.notify_one();
        } else {
            // Tasks wait already, or no ringer is idle: the timer thread looks, and starts a
            // ringer if those alive are stuck.
            self.shared.cv.notify_one();
        }
        None
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

    /// Has every entry told that the pool closed (by the ringers); the timer thread then serves
    /// those kept and leaves. Later entries but deadlines are refused.
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
        // No thread (the OS refused one): each is told now, here, and taken out whatever it
        // says, since nothing could serve an entry kept (a running call's deadline is lost:
        // it runs uncut).
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

    /// Starts the thread unless one serves the entries already (see [`start`](Self::start)).
    fn serve_now(&self, state: &mut State, told: bool) -> std::io::Result<()> {
        if !state.started {
            self.start(told)?;
            state.started = true;
        }
        Ok(())
    }

    /// Starts the thread (under the state's lock, which it takes only once started); the OS's
    /// error if it refused one: the entries wait for the next try, or ring at the close (the
    /// caller says so through [`no_thread`] once it has let go of the lock: a tracing
    /// subscriber is user code). `told`: started after the close, with nothing to tell of it.
    fn start(&self, told: bool) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name(format!("{}-timer", self.shared.name))
            .stack_size(self.shared.stack_size)
            .spawn(move || serve(&shared, told))
            .map(drop)
    }
}

/// Tells the application that the OS refused the timer a thread.
fn no_thread(e: &std::io::Error) {
    guard::warn(format_args!(
        "no timer thread ({e}); deadlines and backoffs wait for the next try"
    ));
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The timer thread: hand what is due to the ringers, sleep until the next entry; at the
/// close, have every entry told (unless `told` already), and leave once those kept have rung.
///
/// It runs no user code itself (unless the OS refuses it a ringer), so an alarm that blocks,
/// in a value's `Drop` or a waker, holds up one ringer and nothing else: when the ringers,
/// all busy, take no task for [`STALL`] while tasks wait, another ringer starts.
fn serve(shared: &Arc<Shared>, mut told: bool) {
    let mut state = lock(&shared.state);
    // When the ringers were last seen to move, and what `taken` was then.
    let mut moved = (state.taken, Instant::now());
    loop {
        if state.closed && !told {
            told = true;
            // Told by the ringers, outside the lock; those not kept are taken out then (a
            // cancel in between finds them gone, and their keys stay good meanwhile).
            let all = state.all();
            for (key, _) in &all {
                state.slots[key.slot().0].telling = true;
            }
            state.telling += all.len();
            state
                .pending
                .extend(all.into_iter().map(|(key, alarm)| Task::Close(key, alarm)));
            // Idle ringers with nothing to do leave now.
            shared.ringer_cv.notify_all();
        }
        let due = state.take_due(Instant::now());
        state.pending.extend(due.into_iter().map(Task::Ring));
        if !state.has_task() {
            // (Handed tasks left while `MAX_HANDED` run are taken by those ringers as they
            // finish; the thread stays for them, to start ringers if those are stuck.)
            if state.closed && state.live == 0 && state.handed.is_empty() {
                state.started = false;
                return;
            }
            let wake_at = state.next_ring();
            state.wake_at = wake_at;
            state = wait(&shared.cv, state, wake_at);
            continue;
        }
        // Tasks wait: a ringer takes them, unless all are busy (then they get one more if
        // they have taken nothing for `STALL`).
        let now = Instant::now();
        if state.taken != moved.0 {
            moved = (state.taken, now);
        }
        let stuck = now >= moved.1 + STALL && state.idle_ringers == 0;
        if state.idle_ringers > 0 {
            shared.ringer_cv.notify_one();
        } else if state.ringers == 0 || stuck && state.ringers < MAX_RINGERS {
            if start_ringer(shared) {
                state.ringers += 1;
                state.idle_ringers += 1; // (it takes the lock only once started)
                moved = (state.taken, now);
            } else if state.ringers == 0 {
                // No ringer at all: this thread rings, as it can.
                let task = state.next_task().expect("tasks wait");
                state.taken += 1;
                drop(state);
                run(shared, task);
                state = lock(&shared.state);
                continue;
            }
        }
        // Look again when the next entry is due, or when the ringers would count as stuck.
        let check = now + STALL;
        let wake_at = state.next_ring().map_or(check, |at| at.min(check));
        state.wake_at = Some(wake_at);
        state = wait(&shared.cv, state, Some(wake_at));
    }
}

/// Starts a ringer thread; false if the OS refused one.
fn start_ringer(shared: &Arc<Shared>) -> bool {
    let held = Arc::clone(shared);
    std::thread::Builder::new()
        .name(format!("{}-ring", shared.name))
        .stack_size(shared.stack_size)
        .spawn(move || ring_for(&held))
        .is_ok()
}

/// A ringer: takes the tasks in order and runs each outside the lock; leaves once it has had
/// none for [`RINGER_KEEP_ALIVE`], or none left after the close.
fn ring_for(shared: &Arc<Shared>) {
    let _ = RINGING_FOR.try_with(|r| *r.borrow_mut() = Some(Arc::clone(shared)));
    let mut state = lock(&shared.state);
    // Counted idle by whoever started it, until it first looks.
    state.idle_ringers -= 1;
    loop {
        if let Some(task) = state.next_task() {
            state.taken += 1;
            drop(state);
            run(shared, task);
            state = lock(&shared.state);
            continue;
        }
        if state.closed {
            break;
        }
        let until = Instant::now().checked_add(RINGER_KEEP_ALIVE);
        state.idle_ringers += 1;
        state = wait(&shared.ringer_cv, state, until);
        state.idle_ringers -= 1;
        if !state.has_task() && until.is_none_or(|until| Instant::now() >= until) {
            break;
        }
    }
    state.ringers -= 1;
    drop(state);
    let _ = RINGING_FOR.try_with(|r| r.borrow_mut().take());
}

/// Runs a task: the alarm's ring or close, user code, under the guard and outside every lock.
fn run(shared: &Shared, task: Task) {
    match task {
        Task::Handed(task) => {
            guard::quietly("a timer's alarm", task);
            lock(&shared.state).running_handed -= 1;
        }
        Task::Ring(alarm) => {
            if let Some(alarm) = alarm.upgrade() {
                // An alarm wakes callers and drops their values: user code.
                guard::quietly("a timer's alarm", || alarm.ring());
            }
        }
        Task::Close(key, alarm) => {
            let ended = alarm.upgrade().is_none_or(|alarm| {
                let mut keep = false;
                guard::quietly("a timer's alarm", || keep = alarm.close());
                !keep
            });
            let mut state = lock(&shared.state);
            let (index, generation) = key.slot();
            if ended {
                state.take(index, generation);
            } else if let Some(slot) = state.slots.get_mut(index) {
                // Kept: it rings at its time from now on (the timer thread looks again).
                if slot.generation == generation && std::mem::take(&mut slot.telling) {
                    state.telling -= 1;
                }
            }
            shared.cv.notify_one();
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

    /// An alarm whose ring blocks (user code: a value's `Drop`, a waker) stops no other:
    /// one made before it and one made while it blocks both ring at their time.
    #[test]
    fn an_alarm_that_blocks_does_not_stop_the_timer() {
        struct Blocks(Mutex<mpsc::Receiver<()>>, mpsc::Sender<(usize, Instant)>);
        impl Alarm for Blocks {
            fn ring(self: Arc<Self>) {
                let _ = self.1.send((0, Instant::now()));
                let _ = lock(&self.0).recv_timeout(Duration::from_secs(60));
            }
        }
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let blocks: Arc<dyn Alarm> = Arc::new(Blocks(Mutex::new(released), tx.clone()));
        let before = alarm(&tx, 1);
        let during = alarm(&tx, 2);
        timer.at(Instant::now(), Arc::downgrade(&blocks)).unwrap();
        let due = Instant::now() + Duration::from_millis(30);
        timer.at(due, Arc::downgrade(&before)).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap().0, 0);
        timer
            .at(
                Instant::now() + Duration::from_millis(10),
                Arc::downgrade(&during),
            )
            .unwrap();
        let mut rang: Vec<usize> = (0..2)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("stuck behind a ring")
                    .0
            })
            .collect();
        rang.sort_unstable();
        assert_eq!(rang, [1, 2]);
        release.send(()).unwrap();
    }

    /// At the close, an alarm whose `close` blocks keeps no other from being told, nor an
    /// entry kept at the close (a running call's deadline) from ringing at its time.
    #[test]
    fn an_alarm_that_blocks_at_the_close_does_not_stop_the_others() {
        struct Blocks(Mutex<mpsc::Receiver<()>>, mpsc::Sender<&'static str>, bool);
        impl Alarm for Blocks {
            fn ring(self: Arc<Self>) {
                let _ = self.1.send("rang");
            }
            fn close(self: Arc<Self>) -> bool {
                let blocks = self.2;
                let _ = self.1.send(if blocks { "blocking" } else { "told" });
                if blocks {
                    let _ = lock(&self.0).recv_timeout(Duration::from_secs(60));
                }
                !blocks // the other one is kept
            }
        }
        let timer = Timer::new("t".into(), 1 << 20);
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let (_, unused) = mpsc::channel();
        let first: Arc<dyn Alarm> = Arc::new(Blocks(Mutex::new(released), tx.clone(), true));
        let kept: Arc<dyn Alarm> = Arc::new(Blocks(Mutex::new(unused), tx, false));
        let now = Instant::now();
        timer
            .at(now + Duration::from_millis(50), Arc::downgrade(&first))
            .unwrap();
        timer
            .at(now + Duration::from_millis(100), Arc::downgrade(&kept))
            .unwrap();
        timer.close();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            "blocking"
        );
        let next = |what| rx.recv_timeout(Duration::from_secs(10)).expect(what);
        assert_eq!(next("stuck behind a close"), "told");
        assert_eq!(next("a kept entry stuck behind a close"), "rang");
        assert!(
            Instant::now() >= now + Duration::from_millis(100),
            "rang before its time"
        );
        release.send(()).unwrap();
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
