//! What travels with a call: the settings overrides and the tracing span and dispatcher in force
//! at `call`/`spawn` are in force on the worker for exactly that job, nested layers combine
//! (inner wins per key), `scope` carries overrides across awaits and thread migration without
//! leaking, and the worker is clean again after every job, panic or not. Plus the global
//! configuration's rules: typed lookups, `configure` refused inside jobs, atomic merges.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use asyncify_pool::settings::{self, Overrides, SettingsError};
use asyncify_pool::WorkerPool;
use common::{quiet_planned_panics, wait, Barrier, HANG};

fn lm() -> Option<&'static str> {
    settings::get::<&'static str>("lm")
}

#[test]
fn overrides_travel_with_call_and_spawn() {
    let pool = WorkerPool::new(2);
    let program = pool.asyncify(|q: &'static str| (q, lm()));
    let (called, spawned) = settings::context(Overrides::new().with("lm", "big"), || {
        (program.call("q"), pool.spawn(lm))
    });
    // Captured at the call: leaving the context before the job runs changes nothing.
    assert_eq!(lm(), None);
    assert_eq!(wait(called), Ok(("q", Some("big"))));
    assert_eq!(wait(spawned), Ok(Some("big")));
    // A call made outside any context sees none.
    assert_eq!(wait(program.call("plain")), Ok(("plain", None)));

    // Each call carries its own: many calls with different values at once.
    let handles: Vec<_> = (0..50u32)
        .map(|i| {
            settings::context(Overrides::new().with("i", i), || {
                pool.spawn(|| settings::get::<u32>("i"))
            })
        })
        .collect();
    for (i, h) in (0..50u32).zip(handles) {
        assert_eq!(wait(h), Ok(Some(i)));
    }
}

#[test]
fn nested_contexts_layer_and_the_inner_wins_per_key() {
    let pool = WorkerPool::new(1);
    let probe = || {
        (
            settings::get::<u8>("a"),
            settings::get::<u8>("b"),
            settings::get::<u8>("c"),
        )
    };
    settings::context(Overrides::new().with("a", 1u8).with("b", 1u8), || {
        settings::context(Overrides::new().with("b", 2u8).with("c", 2u8), || {
            assert_eq!(probe(), (Some(1), Some(2), Some(2)));
            assert_eq!(wait(pool.spawn(probe)), Ok((Some(1), Some(2), Some(2))));
            assert_eq!(settings::current().len(), 3);
        });
        assert_eq!(probe(), (Some(1), Some(1), None));
        assert_eq!(wait(pool.spawn(probe)), Ok((Some(1), Some(1), None)));
    });
    assert_eq!(probe(), (None, None, None));
    assert!(settings::current().is_empty());
}

#[test]
fn context_is_restored_after_a_panic() {
    quiet_planned_panics();
    settings::context(Overrides::new().with("outer", 1u8), || {
        let caught = std::panic::catch_unwind(|| {
            settings::context(
                Overrides::new().with("outer", 2u8).with("inner", 2u8),
                || panic!("planned panic inside a context"),
            )
        });
        assert!(caught.is_err());
        assert_eq!(settings::get::<u8>("outer"), Some(1));
        assert_eq!(settings::get::<u8>("inner"), None);
    });
    assert!(settings::current().is_empty());
}

#[test]
fn scope_survives_awaits_and_task_migration_and_never_leaks() {
    let pool = WorkerPool::new(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let migrated = rt.block_on(async {
        let mut scoped = Vec::new();
        let mut plain = Vec::new();
        for task in 0..64u32 {
            let pool = pool.clone();
            scoped.push(tokio::spawn(settings::scope(
                Overrides::new().with("task", task),
                async move {
                    let mut threads = HashSet::new();
                    for step in 0..20 {
                        assert_eq!(settings::get::<u32>("task"), Some(task), "step {step}");
                        threads.insert(std::thread::current().id());
                        if step % 5 == 0 {
                            let seen = pool.spawn(|| settings::get::<u32>("task")).await;
                            assert_eq!(seen, Ok(Some(task)));
                        }
                        tokio::task::yield_now().await;
                    }
                    threads.len() > 1
                },
            )));
            // Unscoped tasks polled on the same threads in between: they must see nothing.
            plain.push(tokio::spawn(async {
                for _ in 0..20 {
                    assert!(settings::current().is_empty());
                    assert_eq!(settings::get::<u32>("task"), None);
                    tokio::task::yield_now().await;
                }
            }));
        }
        let mut migrated = 0;
        for t in scoped {
            migrated += usize::from(t.await.unwrap());
        }
        for t in plain {
            t.await.unwrap();
        }
        migrated
    });
    eprintln!("{migrated} of 64 scoped tasks ran on more than one thread");
    assert!(settings::current().is_empty());
}

#[test]
fn scope_layers_on_what_was_in_force_when_it_was_made() {
    // Made inside a context, polled outside it, interleaved with another scoped future on one
    // thread: each sees its own layers during its polls, and the thread sees none in between.
    let a = settings::context(Overrides::new().with("base", "ctx"), || {
        settings::scope(Overrides::new().with("k", "a"), async {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push((settings::get::<&str>("base"), settings::get::<&str>("k")));
                tokio::task::yield_now().await;
            }
            seen
        })
    });
    let b = settings::scope(Overrides::new().with("k", "b"), async {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push((settings::get::<&str>("base"), settings::get::<&str>("k")));
            tokio::task::yield_now().await;
        }
        seen
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (a, b) = rt.block_on(async {
        let between = async {
            for _ in 0..3 {
                assert!(
                    settings::current().is_empty(),
                    "nothing leaks between polls"
                );
                tokio::task::yield_now().await;
            }
        };
        let (a, b, ()) = futures::future::join3(a, b, between).await;
        (a, b)
    });
    assert_eq!(a, vec![(Some("ctx"), Some("a")); 3]);
    assert_eq!(b, vec![(None, Some("b")); 3]);
}

#[test]
fn calls_made_inside_a_job_inherit_its_overrides() {
    let pool = WorkerPool::new(1);
    let inner_pool = pool.clone();
    let outer = settings::context(Overrides::new().with("lm", "outer"), || {
        pool.spawn(move || {
            let inherited = inner_pool.spawn(lm).wait();
            let layered = settings::context(Overrides::new().with("extra", 1u8), || {
                inner_pool
                    .spawn(|| (lm(), settings::get::<u8>("extra")))
                    .wait()
            });
            // The job's own overrides are intact after its nested calls.
            (inherited, layered, lm(), settings::get::<u8>("extra"))
        })
    });
    assert_eq!(
        wait(outer),
        Ok((
            Ok(Some("outer")),
            Ok((Some("outer"), Some(1))),
            Some("outer"),
            None
        ))
    );
}

#[test]
fn the_worker_is_clean_after_each_job_also_after_a_panic() {
    quiet_planned_panics();
    let pool = WorkerPool::new(1);
    let clean = || (settings::current().is_empty(), lm());
    assert_eq!(
        wait(settings::context(Overrides::new().with("lm", "x"), || pool.spawn(lm))),
        Ok(Some("x"))
    );
    assert_eq!(wait(pool.spawn(clean)), Ok((true, None)));
    let panicked = settings::context(Overrides::new().with("lm", "y"), || {
        pool.spawn(|| -> () { panic!("planned panic with overrides in force") })
    });
    assert!(wait(panicked).unwrap_err().is_panic());
    assert_eq!(wait(pool.spawn(clean)), Ok((true, None)));
    // A panic inside a nested context inside the job, too.
    let panicked = pool.spawn(|| {
        settings::context(Overrides::new().with("lm", "z"), || -> () {
            panic!("planned panic in a nested context")
        })
    });
    assert!(wait(panicked).unwrap_err().is_panic());
    assert_eq!(wait(pool.spawn(clean)), Ok((true, None)));

    // Every worker of a bigger pool, probed all at once (they meet at a barrier, so each
    // probe is on a different thread) after a burst of jobs with overrides.
    let pool = WorkerPool::new(4);
    let burst: Vec<_> = (0..40u32)
        .map(|i| {
            settings::context(Overrides::new().with("lm", "burst").with("i", i), || {
                pool.spawn(lm)
            })
        })
        .collect();
    for h in burst {
        assert_eq!(wait(h), Ok(Some("burst")));
    }
    let meet = Barrier::new(4);
    let probes: Vec<_> = (0..4)
        .map(|_| {
            let meet = meet.clone();
            pool.spawn(move || {
                meet.wait();
                (std::thread::current().name().unwrap().to_owned(), clean())
            })
        })
        .collect();
    let mut names = HashSet::new();
    for p in probes {
        let (name, seen) = wait(p).unwrap();
        assert_eq!(seen, (true, None), "{name} is clean");
        names.insert(name);
    }
    assert_eq!(names.len(), 4);
}

#[test]
fn get_with_the_wrong_type() {
    let pool = WorkerPool::new(1);
    let check = || {
        (
            settings::get::<String>("n"),
            settings::get::<u32>("n"),
            settings::try_get::<String>("n"),
            settings::try_get::<u32>("missing"),
        )
    };
    let expected = (
        None,
        Some(5),
        Err(SettingsError::WrongType {
            key: "n".to_owned(),
            expected: std::any::type_name::<String>(),
            found: "u32",
        }),
        Ok(None),
    );
    settings::context(Overrides::new().with("n", 5u32), || {
        assert_eq!(check(), expected);
        assert_eq!(wait(pool.spawn(check)), Ok(expected.clone()));
    });
    // An override of another type still shadows the global value: it is what is in force.
    settings::configure(Overrides::new().with("shadowed", 1u32)).unwrap();
    settings::context(Overrides::new().with("shadowed", "text"), || {
        assert_eq!(settings::get::<u32>("shadowed"), None);
        assert!(settings::try_get::<u32>("shadowed").is_err());
        assert_eq!(settings::get::<&str>("shadowed"), Some("text"));
    });
    assert_eq!(settings::get::<u32>("shadowed"), Some(1));
}

#[test]
fn configure_inside_a_job_is_refused() {
    let pool = WorkerPool::new(1);
    let inner = pool.clone();
    let refused = wait(pool.spawn(move || {
        let direct = settings::configure(Overrides::new().with("from_job", 1u8));
        let in_context = settings::context(Overrides::new().with("x", 1u8), || {
            settings::configure(Overrides::new().with("from_job", 2u8))
        });
        let nested = inner
            .spawn(|| settings::configure(Overrides::new().with("from_job", 3u8)))
            .wait()
            .unwrap();
        (direct, in_context, nested)
    }))
    .unwrap();
    assert_eq!(
        refused,
        (
            Err(SettingsError::InsideJob),
            Err(SettingsError::InsideJob),
            Err(SettingsError::InsideJob)
        )
    );
    assert_eq!(settings::get::<u8>("from_job"), None, "nothing changed");
    // Outside a job, on any thread, it is allowed.
    std::thread::spawn(|| settings::configure(Overrides::new().with("from_thread", 1u8)))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(settings::get::<u8>("from_thread"), Some(1));
}

#[test]
fn configure_merges_keys_and_keeps_the_others() {
    settings::configure(Overrides::new().with("merge_x", 1u8)).unwrap();
    settings::configure(Overrides::new().with("merge_y", 2u8)).unwrap();
    settings::configure(Overrides::new().with("merge_x", 3u8)).unwrap();
    assert_eq!(settings::get::<u8>("merge_x"), Some(3));
    assert_eq!(settings::get::<u8>("merge_y"), Some(2));
    // Seen by jobs on workers too (the global configuration is not captured; it is shared).
    let pool = WorkerPool::new(1);
    assert_eq!(
        wait(pool.spawn(|| (
            settings::get::<u8>("merge_x"),
            settings::get::<u8>("merge_y")
        ))),
        Ok((Some(3), Some(2)))
    );
}

/// The writer configures `pair_a` and `pair_b` together to 1, 2, 3, … Readers look them up one
/// after the other. Each configuration they see is at least as new as the one before, so
/// reading `a` then `b` must give `a <= b`, and reading `b` then `a` must give `b <= a`; a
/// configuration applied key by key breaks one of the two orders whichever key it writes first.
#[test]
fn configure_is_atomic_for_readers() {
    const WRITES: u64 = 3_000;
    let done = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (done, checks) = (done.clone(), checks.clone());
            std::thread::spawn(move || {
                while !done.load(SeqCst) {
                    let a = settings::get::<u64>("pair_a");
                    let b = settings::get::<u64>("pair_b");
                    assert!(a <= b, "a mix: a={a:?} then b={b:?}");
                    let b = settings::get::<u64>("pair_b");
                    let a = settings::get::<u64>("pair_a");
                    assert!(b <= a, "a mix: b={b:?} then a={a:?}");
                    checks.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for n in 1..=WRITES {
        settings::configure(Overrides::new().with("pair_a", n).with("pair_b", n)).unwrap();
    }
    done.store(true, SeqCst);
    for r in readers {
        r.join().expect("a reader saw a mix of two configurations");
    }
    assert_eq!(settings::get::<u64>("pair_a"), Some(WRITES));
    assert_eq!(settings::get::<u64>("pair_b"), Some(WRITES));
    eprintln!("{} paired reads", checks.load(SeqCst));
}

mod trace {
    //! A subscriber layer that records, per event and per span entry/exit, the thread it
    //! happened on and the span names involved.
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::Id;
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Record {
        /// (thread, message, span names innermost first)
        Event(String, String, Vec<&'static str>),
        Enter(String, &'static str),
        Exit(String, &'static str),
    }

    #[derive(Clone, Default)]
    pub struct Recorder(pub Arc<Mutex<Vec<Record>>>);

    impl Recorder {
        pub fn records(&self) -> Vec<Record> {
            self.0.lock().unwrap().clone()
        }
    }

    fn thread() -> String {
        std::thread::current().name().unwrap_or("?").to_owned()
    }

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            let spans = ctx
                .event_scope(event)
                .map(|scope| scope.map(|s| s.name()).collect())
                .unwrap_or_default();
            self.0
                .lock()
                .unwrap()
                .push(Record::Event(thread(), message.0, spans));
        }

        fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
            let name = ctx.span(id).unwrap().name();
            self.0.lock().unwrap().push(Record::Enter(thread(), name));
        }

        fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
            let name = ctx.span(id).unwrap().name();
            self.0.lock().unwrap().push(Record::Exit(thread(), name));
        }
    }
}

#[test]
fn the_callers_span_and_thread_local_subscriber_travel_with_the_call() {
    use trace::Record::{Enter, Event, Exit};
    use tracing_subscriber::layer::SubscriberExt;

    quiet_planned_panics();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let stop_tx = Mutex::new(stop_tx);
    let pool = WorkerPool::builder()
        .threads(1)
        .thread_name("traced")
        .on_thread_stop(move |_| {
            // On the worker, outside any job: no span, and not the caller's subscriber.
            tracing::info!("worker stopping");
            let _ = stop_tx
                .lock()
                .unwrap()
                .send(tracing::Span::current().is_none());
        })
        .build()
        .unwrap();
    let recorder = trace::Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());

    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("request", id = 7);
        let _entered = span.enter();
        let ok = pool.spawn(|| {
            tracing::info!("on the worker");
            tracing::info_span!("inner").in_scope(|| tracing::info!("deeper"));
        });
        wait(ok).unwrap();
        let panicked = pool.spawn(|| -> () {
            tracing::info!("about to panic");
            panic!("planned panic inside a span")
        });
        assert!(wait(panicked).unwrap_err().is_panic());
    });

    // A call from another thread, which has no subscriber: its events reach nobody, even though
    // it runs on the same worker right after the traced jobs.
    std::thread::spawn({
        let pool = pool.clone();
        move || wait(pool.spawn(|| tracing::info!("untraced caller"))).unwrap()
    })
    .join()
    .unwrap();
    pool.shutdown();
    assert_eq!(
        stop_rx.recv_timeout(HANG),
        Ok(true),
        "no span on the worker after its jobs"
    );

    let on_worker: Vec<_> = recorder
        .records()
        .into_iter()
        .filter(|r| match r {
            Event(t, ..) | Enter(t, _) | Exit(t, _) => t == "traced-0",
        })
        .collect();
    let w = || "traced-0".to_owned();
    assert_eq!(
        on_worker,
        vec![
            Enter(w(), "request"),
            Event(w(), "on the worker".into(), vec!["request"]),
            Enter(w(), "inner"),
            Event(w(), "deeper".into(), vec!["inner", "request"]),
            Exit(w(), "inner"),
            Exit(w(), "request"),
            Enter(w(), "request"),
            Event(w(), "about to panic".into(), vec!["request"]),
            Exit(w(), "request"),
        ],
        "the caller's span is entered for exactly each job, also one that panics; \
         nothing else reaches the caller's subscriber"
    );
}

/// A future scoped outside a job with no overrides, polled inside a job, sees none: a scope's
/// overrides are those in force where it was made, not those of whatever job polls it.
#[test]
fn an_empty_scope_polled_inside_a_job_does_not_see_the_jobs_overrides() {
    let pool = WorkerPool::new(1);
    let scoped = settings::scope(Overrides::new(), async { settings::get::<&str>("lm") });
    let job = settings::context(Overrides::new().with("lm", "the job's"), || {
        pool.spawn(move || {
            let inside = pollster::block_on(scoped);
            (settings::get::<&str>("lm"), inside)
        })
    });
    assert_eq!(common::wait(job), Ok((Some("the job's"), None)));
}

/// A program with every option: each attempt, the first (on the short way) and those after a
/// backoff (made by the call from the pool's timer), runs under the caller's span and
/// thread-scoped subscriber, with the caller's overrides.
#[test]
fn every_attempt_of_a_program_with_options_runs_under_the_callers_span_and_subscriber() {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    let pool = WorkerPool::new(2);
    let runs = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&runs);
    let program = pool
        .asyncify(move |_: ()| {
            let n = r.fetch_add(1, SeqCst) + 1;
            let lm = settings::get::<&str>("lm");
            tracing::info!("attempt {n} with {lm:?}");
            n
        })
        .timeout(Duration::from_secs(60))
        .retry(
            asyncify_pool::Retry::new(3)
                .backoff(Duration::from_millis(2), Duration::from_millis(2))
                .retry_if(|n: &u32| *n < 3),
        )
        .rate_limit(1000, Duration::from_secs(1))
        .concurrency_limit(1);
    let recorder = trace::Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let answer = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("request");
        let _entered = span.enter();
        settings::context(Overrides::new().with("lm", "small"), || {
            wait(program.call(()))
        })
    });
    assert_eq!(answer, Ok(3));
    let events: Vec<_> = recorder
        .records()
        .into_iter()
        .filter_map(|r| match r {
            trace::Record::Event(_, message, spans) => Some((message, spans)),
            _ => None,
        })
        .collect();
    let expected: Vec<_> = (1..=3)
        .map(|n| (format!("attempt {n} with Some(\"small\")"), vec!["request"]))
        .collect();
    assert_eq!(
        events, expected,
        "each attempt's event, in the caller's span"
    );
}
