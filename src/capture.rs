//! The caller's context, captured at a call and put in force on the worker for that job.
//!
//! Two things travel with a job: the settings overrides ([`Overrides`]) and, once any tracing
//! dispatcher exists in the process, the caller's dispatcher and current span. Together they
//! are a [`Ctx`], and a job carries an `Arc` of it, or nothing when there is nothing to carry:
//! no overrides, and no dispatcher but the static one (the global default, or none) with no
//! span entered.
//!
//! # What a capture costs, and why it is shaped like this
//!
//! A capture is a reference count. What makes reference counts expensive is touching the same
//! count from two threads: its cache line then moves between cores on every call. So the count
//! a capture takes is taken *and released on the caller's thread*, and a worker touches none:
//!
//! * **Shared per thread.** A thread keeps the last [`Ctx`] it made and reuses it while the
//!   same overrides, dispatcher and span are in force and some job still holds it. Calls made
//!   under one context share one `Arc<Ctx>`: one increment per call, no allocation. The thread
//!   keeps only a `Weak`, so it never keeps overrides alive or a span open (an exporter ends a
//!   span when its last reference goes, and that must not wait for an idle thread's cache).
//!   (The `Weak` keeps only the emptied 120-byte allocation until the thread's next call.)
//! * **Moved, not cloned, on the worker.** The worker moves the `Arc<Ctx>` into the settings'
//!   slot for the running job (`settings::enter_job`), where reads find its overrides, runs the
//!   job, and moves it back into the job's cell, which the caller frees. The worker neither
//!   clones nor drops it, nor takes a count on the overrides. (Cloning the overrides' `Arc` on
//!   the worker instead, as a first version of the rebuild did, made 16 overrides cost ×1.7 of
//!   a plain call's throughput in an interleaved run.)
//! * **The global dispatcher is left alone.** When the caller's dispatcher is the process's
//!   global default, a worker is already under it and does not set it again (that would touch
//!   the dispatcher's count and tracing's global count of scoped dispatchers); it only enters
//!   and exits the span. With no span entered and no overrides, a call under it carries
//!   nothing at all (no count, no allocation), like a call in a process that never set a
//!   dispatcher; a job that carries nothing runs under the static dispatcher, and only a
//!   thread that is under another one (a job left a scoped one set on its worker, or the job
//!   runs nested in one that set its own) is put under it for the job. Nothing is set on a
//!   thread inside one of the subscriber's own callbacks (a layer that waits for a call there,
//!   whose job that thread then runs): tracing allows none there, and hands out its no-op
//!   dispatcher.
//!
//! "Same dispatcher" is decided by address. tracing hands out the global dispatcher as a
//! reference to a `static` that never changes once set, while a scoped one (`set_default`,
//! `with_default`) is handed out from a thread-local slot that different dispatchers occupy in
//! turn. So only an address known to be a static identifies a dispatcher: captures under a
//! scoped dispatcher are made per call and set the dispatcher on the worker, as before. The
//! `dispatcher_addresses_behave_as_assumed` test pins this behaviour of tracing-core.
//!
//! # What each of these bought (interleaved A/B runs of `benches/pool.rs`, 2-vCPU machine)
//!
//! * Sharing and handing back, with the global dispatcher left alone: a call under a span and
//!   a global subscriber went from ×2.2–2.6 of a plain call's cost to ×1.05–1.09, and 16
//!   overrides from +4.8–7.6% to +1.3–5.0%.
//! * The gap in [`Ctx`] between the counts and the fields the workers read: without it, the
//!   global-span case cost ×1.19 instead of ×1.06.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex, PoisonError, Weak};

use tracing::dispatcher::DefaultGuard;
use tracing::span::Id;
use tracing::{Dispatch, Metadata, Span};

use crate::guard;
use crate::settings::{self, JobLayer, Overrides};
use crate::sync::StaticAtomicUsize;

/// What was in force on the caller's thread at the call (see the module docs): 8 bytes, so that
/// a job's cell stays within malloc's 80-byte chunks for small closures.
///
/// `Clone` (one reference count) so that a batch can capture once and hand the same context to
/// every job it submits later.
#[derive(Clone, Default)]
pub(crate) struct Captured(Option<Arc<Ctx>>);

/// The overrides and the tracing context of one or more calls.
///
/// Laid out for the workers, which read `at` and `span` on every job while the caller's thread
/// changes the `Arc`'s counts (the allocation's first 16 bytes) on every call: those two come
/// last, at least 64 bytes in, so they never share a cache line with the counts. The fields
/// before them are read only by a job that asks for its overrides or under a scoped dispatcher.
/// 120 bytes in all, which keeps the allocation in malloc's fast bins. (Without the gap, a call
/// under a span and a global subscriber cost ×1.19 of a plain call instead of ×1.06.)
#[repr(C)]
pub(crate) struct Ctx {
    overrides: Overrides,
    /// The caller's dispatcher; `Dispatch::none()` when nothing is traced.
    dispatch: Dispatch,
    _apart: [usize; GAP],
    /// The address of the caller's `&Dispatch` (see the module docs); 0 when nothing is traced.
    at: usize,
    /// The caller's current span; `Span::none()` when nothing is traced.
    span: Span,
}

const GAP: usize = 3;

/// What a [`Ctx`] is shared under: the overrides' address, and for the tracing part the
/// dispatcher's address and the span's id and callsite.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    overrides: usize,
    trace: Option<TraceKey>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct TraceKey {
    at: usize,
    span: Option<u64>,
    callsite: usize,
}

impl TraceKey {
    fn new(at: usize, id: Option<&Id>, meta: Option<&'static Metadata<'static>>) -> Self {
        TraceKey {
            at,
            span: id.map(Id::into_u64),
            callsite: meta.map_or(0, |m| m as *const Metadata<'static> as usize),
        }
    }

    /// Of the calling thread, without cloning anything; the span part only when the
    /// dispatcher is a known static (otherwise the key is not used to share).
    fn here() -> Self {
        tracing::dispatcher::get_default(|d| {
            let at = d as *const Dispatch as usize;
            if at != STATIC_DISPATCH.load(Ordering::Relaxed) {
                return TraceKey::new(at, None, None);
            }
            let current = d.current_span();
            TraceKey::new(at, current.id(), current.metadata())
        })
    }
}

impl Ctx {
    fn traced(&self) -> bool {
        self.at != 0
    }

    fn key(&self) -> Key {
        Key {
            overrides: self.overrides.address(),
            trace: self
                .traced()
                .then(|| TraceKey::new(self.at, self.span.id().as_ref(), self.span.metadata())),
        }
    }
}

/// What a thread remembers between captures.
struct Memory {
    /// The last shareable [`Ctx`] this thread made; `Weak`, so it keeps nothing alive.
    last: Option<Weak<Ctx>>,
    /// Where tracing keeps this thread's scoped dispatcher (0 until a worker has looked).
    scoped_slot: usize,
}

thread_local! {
    static MEMORY: RefCell<Memory> = const { RefCell::new(Memory { last: None, scoped_slot: 0 }) };
}

/// The address of the static dispatcher a worker saw while no scoped one was set on it: the
/// global default (or tracing's "none" before one is set). 0 until a worker has run a job
/// under some dispatcher.
static STATIC_DISPATCH: StaticAtomicUsize = StaticAtomicUsize::new(0);

impl Captured {
    /// Captures the calling thread's context. O(1) in the number of overrides; with nothing in
    /// force and no tracing dispatcher ever set in the process it allocates nothing.
    pub(crate) fn here() -> Self {
        let traced = tracing::dispatcher::has_been_set();
        let key = Key {
            overrides: settings::current_address(),
            trace: traced.then(TraceKey::here),
        };
        let shareable = key
            .trace
            .is_none_or(|t| t.at == STATIC_DISPATCH.load(Ordering::Relaxed));
        if key.overrides == 0 && shareable && key.trace.is_none_or(|t| t.span.is_none()) {
            // Nothing to carry: no overrides, and no tracing context beyond the static
            // dispatcher, which a worker is under (or is put under: see `Entered::new`).
            return Captured(None);
        }
        if shareable {
            // A live `Ctx` holds its overrides and its span, so no other overrides can have
            // their address and no other span their id meanwhile: an equal key is the same
            // context (for the dispatcher, see the module docs).
            // `try_with`: a call from a thread-local's destructor shares nothing.
            let last = MEMORY
                .try_with(|m| m.borrow().last.as_ref().and_then(Weak::upgrade))
                .ok()
                .flatten();
            if let Some(last) = last {
                if last.key() == key {
                    return Captured(Some(last));
                }
            }
        }
        let (at, dispatch, span) = match key.trace {
            Some(t) => (
                t.at,
                tracing::dispatcher::get_default(Dispatch::clone),
                Span::current(),
            ),
            None => (0, Dispatch::none(), Span::none()),
        };
        let ctx = Arc::new(Ctx {
            overrides: settings::current(),
            dispatch,
            _apart: [0; GAP],
            at,
            span,
        });
        if shareable {
            let previous = MEMORY
                .try_with(|m| m.borrow_mut().last.replace(Arc::downgrade(&ctx)))
                .ok()
                .flatten();
            drop(previous); // a `Weak`: frees at most an emptied allocation, runs no user code
        }
        Captured(Some(ctx))
    }

    /// Runs a job's `f` with this context in force, and keeps the context, so that whoever
    /// frees the job's cell (normally the caller) releases it. Restores the thread afterwards,
    /// also if `f` panics.
    pub(crate) fn run_in_place<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let mut entered = Entered::new(self.0.take());
        let out = f();
        self.0 = entered.leave();
        out
    }
}

/// A context in force on this thread; dropping it (or [`leave`](Self::leave)) restores the
/// thread as it was.
///
/// Entering and leaving call the tracing subscriber (setting the dispatcher, entering and
/// exiting the span), which is user code: each call goes through the guard.
struct Entered {
    /// The job's context, moved into the settings' slot while the job runs; handed back at
    /// `leave`.
    overrides: Option<settings::Installed>,
    dispatcher: Option<DefaultGuard>,
    /// True if the context's span was entered, so `leave` exits it.
    span_entered: bool,
}

impl Entered {
    fn new(ctx: Option<Arc<Ctx>>) -> Self {
        let mut dispatcher = None;
        let mut span_entered = false;
        let traced = ctx.as_ref().filter(|c| c.traced());
        // Where this thread is (`None` if nothing may be set here): only looked at once a
        // dispatcher exists, and through the guard (it may set a probe: see `scoped_slot`).
        let mut here = None;
        if traced.is_some() || tracing::dispatcher::has_been_set() {
            guard::quietly("a tracing subscriber", || here = self::here());
        }
        if let Some(ctx) = traced {
            if here.is_some_and(|here| !under_already(here, ctx.at)) {
                guard::quietly("a tracing subscriber", || {
                    dispatcher = Some(tracing::dispatcher::set_default(&ctx.dispatch));
                });
            }
            guard::quietly("a tracing subscriber", || {
                ctx.span.with_subscriber(|(id, d)| d.enter(id));
                span_entered = true;
            });
        } else if let Some(known) = here.and_then(static_if_not_under_it) {
            // Captured under the static dispatcher (or before any was set), and this thread is
            // under another: an earlier job left a scoped one set on this worker, or this job
            // runs nested in one that set its own.
            guard::quietly("a tracing subscriber", || {
                dispatcher = Some(tracing::dispatcher::set_default(&known));
            });
        }
        let layer = ctx.map(|c| c as Arc<dyn JobLayer>);
        Entered {
            overrides: Some(settings::enter_job(layer)),
            dispatcher,
            span_entered,
        }
    }

    /// Restores the thread and hands back the context that was in force.
    fn leave(&mut self) -> Option<Arc<Ctx>> {
        let ctx = self
            .overrides
            .take()
            .and_then(settings::Installed::leave_job)
            .and_then(|layer| layer.into_any().downcast::<Ctx>().ok());
        if std::mem::take(&mut self.span_entered) {
            if let Some(ctx) = &ctx {
                guard::quietly("a tracing subscriber", || {
                    ctx.span.with_subscriber(|(id, d)| d.exit(id));
                });
            }
        }
        guard::drop("a tracing subscriber", self.dispatcher.take());
        ctx
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if self.overrides.is_some() {
            guard::drop("a job's captured context", self.leave());
        }
    }
}

impl JobLayer for Ctx {
    fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// The address of the dispatcher this thread is under, if a dispatcher may be set here;
/// `None` inside a tracing subscriber's own callback on this thread (a layer's `on_event` that
/// waits for a call, whose job this thread then runs): tracing hands out its no-op dispatcher
/// there, and setting one would panic. Learns the static dispatcher on the way (see
/// [`learn_static`]).
fn here() -> Option<usize> {
    let here = current_address()?;
    if here != STATIC_DISPATCH.load(Ordering::Relaxed) && here != scoped_slot() {
        learn_static();
    }
    Some(here)
}

/// True if this thread is under the static dispatcher at address `at` (as [`here`] gave it),
/// so that a job captured under it need not set it.
fn under_already(here: usize, at: usize) -> bool {
    // A known static is the same dispatcher at every moment, on every thread.
    here == at && here == STATIC_DISPATCH.load(Ordering::Relaxed)
}

/// For a job that carries no tracing context (captured under the static dispatcher with no
/// span, or before any dispatcher was set), on a thread under the dispatcher at `here`: the
/// static dispatcher to put the thread under, if it is under another one. `None` if it is
/// under the static already, or if no static has been learned yet (the thread is left as it
/// is).
fn static_if_not_under_it(here: usize) -> Option<Dispatch> {
    // The usual case, on every such job: under the static already, seen without the lock.
    if here == STATIC_DISPATCH.load(Ordering::Relaxed) {
        return None;
    }
    let known = STATIC.lock().unwrap_or_else(PoisonError::into_inner);
    match &*known {
        Some((at, dispatch)) if *at != here => Some(dispatch.clone()),
        _ => None,
    }
}

/// The static dispatcher last learned and its address, for [`static_if_not_under_it`]
/// (`STATIC_DISPATCH` is the address, for reads without the lock). A static `Dispatch` holds a
/// `&'static` subscriber: cloning or dropping it runs nothing.
static STATIC: StdMutex<Option<(usize, Dispatch)>> = StdMutex::new(None);

/// This thread is under a static dispatcher (not in its scoped slot), which callers under it
/// may share captures under, and jobs that carry no tracing context are put back under. It is
/// read and published together with its address, under the lock: two threads that learn at
/// once (one before the global default was set, one after) leave one pair, never the address
/// of one with the other, and the next thread under the other learns again.
fn learn_static() {
    let Some((at, dispatch)) =
        tracing_core::dispatcher::get_current(|d| (d as *const Dispatch as usize, d.clone()))
    else {
        return;
    };
    let before = {
        let mut known = STATIC.lock().unwrap_or_else(PoisonError::into_inner);
        STATIC_DISPATCH.store(at, Ordering::Relaxed);
        known.replace((at, dispatch))
    };
    drop(before);
}

/// The address of the `&Dispatch` tracing hands out on this thread right now; `None` inside
/// one of its subscriber's callbacks on this thread (see [`here`]).
fn current_address() -> Option<usize> {
    tracing_core::dispatcher::get_current(|d| d as *const Dispatch as usize)
}

/// The address tracing hands out for a scoped dispatcher on this thread, found once by setting
/// one. Only called once [`current_address`] gave an address: no subscriber callback is then in
/// progress on this thread, and setting a dispatcher does not panic.
fn scoped_slot() -> usize {
    let known = MEMORY.with(|m| m.borrow().scoped_slot);
    if known != 0 {
        return known;
    }
    let probe = Dispatch::none();
    let slot = tracing::dispatcher::with_default(&probe, current_address).unwrap_or(0);
    MEMORY.with(|m| m.borrow_mut().scoped_slot = slot);
    slot
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// What sharing relies on: inside `with_default`, every scoped dispatcher is handed out at
    /// one address (the thread's slot), and outside it the address is another one, stable over
    /// time. If tracing-core changes this, this test fails before anything is shared wrongly.
    #[test]
    fn dispatcher_addresses_behave_as_assumed() {
        std::thread::spawn(|| {
            let outside = current_address().unwrap();
            let a = Dispatch::new(tracing_subscriber::registry());
            let b = Dispatch::new(tracing_subscriber::registry());
            let in_a = tracing::dispatcher::with_default(&a, current_address).unwrap();
            let in_b = tracing::dispatcher::with_default(&b, current_address).unwrap();
            assert_eq!(in_a, in_b, "scoped dispatchers share the thread's slot");
            assert_ne!(outside, in_a);
            assert_eq!(scoped_slot(), in_a);
            assert_eq!(current_address(), Some(outside));
            assert_eq!(here(), Some(outside));
            assert!(
                !under_already(in_a, in_a),
                "a scoped slot is never taken for a static"
            );
            assert!(
                under_already(outside, outside),
                "outside, this thread is under a static, learned by `here`"
            );
            // Inside a subscriber's callback nothing may be set: `here` says so.
            let inside = tracing::dispatcher::with_default(&a, || {
                tracing::dispatcher::get_default(|_| current_address())
            });
            assert_eq!(inside, None);
        })
        .join()
        .unwrap();
    }
}
