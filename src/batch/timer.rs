//! Waking an awaited batch at a straggler deadline: an entry on the pool's one timer, which
//! wakes the driver unless the driver is gone first.

use std::sync::{Arc, Weak};
use std::time::Instant;

use super::ticket::Shared;
use crate::pool::{Alarm, Registry, TimerKey};

/// The timer entries of one driver.
pub(super) struct Timers {
    registry: Arc<Registry>,
    /// The deadline of the last entry made.
    next: Option<Instant>,
    /// Entries that may not have rung yet, cancelled when the driver goes.
    keys: Vec<TimerKey>,
}

impl Timers {
    pub(super) fn new(registry: Arc<Registry>) -> Self {
        Timers {
            registry,
            next: None,
            keys: Vec::new(),
        }
    }

    /// Makes sure the driver is woken by `deadline`, unless an entry already pending rings
    /// earlier. (On a closed pool the deadline is checked when an item finishes.)
    pub(super) fn arm<P, I>(&mut self, deadline: Instant, shared: &Arc<Shared<P, I>>)
    where
        P: ?Sized + Send + Sync + 'static,
        I: Send + 'static,
    {
        let now = Instant::now();
        if matches!(self.next, Some(t) if t > now && t <= deadline) {
            return;
        }
        let alarm: Weak<dyn Alarm> = Arc::downgrade(&(Arc::clone(shared) as Arc<dyn Alarm>));
        if let Ok(key) = self.registry.timer.at(deadline, alarm) {
            self.keys.retain(|k| k.when() > now);
            self.keys.push(key);
            self.next = Some(deadline);
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        for key in self.keys.drain(..) {
            self.registry.timer.cancel(key);
        }
    }
}

impl<P, I> Alarm for Shared<P, I>
where
    P: ?Sized + Send + Sync + 'static,
    I: Send + 'static,
{
    fn ring(self: Arc<Self>) {
        self.wake();
        // Possibly the last owner, with events and the program holding user values.
        crate::guard::drop("a batch's inbox", self);
    }
}
