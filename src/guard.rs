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
//!
//! A payload is itself user code when dropped: its `Drop` may panic, and the new payload's
//! `Drop` too. Disposal drops payloads one after another under the guard and, after
//! [`MAX_NESTED_PAYLOADS`], leaks the last one rather than loop forever. Nothing here can
//! cost a worker thread, a permit or an answer.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::Waker;

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

    #[test]
    fn a_message_is_kept_and_a_value_returned() {
        assert_eq!(call(|| 5), Ok(5));
        let out = call(|| -> u8 { panic!("model {} down", 7) });
        assert_eq!(out, Err("model 7 down".to_owned()));
    }
}
