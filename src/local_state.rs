//! The states that per-worker programs ([`WorkerPool::asyncify_with`](crate::WorkerPool::asyncify_with))
//! keep on the threads they run on.
//!
//! # Policy
//!
//! * **Where.** Each thread has one store, a thread-local list of entries, one per program
//!   (keyed by the program's [`ProgramKey`]) that ran on the thread. An entry holds the idle
//!   states of that program made on this thread: a state never leaves the thread that made
//!   it, so it need not be `Send`.
//! * **Taken, not borrowed.** A run [`take`]s a state out of the store and [`put`]s it back
//!   when it returns. A run nested inside another run of the same program on the same thread
//!   (a waiting worker runs the awaited job itself) finds none and makes its own: one state is
//!   never used by two runs, and the store is never borrowed while user code runs. The idle
//!   list keeps every state put back, so a thread holds as many states of a program as that
//!   program's deepest nesting on it, and reuses the last one put back first.
//! * **Who keeps states.** Only a thread whose pool has promised to drop them ([`keep`], at
//!   the start of a pool thread) keeps them. Elsewhere (a program's `run` called directly on an
//!   application thread), and on a pool thread that is leaving, a state put back is dropped at
//!   once: a state left to a thread-local destructor could abort the process with a panic.
//! * **Dropped.** Every state is dropped through the guard, outside the store's borrow: when
//!   its thread leaves ([`drop_all`], after the `on_thread_stop` hook), when its run panicked
//!   (by the caller), and once its program is gone. A program is gone when its key is dropped,
//!   which is when the last `AsyncProgram` clone and the last job of it are; that bumps one
//!   process-wide count, and a store that sees the count changed [`sweep`]s the entries of dead
//!   programs the next time its thread runs a per-worker program, ends a job taken from the
//!   queue, or goes idle. Nothing wakes a
//!   sleeping worker for it (a program does not know the pools it ran on): an idle worker
//!   sweeps once it has run a job of any kind and goes idle again, or when it leaves. So a
//!   gone program's states wait at most until each worker's next job, and do not pile up.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crate::guard;
use crate::sync::StaticAtomicU64;

/// Program ids: each `asyncify_with` gets its own.
static NEXT_ID: StaticAtomicU64 = StaticAtomicU64::new(1);
/// How many program keys were ever dropped. A store compares it with the count it last swept
/// at, so that the common case (no program died) costs one relaxed load.
// ORDERING: Relaxed: a store that misses a bump sweeps at its next touch; a dead entry is
// recognised by its `Weak`, not by this count.
static GONE: StaticAtomicU64 = StaticAtomicU64::new(0);

/// The identity and liveness of one per-worker program: held (in an `Arc`) by the program, and
/// weakly by each store entry of it.
#[derive(Debug)]
pub(crate) struct ProgramKey {
    id: u64,
}

impl ProgramKey {
    pub(crate) fn new() -> Arc<ProgramKey> {
        Arc::new(ProgramKey {
            id: NEXT_ID.fetch_add(1, Relaxed),
        })
    }
}

impl Drop for ProgramKey {
    fn drop(&mut self) {
        GONE.fetch_add(1, Relaxed);
    }
}

/// The idle states of one program on this thread.
struct Entry {
    id: u64,
    /// Dead once the program is gone: its states are then swept.
    program: Weak<ProgramKey>,
    /// Each a `Box<S>` of the program's state type `S`.
    idle: Vec<Box<dyn Any>>,
}

#[derive(Default)]
struct Store {
    /// True on a pool thread that has not begun to leave: states put back are kept.
    keeps: bool,
    /// The value of [`GONE`] at the last sweep.
    swept_at: u64,
    /// Few per thread (one per per-worker program that ran here), so a list.
    entries: Vec<Entry>,
}

impl Store {
    /// Takes the entries of programs that are gone out of the store (for the caller to drop
    /// outside the borrow).
    fn take_dead(&mut self) -> Vec<Entry> {
        let gone = GONE.load(Relaxed);
        if gone == self.swept_at {
            return Vec::new();
        }
        self.swept_at = gone;
        let (dead, live) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.program.strong_count() == 0);
        self.entries = live;
        dead
    }
}

thread_local! {
    static STORE: RefCell<Store> = RefCell::default();
}

/// Runs `f` on this thread's store, or returns `None` when the store is gone (user code run
/// from another thread-local's destructor) or borrowed (never, as no user code runs under the
/// borrow; kept as a refusal rather than a panic).
fn with_store<R>(f: impl FnOnce(&mut Store) -> R) -> Option<R> {
    STORE
        .try_with(|s| s.try_borrow_mut().ok().map(|mut s| f(&mut s)))
        .ok()
        .flatten()
}

/// Drops what a store gave up, through the guard, outside its borrow.
fn drop_entries(entries: Vec<Entry>) {
    for entry in entries {
        for state in entry.idle {
            guard::drop("a per-worker state", state);
        }
    }
}

/// Marks this thread as a pool thread whose states are kept until [`drop_all`].
pub(crate) fn keep() {
    with_store(|s| s.keeps = true);
}

/// Takes an idle state of `key`'s program made on this thread, if there is one.
pub(crate) fn take<S: 'static>(key: &ProgramKey) -> Option<Box<S>> {
    let (dead, state) = with_store(|s| {
        let dead = s.take_dead();
        let state = s
            .entries
            .iter_mut()
            .find(|e| e.id == key.id)
            .and_then(|e| e.idle.pop());
        (dead, state)
    })?;
    drop_entries(dead);
    match state?.downcast::<S>() {
        Ok(state) => Some(state),
        // Never: an id belongs to one program, of one state type.
        Err(other) => {
            guard::drop("a per-worker state", other);
            None
        }
    }
}

/// Puts `state` back for the next run of `key`'s program on this thread; drops it if this
/// thread keeps no states.
pub(crate) fn put<S: 'static>(key: &Arc<ProgramKey>, state: Box<S>) {
    let mut state = Some(state as Box<dyn Any>);
    let dead = with_store(|s| {
        let dead = s.take_dead();
        if s.keeps {
            let state = state.take().expect("not yet put");
            match s.entries.iter_mut().find(|e| e.id == key.id) {
                Some(entry) => entry.idle.push(state),
                None => s.entries.push(Entry {
                    id: key.id,
                    program: Arc::downgrade(key),
                    idle: vec![state],
                }),
            }
        }
        dead
    });
    drop_entries(dead.unwrap_or_default());
    if let Some(state) = state {
        guard::drop("a per-worker state", state);
    }
}

/// Drops the states of programs that are gone (a pool thread about to sleep).
pub(crate) fn sweep() {
    if let Some(dead) = with_store(Store::take_dead) {
        drop_entries(dead);
    }
}

/// For a pool thread that leaves: drops every state it holds, and keeps none from now on (a
/// state's `Drop`, or the rest of the thread's exit, may run per-worker programs again: their
/// states are dropped after each run).
pub(crate) fn drop_all() {
    if let Some(entries) = with_store(|s| {
        s.keeps = false;
        std::mem::take(&mut s.entries)
    }) {
        drop_entries(entries);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Counts its drops in a shared cell (states need not be `Send`).
    struct Counted(Rc<std::cell::Cell<u32>>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// Runs `f` on a fresh thread (a store of its own).
    fn on_a_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn a_thread_that_keeps_nothing_drops_a_state_at_once() {
        on_a_thread(|| {
            let drops = Rc::default();
            let key = ProgramKey::new();
            put(&key, Box::new(Counted(Rc::clone(&drops))));
            assert_eq!(drops.get(), 1);
            assert!(take::<Counted>(&key).is_none());
        });
    }

    #[test]
    fn states_come_back_last_first_and_only_to_their_program() {
        on_a_thread(|| {
            keep();
            let (a, b) = (ProgramKey::new(), ProgramKey::new());
            put(&a, Box::new(1u32));
            put(&a, Box::new(2u32));
            put(&b, Box::new(7u32));
            assert_eq!(take::<u32>(&a).as_deref(), Some(&2));
            assert_eq!(take::<u32>(&a).as_deref(), Some(&1));
            assert_eq!(take::<u32>(&a), None);
            assert_eq!(take::<u32>(&b).as_deref(), Some(&7));
            drop_all();
        });
    }

    #[test]
    fn a_gone_programs_states_are_swept_and_drop_all_drops_the_rest() {
        on_a_thread(|| {
            keep();
            let drops = Rc::default();
            let (gone, live) = (ProgramKey::new(), ProgramKey::new());
            put(&gone, Box::new(Counted(Rc::clone(&drops))));
            put(&live, Box::new(Counted(Rc::clone(&drops))));
            drop(gone);
            sweep();
            assert_eq!(drops.get(), 1);
            drop_all();
            assert_eq!(drops.get(), 2);
            // Leaving: nothing is kept any more.
            put(&live, Box::new(Counted(Rc::clone(&drops))));
            assert_eq!(drops.get(), 3);
        });
    }
}
