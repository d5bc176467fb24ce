//! Waking an awaited batch at a straggler deadline: a short-lived thread that sleeps until the
//! deadline and wakes the driver, unless the driver is gone first.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::Instant;

use super::ticket::Shared;

/// The timer threads of one driver.
pub(super) struct Timers {
    /// The deadline of the last timer started.
    next: Option<Instant>,
    threads: Vec<thread::JoinHandle<()>>,
    /// Held while the driver lives; the threads leave without waiting when it is gone.
    alive: Option<Arc<()>>,
}

impl Timers {
    pub(super) fn new() -> Self {
        Timers {
            next: None,
            threads: Vec::new(),
            alive: Some(Arc::new(())),
        }
    }

    /// Makes sure the driver is woken by `deadline`, unless a timer already pending fires
    /// earlier.
    pub(super) fn arm<P, I>(&mut self, deadline: Instant, shared: &Arc<Shared<P, I>>)
    where
        P: ?Sized + Send + Sync + 'static,
        I: Send + 'static,
    {
        let now = Instant::now();
        if matches!(self.next, Some(t) if t > now && t <= deadline) {
            return;
        }
        let Some(alive) = self.alive.as_ref().map(Arc::downgrade) else {
            return;
        };
        let shared: Weak<Shared<P, I>> = Arc::downgrade(shared);
        let spawned = thread::Builder::new()
            .name("asyncify-batch-timer".to_owned())
            .spawn(move || loop {
                if alive.strong_count() == 0 {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    if let Some(shared) = shared.upgrade() {
                        shared.wake();
                        // Possibly the last owner, with events and the program holding user
                        // values.
                        crate::guard::drop("a batch's inbox", shared);
                    }
                    return;
                }
                thread::park_timeout(deadline - now);
            });
        match spawned {
            Ok(timer) => {
                self.threads.retain(|t| !t.is_finished());
                self.threads.push(timer);
                self.next = Some(deadline);
            }
            Err(e) => crate::guard::warn(format_args!(
                "no timer thread for a straggler deadline ({e}); it is checked when an item finishes"
            )),
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.alive = None;
        for timer in &self.threads {
            timer.thread().unpark();
        }
    }
}
