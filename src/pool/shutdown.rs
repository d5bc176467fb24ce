//! Knowing when every thread of a pool is gone, as one idea: each thread the pool starts holds a
//! [`Sender`], and [`Receiver::wait`] returns once the last one is dropped. The pool keeps one
//! `Sender` of its own to clone for new threads, and drops it when it closes; no live count is
//! kept anywhere else for this. An async shutdown registers a waker instead of waiting.

use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::guard;
use crate::sync::{lock, wait, Condvar, Mutex};

struct Inner {
    senders: Mutex<State>,
    gone: Condvar,
}

struct State {
    senders: usize,
    /// Async shutdowns waiting for the last sender: one slot per future, whose waker it
    /// replaces when polled again (so polls with new wakers do not grow the list).
    wakers: Vec<WakerSlot>,
}

/// One async shutdown's place in the list: its latest waker.
pub(crate) type WakerSlot = Arc<Mutex<Option<Waker>>>;

/// Held by every thread of a pool (and, until it closes, by the pool itself).
pub(crate) struct Sender(Arc<Inner>);

/// What `shutdown` waits on.
pub(crate) struct Receiver(Arc<Inner>);

pub(crate) fn channel() -> (Sender, Receiver) {
    let inner = Arc::new(Inner {
        senders: Mutex::new(State {
            senders: 1,
            wakers: Vec::new(),
        }),
        gone: Condvar::new(),
    });
    (Sender(Arc::clone(&inner)), Receiver(inner))
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        lock(&self.0.senders).senders += 1;
        Sender(Arc::clone(&self.0))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let wakers = {
            let mut state = lock(&self.0.senders);
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            self.0.gone.notify_all();
            std::mem::take(&mut state.wakers)
        };
        // Outside the lock: wakers are user code.
        for slot in wakers {
            let waker = lock(&slot).take();
            if let Some(waker) = waker {
                guard::wake(waker);
            }
        }
    }
}

impl Receiver {
    /// Waits until every `Sender` is dropped, or `deadline` passes; true if they all are.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut state = lock(&self.0.senders);
        while state.senders > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            state = wait(&self.0.gone, state, deadline);
        }
        true
    }

    /// Ready once every `Sender` is dropped; until then `waker` is woken when the last one
    /// goes. `slot` is the polling future's place in the list, made at its first poll.
    pub(crate) fn poll_gone(&self, waker: &Waker, slot: &mut Option<WakerSlot>) -> Poll<()> {
        // A waker's clone and drop are user code: never under a lock of this module.
        let fresh = match slot {
            Some(slot) => {
                let same = lock(slot).as_ref().is_some_and(|w| w.will_wake(waker));
                (!same).then(|| waker.clone())
            }
            None => Some(waker.clone()),
        };
        let mut state = lock(&self.0.senders);
        if state.senders == 0 {
            drop(state);
            guard::drop("a waker", fresh);
            return Poll::Ready(());
        }
        let Some(fresh) = fresh else {
            return Poll::Pending;
        };
        let replaced = match slot {
            Some(slot) => lock(slot).replace(fresh),
            None => {
                let new: WakerSlot = Arc::new(Mutex::new(Some(fresh)));
                state.wakers.push(Arc::clone(&new));
                *slot = Some(new);
                None
            }
        };
        drop(state);
        guard::drop("a waker", replaced);
        Poll::Pending
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waits_for_the_last_sender() {
        let (tx, rx) = channel();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || drop(tx))
            })
            .collect();
        assert!(
            !rx.wait(Some(Instant::now())),
            "the pool's own sender is still there"
        );
        drop(tx);
        assert!(rx.wait(None));
        for t in threads {
            t.join().unwrap();
        }
        assert!(rx.wait(Some(Instant::now() + Duration::from_secs(1))));
    }
}
