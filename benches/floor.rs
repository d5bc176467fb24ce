//! The floor of the benchmarks: bare threads pulling boxed closures from one crossbeam
//! unbounded channel, each answering through a `oneshot`. No cancellation, panic handling,
//! context or counting: the physical limit of this design, the others are read as ratios to it.
//! Shared by `pool.rs` and the A/B harness (`ab_harness/harness.rs`, which `ab.sh` builds with
//! a copy of this file next to it).

use std::thread::{self, JoinHandle};

type Task = Box<dyn FnOnce() + Send>;

/// Bare threads, one crossbeam queue of boxed closures, a oneshot per call.
pub struct Floor {
    tx: Option<crossbeam_channel::Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl Floor {
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
        let threads = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || {
                    while let Ok(task) = rx.recv() {
                        task();
                    }
                })
            })
            .collect();
        Floor {
            tx: Some(tx),
            threads,
        }
    }

    /// Queues `f` at once; its result comes back through the returned oneshot.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let task: Task = Box::new(move || {
            let _ = tx.send(f());
        });
        let _ = self.tx.as_ref().expect("open until dropped").send(task);
        rx
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
