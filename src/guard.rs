//! The one boundary between the pool and user code.
//!
//! Everything a user supplies may panic, block, or call back into the pool and the settings:
//! the program and its inputs and outputs, panic payloads (and their destructors), overrides
//! values, wakers, hooks, batch callbacks, tracing subscribers. The pool runs such code only
//! through the functions here, and never while it holds one of its own locks (the functions
//! take no lock, and their callers release theirs first). A reviewer checks two things: user
//! code runs here and only here, and no lock guard is alive at a call.
//!
//! * [`call`] runs code whose panic has somewhere to go (a program: its caller gets
//!   [`JobError::Panicked`](crate::JobError::Panicked)). It returns the panic's message and has
//!   already disposed of the payload.
//! * [`quietly`] and [`drop`] run code whose panic has nowhere to go (a destructor, a waker, a
//!   hook): the panic is reported through `tracing` and the pool goes on.
//! * [`resume`] passes a panic that [`call`] caught on to the enclosing `call`, once the code
//!   in between has cleaned up.
//! * [`wake_soon`] and [`drop_soon`] end a job that never ran: at once (its work is dropped,
//!   then its caller woken, who then finds everything let go of), or, inside
//!   [`telling_all_first`], the work only once every caller of a set of such jobs has been
//!   woken, so that one job's `Drop` that blocks keeps no other caller from being told.
//!
//! A payload is itself user code when dropped: its `Drop` may panic, and the new payload's
//! `Drop` too. Disposal drops payloads one after another under the guard and, after
//! [`MAX_NESTED_PAYLOADS`], leaks the last one rather than loop forever. Nothing here can
//! cost a worker thread, a permit or an answer.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::task::Waker;

use crate::sync::StaticAtomicUsize;

/// How many payloads in a row (each dropped, panicking with the next) disposal drops before it
/// leaks the last one.
const MAX_NESTED_PAYLOADS: usize = 8;

/// Runs `f`; a panic comes back as its message, with the payload already disposed of.
pub(crate) fn call<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = message(&*payload);
        dispose(payload);
        message
    })
}

/// Unwinds again with the message of a panic that [`call`] caught, so that an enclosing `call`
/// (the job's) reports it; for code that had to clean up between the two (a per-worker state
/// whose run panicked). No panic hook runs a second time.
pub(crate) fn resume(message: String) -> ! {
    std::panic::resume_unwind(Box::new(message))
}

/// Runs `f`, whose panic has nowhere to go: it is reported (as from `what`) and dropped.
pub(crate) fn quietly(what: &'static str, f: impl FnOnce()) {
    let _ = returned(what, f);
}

/// [`quietly`], saying whether `f` returned (false: it panicked, and that was reported).
pub(crate) fn returned(what: &'static str, f: impl FnOnce()) -> bool {
    match call(f) {
        Ok(()) => true,
        Err(message) => {
            report(what, &message);
            false
        }
    }
}

/// Drops a value that user code owns (`what` names it in the report if its `Drop` panics).
pub(crate) fn drop<V>(what: &'static str, value: V) {
    quietly(what, move || std::mem::drop(value));
}

/// Wakes a user's waker (its `wake` may panic).
pub(crate) fn wake(waker: Waker) {
    quietly("a waker", move || waker.wake());
}

/// Wakes the caller of a job that ends without running: at once, or, while the closure of a
/// [`telling_all_first`] runs, once it has returned.
pub(crate) fn wake_soon(waker: Waker) {
    if SCOPES.load(Relaxed) == 0 {
        return wake(waker);
    }
    let mut later = Some(waker);
    let _ = HELD_BACK.try_with(|held| {
        if let Some(wakers) = held.borrow_mut().as_mut().and_then(|h| h.wakers.as_mut()) {
            wakers.extend(later.take());
        }
    });
    if let Some(waker) = later {
        wake(waker);
    }
}

/// Drops the work of a job that ends without running (user values: the program, its input,
/// the caller's context): at once, or, inside a [`telling_all_first`], after it has woken
/// every caller.
pub(crate) fn drop_soon<V: Send + 'static>(what: &'static str, value: V) {
    if SCOPES.load(Relaxed) == 0 {
        return drop(what, value);
    }
    let mut later = Some(value);
    let _ = HELD_BACK.try_with(|held| {
        if let Some(held) = held.borrow_mut().as_mut() {
            let value = later.take().expect("taken once");
            held.values.push((what, Box::new(value)));
        }
    });
    if let Some(value) = later {
        drop(what, value);
    }
}

/// Runs `f`, which ends many jobs at once (a pool letting go of the jobs it will not run): the
/// wakers `f` hands to [`wake_soon`] wait until `f` returns, and are then all woken; the values
/// handed to [`drop_soon`] until then, and while those wakers run, are dropped after the last
/// of them, each through the guard. So one job's `Drop` that blocks keeps no other caller from
/// being told. A waker that ends more calls as it runs (a retried call's driver, told that its
/// attempt will not run) wakes their callers at once, and their values join the others. `f`
/// itself is pool code.
pub(crate) fn telling_all_first<R>(f: impl FnOnce() -> R) -> R {
    /// Wakes and drops what the scope held and puts back the outer scope, also if `f` unwinds.
    struct Scope(Option<HeldBack>);

    impl Drop for Scope {
        fn drop(&mut self) {
            let _counted = Counted;
            let wakers = HELD_BACK
                .try_with(|held| held.borrow_mut().as_mut().and_then(|h| h.wakers.take()))
                .ok()
                .flatten()
                .unwrap_or_default();
            for waker in wakers {
                wake(waker);
            }
            let held = HELD_BACK
                .try_with(|held| held.replace(self.0.take()))
                .ok()
                .flatten()
                .unwrap_or_default();
            for (what, value) in held.values {
                drop(what, value);
            }
        }
    }

    /// Takes the scope off [`SCOPES`] once it has let go of all it held.
    struct Counted;

    impl Drop for Counted {
        fn drop(&mut self) {
            SCOPES.fetch_sub(1, Relaxed);
        }
    }

    SCOPES.fetch_add(1, Relaxed);
    let scope = HeldBack {
        wakers: Some(Vec::new()),
        values: Vec::new(),
    };
    let outer = HELD_BACK
        .try_with(|held| held.replace(Some(scope)))
        .ok()
        .flatten();
    let _scope = Scope(outer);
    f()
}

/// What a [`telling_all_first`] holds back: the wakers while its closure runs (`None` once
/// they are being woken), the values until the end.
#[derive(Default)]
struct HeldBack {
    wakers: Option<Vec<Waker>>,
    values: Vec<(&'static str, Box<dyn Any + Send>)>,
}

/// How many [`telling_all_first`] scopes run now, on any thread: while none does (nearly
/// always), [`wake_soon`] and [`drop_soon`] act at once without looking at [`HELD_BACK`]. A
/// thread sees its own scope's count in program order.
static SCOPES: StaticAtomicUsize = StaticAtomicUsize::new(0);

thread_local! {
    /// The innermost [`telling_all_first`] running on this thread, if any.
    static HELD_BACK: std::cell::RefCell<Option<HeldBack>> = const { std::cell::RefCell::new(None) };
}

/// Tells the application, through `tracing`, that something went wrong that nobody could be
/// told otherwise (no spare thread could be started, say). A subscriber is user code: a panic
/// in it is disposed of.
pub(crate) fn warn(message: std::fmt::Arguments<'_>) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(
        || tracing::warn!(target: "asyncify_pool", "{message}"),
    )) {
        dispose(payload);
    }
}

/// The text of a panic payload: the `&str` or `String` it carries, or a note saying it has none.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<panic payload is not a string>".to_owned()
    }
}

/// Drops a payload, and the payloads its destructor panics with, up to a bound; leaks the rest.
fn dispose(mut payload: Box<dyn Any + Send>) {
    for _ in 0..MAX_NESTED_PAYLOADS {
        match catch_unwind(AssertUnwindSafe(move || std::mem::drop(payload))) {
            Ok(()) => return,
            Err(next) => payload = next,
        }
    }
    std::mem::forget(payload);
}

/// Tells the application, through `tracing`, that user code panicked where nobody could be told.
/// A subscriber that panics while reporting is user code too: its payload is disposed of.
fn report(what: &'static str, message: &str) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| {
        tracing::error!(
            target: "asyncify_pool",
            "{what} panicked and asyncify-pool went on: {message}"
        )
    })) {
        dispose(payload);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    /// A payload whose every drop panics with another such payload.
    struct Hydra;

    impl Drop for Hydra {
        fn drop(&mut self) {
            DROPS.fetch_add(1, SeqCst);
            std::panic::panic_any(Hydra);
        }
    }

    #[test]
    fn a_payload_whose_drop_panics_forever_is_dropped_a_bounded_number_of_times() {
        let out = call(|| -> u8 { std::panic::panic_any(Hydra) });
        assert_eq!(out, Err("<panic payload is not a string>".to_owned()));
        assert_eq!(DROPS.load(SeqCst), MAX_NESTED_PAYLOADS);
    }

    /// Records, in order, the wake-ups and drops it sees.
    #[derive(Clone, Default)]
    struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    struct Noted(Log, &'static str);

    impl Drop for Noted {
        fn drop(&mut self) {
            self.0 .0.lock().unwrap().push(format!("drop {}", self.1));
        }
    }

    struct Woken(Log, &'static str);

    impl std::task::Wake for Woken {
        fn wake(self: std::sync::Arc<Self>) {
            self.0 .0.lock().unwrap().push(format!("wake {}", self.1));
        }
    }

    fn waker(log: &Log, name: &'static str) -> Option<Waker> {
        Some(Waker::from(std::sync::Arc::new(Woken(log.clone(), name))))
    }

    /// A waker that, as it is woken, ends another call: hands over that call's value and
    /// waker, as a retried call's driver does when its attempt is revoked.
    struct EndsAnother(Log);

    impl std::task::Wake for EndsAnother {
        fn wake(self: std::sync::Arc<Self>) {
            self.0 .0.lock().unwrap().push("wake driver".to_owned());
            drop_soon("b", Noted(self.0.clone(), "b"));
            wake_soon(waker(&self.0, "b").unwrap());
        }
    }

    #[test]
    fn outside_a_scope_a_job_that_never_ran_is_let_go_of_at_once() {
        let log = Log::default();
        drop_soon("a", Noted(log.clone(), "a"));
        wake_soon(waker(&log, "a").unwrap());
        assert_eq!(*log.0.lock().unwrap(), ["drop a", "wake a"]);
    }

    #[test]
    fn telling_all_first_wakes_every_caller_before_any_work_is_dropped_even_as_it_unwinds() {
        let log = Log::default();
        let got = telling_all_first(|| {
            drop_soon("a", Noted(log.clone(), "a"));
            wake_soon(waker(&log, "a").unwrap());
            drop_soon("c", Noted(log.clone(), "c"));
            wake_soon(Waker::from(std::sync::Arc::new(EndsAnother(log.clone()))));
            assert!(log.0.lock().unwrap().is_empty(), "held back until the end");
            7
        });
        assert_eq!(got, 7);
        // The caller the driver's wake-up ended is woken then, still before any value is
        // dropped.
        let order = [
            "wake a",
            "wake driver",
            "wake b",
            "drop a",
            "drop c",
            "drop b",
        ];
        assert_eq!(*log.0.lock().unwrap(), order);
        // Nested: the inner scope lets go of its own at its end, the outer keeps holding.
        log.0.lock().unwrap().clear();
        telling_all_first(|| {
            drop_soon("outer", Noted(log.clone(), "outer"));
            telling_all_first(|| drop_soon("inner", Noted(log.clone(), "inner")));
            assert_eq!(*log.0.lock().unwrap(), ["drop inner"]);
        });
        assert_eq!(*log.0.lock().unwrap(), ["drop inner", "drop outer"]);
        // A scope that unwinds still lets go of all, and after it, at once again.
        log.0.lock().unwrap().clear();
        let unwound = catch_unwind(AssertUnwindSafe(|| {
            telling_all_first(|| {
                drop_soon("d", Noted(log.clone(), "d"));
                wake_soon(waker(&log, "d").unwrap());
                panic!("pool code failed");
            })
        }));
        assert!(unwound.is_err());
        drop_soon("e", Noted(log.clone(), "e"));
        assert_eq!(*log.0.lock().unwrap(), ["wake d", "drop d", "drop e"]);
    }

    #[test]
    fn a_message_is_kept_and_a_value_returned() {
        assert_eq!(call(|| 5), Ok(5));
        let out = call(|| -> u8 { panic!("model {} down", 7) });
        assert_eq!(out, Err("model 7 down".to_owned()));
    }
}
