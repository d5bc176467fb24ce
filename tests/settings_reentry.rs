//! Settings are re-entrant: a stored value's `Clone` or `Drop` is user code, and user code may
//! read settings or enter a context. And a value `configure` replaced is released once no
//! reader holds it, not kept alive by every thread that once read the configuration.
//!
//! Each test runs in a child process: they change the process-wide configuration, and on
//! today's code some deadlock.

mod common;

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::WorkerPool;
use common::{in_child, wait, HANG};

/// Reads a setting in its `Clone`.
#[derive(Debug)]
struct ReadsOnClone {
    seen: Option<usize>,
}

impl Clone for ReadsOnClone {
    fn clone(&self) -> Self {
        ReadsOnClone {
            seen: settings::get::<usize>("async_max_workers"),
        }
    }
}

#[test]
fn reading_settings_inside_a_global_values_clone() {
    in_child("reading_settings_inside_a_global_values_clone", || {
        settings::configure(Overrides::new().with("reads_on_clone", ReadsOnClone { seen: None }))
            .unwrap();
        let got = settings::get::<ReadsOnClone>("reads_on_clone").expect("it was configured");
        assert_eq!(got.seen, Some(8));
        let elsewhere = std::thread::spawn(|| settings::get::<ReadsOnClone>("reads_on_clone"));
        assert_eq!(elsewhere.join().unwrap().unwrap().seen, Some(8));
        let pool = WorkerPool::new(1);
        let in_job = wait(pool.spawn(|| settings::get::<ReadsOnClone>("reads_on_clone")));
        assert_eq!(in_job.unwrap().unwrap().seen, Some(8));
    });
}

/// Reads a setting in its `Drop`, and records what it read.
struct ReadsOnDrop {
    seen: Arc<Mutex<Vec<Option<usize>>>>,
}

impl Drop for ReadsOnDrop {
    fn drop(&mut self) {
        let n = settings::get::<usize>("async_max_workers");
        self.seen.lock().unwrap().push(n);
    }
}

/// Configures a `ReadsOnDrop`, optionally reads the configuration on this thread, replaces the
/// value, and checks that its `Drop` ran and could read.
fn replace_a_value_that_reads_on_drop(read_first: bool) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    settings::configure(Overrides::new().with("reads_on_drop", ReadsOnDrop { seen: seen.clone() }))
        .unwrap();
    if read_first {
        assert_eq!(settings::get::<usize>("async_max_workers"), Some(8));
    }
    settings::configure(Overrides::new().with("reads_on_drop", 0u8)).unwrap();
    // Released by now or at this thread's next read at the latest.
    let deadline = Instant::now() + HANG;
    while seen.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the replaced value was never dropped"
        );
        assert_eq!(settings::get::<u8>("reads_on_drop"), Some(0));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(*seen.lock().unwrap(), [Some(8)]);
    assert_eq!(settings::get::<usize>("async_max_workers"), Some(8));
}

#[test]
fn reading_settings_inside_the_drop_of_a_value_configure_replaces() {
    in_child(
        "reading_settings_inside_the_drop_of_a_value_configure_replaces",
        || replace_a_value_that_reads_on_drop(false),
    );
}

#[test]
fn reading_settings_inside_the_drop_of_a_replaced_value_this_thread_had_read() {
    in_child(
        "reading_settings_inside_the_drop_of_a_replaced_value_this_thread_had_read",
        || replace_a_value_that_reads_on_drop(true),
    );
}

#[derive(Clone)]
struct Held(#[allow(dead_code)] Arc<()>);

#[test]
fn a_replaced_value_is_released_without_its_readers_reading_again() {
    in_child(
        "a_replaced_value_is_released_without_its_readers_reading_again",
        || {
            let strong = Arc::new(());
            let weak = Arc::downgrade(&strong);
            settings::configure(Overrides::new().with("held", Held(strong))).unwrap();

            // Readers that read it once, then go idle but stay alive.
            let (ready_tx, ready_rx) = mpsc::channel();
            let mut releases = Vec::new();
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    let ready = ready_tx.clone();
                    let (release_tx, release_rx) = mpsc::channel::<()>();
                    releases.push(release_tx);
                    std::thread::spawn(move || {
                        assert!(settings::get::<Held>("held").is_some());
                        ready.send(()).unwrap();
                        let _ = release_rx.recv();
                    })
                })
                .collect();
            for _ in 0..4 {
                ready_rx.recv_timeout(HANG).unwrap();
            }

            settings::configure(Overrides::new().with("held", "replaced")).unwrap();
            // This thread may read (it never read the old value); the idle readers do not.
            let deadline = Instant::now() + HANG;
            while weak.upgrade().is_some() {
                assert!(
                    Instant::now() < deadline,
                    "the replaced value is still alive: idle threads that once read the \
                     configuration keep it"
                );
                assert_eq!(settings::get::<&str>("held"), Some("replaced"));
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(releases);
            for reader in readers {
                reader.join().unwrap();
            }
        },
    );
}

/// Enters a context in its `Clone`, and keeps what it read there.
#[derive(Debug)]
struct EntersOnClone {
    seen: Option<u32>,
}

impl Clone for EntersOnClone {
    fn clone(&self) -> Self {
        let seen = settings::context(Overrides::new().with("inner", 5u32), || {
            settings::get::<u32>("inner")
        });
        EntersOnClone { seen }
    }
}

#[test]
fn entering_a_context_inside_an_override_values_clone() {
    in_child("entering_a_context_inside_an_override_values_clone", || {
        let outer = || Overrides::new().with("enters", EntersOnClone { seen: None });
        let got = settings::context(outer(), || {
            let got = settings::get::<EntersOnClone>("enters");
            // The inner context is gone again; the outer one is still in force.
            assert_eq!(settings::get::<u32>("inner"), None);
            assert!(settings::current().contains_key("enters"));
            got
        });
        assert_eq!(got.expect("it is in force").seen, Some(5));

        // Read on a worker, from the overrides the job carried.
        let pool = WorkerPool::new(1);
        let handle = settings::context(outer(), || {
            pool.spawn(|| {
                let got = settings::get::<EntersOnClone>("enters");
                (got.and_then(|g| g.seen), settings::get::<u32>("inner"))
            })
        });
        assert_eq!(wait(handle), Ok((Some(5), None)));
    });
}
