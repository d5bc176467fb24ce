//! Knowing when every thread of a pool is gone, as one idea: each thread the pool starts holds a
//! [`Sender`], and [`Receiver::wait`] returns once the last one is dropped. The pool keeps one
//! `Sender` of its own to clone for new threads, and drops it when it closes; no live count is
//! kept anywhere else for this.

use std::sync::Arc;
use std::time::Instant;

use crate::sync::{lock, wait, Condvar, Mutex};

struct Inner {
    senders: Mutex<usize>,
    gone: Condvar,
}

/// Held by every thread of a pool (and, until it closes, by the pool itself).
pub(crate) struct Sender(Arc<Inner>);

/// What `shutdown` waits on.
pub(crate) struct Receiver(Arc<Inner>);

pub(crate) fn channel() -> (Sender, Receiver) {
    let inner = Arc::new(Inner {
        senders: Mutex::new(1),
        gone: Condvar::new(),
    });
    (Sender(Arc::clone(&inner)), Receiver(inner))
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        *lock(&self.0.senders) += 1;
        Sender(Arc::clone(&self.0))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut senders = lock(&self.0.senders);
        *senders -= 1;
        if *senders == 0 {
            self.0.gone.notify_all();
        }
    }
}

impl Receiver {
    /// Waits until every `Sender` is dropped, or `deadline` passes; true if they all are.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut senders = lock(&self.0.senders);
        while *senders > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            senders = wait(&self.0.gone, senders, deadline);
        }
        true
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
