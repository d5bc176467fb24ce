//! DSPy-style settings: one global configuration plus scoped overrides that follow the code that
//! runs under them, across threads (every pool job carries its caller's overrides) and across
//! awaits (a [`scope`]d future carries its own).
//!
//! # The model
//!
//! * The **global configuration** is an immutable map swapped atomically by [`configure`]:
//!   readers see the old map or the new one, never a mix. It starts with the library's
//!   defaults, `async_max_workers = 8usize` and `max_errors = 10usize`.
//! * The **overrides** in force are per thread (and per [`scope`]d future). [`context`] layers
//!   some on top for the length of a closure, [`scope`] for every poll of a future; the inner
//!   layer wins key by key, and the outer layer is back in force afterwards, also on panic.
//! * A lookup ([`get`]) asks the overrides first, then the global configuration.
//! * [`current`] is an O(1) snapshot of the overrides in force. Every pool call takes one, so the
//!   cost of a call does not grow with the number of overrides.
//!
//! # Who may configure
//!
//! DSPy lets only the thread that configured first call `configure` again, and its users keep
//! running into that in web servers and notebooks, where "the first thread" is an accident.
//! Here any thread may call [`configure`], because the global map is swapped atomically, with
//! one exception: not from inside a pool job, where a global change would race with every other
//! job and is almost always meant as a [`context`]. That call returns
//! [`SettingsError::InsideJob`].
//!
//! # Values of another type
//!
//! [`get::<T>`](get) returns `None` when the key is missing *or* holds another type than `T`;
//! [`try_get`] tells the two apart with [`SettingsError::WrongType`]. An override of the wrong
//! type still shadows the global value: the override is what is in force.
//!
//! # Examples
//!
//! ```
//! use asyncify_pool::settings::{self, Overrides};
//!
//! settings::configure(Overrides::new().with("model", "small")).unwrap();
//! settings::context(Overrides::new().with("model", "large"), || {
//!     assert_eq!(settings::get::<&str>("model"), Some("large"));
//! });
//! assert_eq!(settings::get::<&str>("model"), Some("small"));
//! ```

use std::any::{type_name, Any};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError};
use std::task::{Context, Poll};

mod key;

pub use crate::error::SettingsError;
use crate::limits::{DEFAULT_ASYNC_MAX_WORKERS, DEFAULT_MAX_ERRORS, MAX_THREADS};
use crate::sync::{RwLock, StaticAtomicUsize};
pub use key::{Key, SettingKey};
use std::sync::atomic::Ordering;

/// A stored value and the name of its type, for error messages.
#[derive(Clone)]
struct Value {
    value: Arc<dyn Any + Send + Sync>,
    type_name: &'static str,
}

type Map = HashMap<Box<str>, Value>;

/// An immutable, cheaply cloned map from string keys to values of any `Send + Sync + 'static`
/// type.
///
/// Cloning is one reference-count increment whatever the number of entries; [`with`](Self::with)
/// copies the map only when it is shared.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::Overrides;
///
/// let o = Overrides::new().with("lm", "gpt-4o-mini").with("temperature", 0.7f64);
/// assert_eq!(o.len(), 2);
/// assert_eq!(o.get::<f64>("temperature"), Some(0.7));
/// assert_eq!(o.get::<u32>("temperature"), None); // another type
/// ```
#[derive(Clone, Default)]
pub struct Overrides {
    map: Option<Arc<Map>>,
}

impl Overrides {
    /// An empty set of overrides. Allocates nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(asyncify_pool::settings::Overrides::new().is_empty());
    /// ```
    pub const fn new() -> Self {
        Overrides { map: None }
    }

    /// These overrides with `key` set to `value` (replacing an earlier value of the key).
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::Overrides;
    /// let o = Overrides::new().with("k", 1u8).with("k", 2u8);
    /// assert_eq!(o.get::<u8>("k"), Some(2));
    /// ```
    #[must_use]
    pub fn with<V: Any + Send + Sync>(mut self, key: impl SettingKey<V>, value: V) -> Self {
        let value = Value {
            value: Arc::new(value),
            type_name: type_name::<V>(),
        };
        let map = Arc::make_mut(self.map.get_or_insert_with(Default::default));
        map.insert(key.into_name(), value);
        self
    }

    /// The value under `key` if it is there and is a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::Overrides;
    /// assert_eq!(Overrides::new().with("n", 3usize).get::<usize>("n"), Some(3));
    /// ```
    pub fn get<T: Any + Clone>(&self, key: impl SettingKey<T>) -> Option<T> {
        self.try_get(key).ok().flatten()
    }

    /// The value under `key`: `Ok(None)` if absent, an error if it holds another type.
    ///
    /// # Errors
    ///
    /// [`SettingsError::WrongType`] when the key holds a value that is not a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::Overrides;
    /// let o = Overrides::new().with("n", 3usize);
    /// assert!(o.try_get::<String>("n").is_err());
    /// assert_eq!(o.try_get::<usize>("missing"), Ok(None));
    /// ```
    pub fn try_get<T: Any + Clone>(
        &self,
        key: impl SettingKey<T>,
    ) -> Result<Option<T>, SettingsError> {
        let key = key.name();
        match self.map.as_ref().and_then(|m| m.get(key)) {
            None => Ok(None),
            Some(v) => downcast(key, v).map(Some),
        }
    }

    /// True if `key` has a value here, of whatever type.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::Overrides;
    /// assert!(Overrides::new().with("k", ()).contains_key("k"));
    /// ```
    pub fn contains_key(&self, key: &str) -> bool {
        self.map.as_ref().is_some_and(|m| m.contains_key(key))
    }

    /// The number of keys.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::Overrides;
    /// assert_eq!(Overrides::new().with("a", 1).with("b", 2).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// True if there are no keys.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(asyncify_pool::settings::Overrides::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys, in no particular order.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::Overrides;
    /// let o = Overrides::new().with("a", 1);
    /// assert_eq!(o.keys().collect::<Vec<_>>(), ["a"]);
    /// ```
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.iter().flat_map(|m| m.keys().map(|k| &**k))
    }

    /// Where the map is, 0 for none.
    pub(crate) fn address(&self) -> usize {
        self.map
            .as_ref()
            .map_or(0, |m| Arc::as_ptr(m) as *const () as usize)
    }

    /// `self` with every key of `top` laid over it (`top` wins). Costs nothing when either is empty.
    fn layered(&self, top: &Overrides) -> Overrides {
        match (&self.map, &top.map) {
            (_, None) => self.clone(),
            (None, Some(_)) => top.clone(),
            (Some(base), Some(top)) => {
                let mut map = Map::clone(base);
                map.extend(top.iter().map(|(k, v)| (k.clone(), v.clone())));
                Overrides {
                    map: Some(Arc::new(map)),
                }
            }
        }
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.keys().collect();
        keys.sort_unstable();
        f.debug_struct("Overrides").field("keys", &keys).finish()
    }
}

fn downcast<T: Any + Clone>(key: &str, v: &Value) -> Result<T, SettingsError> {
    v.value
        .downcast_ref::<T>()
        .cloned()
        .ok_or_else(|| SettingsError::WrongType {
            key: key.to_owned(),
            expected: type_name::<T>(),
            found: v.type_name,
        })
}

/// The value under `key`, if any: a reference count on it, taken so that the caller can look at
/// it (and run its `Clone`) with no borrow or lock of this module held.
fn value_of(map: Option<&Map>, key: &str) -> Option<Value> {
    map.and_then(|m| m.get(key)).cloned()
}

// ---------------------------------------------------------------------------------------------
// The global configuration.
//
// One immutable map behind a read-write lock. A reader takes the lock only long enough to count
// one more reference on the value it looks up, and keeps no copy of the map: a value replaced
// by `configure` is released as soon as the last `get` that returned it is done with it, and
// no thread, idle or not, keeps an old map alive.

fn global() -> &'static RwLock<Arc<Map>> {
    static GLOBAL: OnceLock<RwLock<Arc<Map>>> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let defaults = Overrides::new()
            .with(&ASYNC_MAX_WORKERS, DEFAULT_ASYNC_MAX_WORKERS)
            .with(&MAX_ERRORS, DEFAULT_MAX_ERRORS);
        RwLock::new(defaults.map.unwrap_or_default())
    })
}

fn global_value(key: &str) -> Option<Value> {
    let map = global().read().unwrap_or_else(PoisonError::into_inner);
    value_of(Some(&map), key)
}

/// The setting that sizes the default pool behind [`asyncify`](crate::asyncify): a `usize`
/// from 1 to [`WorkerPool::MAX_THREADS`](crate::WorkerPool::MAX_THREADS), default 8. Its string
/// name is `"async_max_workers"`.
///
/// Through the key, an integer literal is a `usize`; through the string, `16` would be an
/// `i32`, which [`configure`] refuses.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Overrides, ASYNC_MAX_WORKERS};
/// settings::context(Overrides::new().with(&ASYNC_MAX_WORKERS, 16), || {
///     assert_eq!(ASYNC_MAX_WORKERS.get(), Some(16));
/// });
/// ```
pub const ASYNC_MAX_WORKERS: Key<usize> = Key::new("async_max_workers");
/// The setting that bounds the failures a batch tolerates: a `usize`, default 10. Its string
/// name is `"max_errors"`; `configure` refuses a value of another type under it, and one in
/// force through a `context` or `scope` when a batch is made fails that batch's items with
/// [`JobError::InvalidSetting`](crate::JobError::InvalidSetting) (unless the batch sets its
/// own budget with [`Batch::max_errors`](crate::Batch::max_errors)).
///
/// # Examples
///
/// ```
/// assert_eq!(asyncify_pool::settings::MAX_ERRORS.get(), Some(10));
/// ```
pub const MAX_ERRORS: Key<usize> = Key::new("max_errors");

/// Checks an `async_max_workers` value: a thread count from 1 to `MAX_THREADS`.
fn check_workers(n: usize) -> Result<usize, SettingsError> {
    let reason = match n {
        0 => "it must be at least 1",
        n if n > MAX_THREADS => "it must be at most WorkerPool::MAX_THREADS (1024)",
        n => return Ok(n),
    };
    Err(SettingsError::InvalidValue {
        key: ASYNC_MAX_WORKERS.name().to_owned(),
        reason,
    })
}

/// The global `async_max_workers`, kept apart from the map so that every call of the free
/// `asyncify` reads it with one load instead of the global lock (it is checked at `configure`,
/// so it always holds a usable value).
static GLOBAL_WORKERS: StaticAtomicUsize = StaticAtomicUsize::new(DEFAULT_ASYNC_MAX_WORKERS);

/// The `async_max_workers` in force here, checked: the thread count the default pool follows.
pub(crate) fn async_max_workers() -> Result<usize, SettingsError> {
    let name = ASYNC_MAX_WORKERS.name();
    let local = in_force(|f| value_of(f.effective().map.as_deref(), name)).flatten();
    match local {
        Some(value) => check_workers(downcast(ASYNC_MAX_WORKERS.name(), &value)?),
        None => Ok(GLOBAL_WORKERS.load(Ordering::Relaxed)),
    }
}

/// The `async_max_workers` in a map given to `configure` (already checked).
fn overrides_workers(map: &Map) -> Option<usize> {
    map.get(ASYNC_MAX_WORKERS.name())
        .and_then(|v| v.value.downcast_ref::<usize>().copied())
}

/// Checks the values the library itself reads, so a bad one fails at `configure`, not later.
fn validate(o: &Overrides) -> Result<(), SettingsError> {
    if let Some(n) = o.try_get(&ASYNC_MAX_WORKERS)? {
        check_workers(n)?;
    }
    o.try_get(&MAX_ERRORS)?;
    Ok(())
}

/// Merges `overrides` into the global configuration, atomically: readers see the old
/// configuration or the new one, never a mix. Keys not given keep their values. A value
/// replaced here is released once no reader holds it.
///
/// # Errors
///
/// * [`SettingsError::InsideJob`] when called from inside a pool job (use [`context`] there).
/// * [`SettingsError::WrongType`] / [`SettingsError::InvalidValue`] when a setting the library
///   reads is unusable (`async_max_workers` must be a `usize` from 1 to
///   [`WorkerPool::MAX_THREADS`](crate::WorkerPool::MAX_THREADS), `max_errors` a `usize`).
///   Nothing is changed then.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Overrides};
///
/// settings::configure(Overrides::new().with("temperature", 0.0f64)).unwrap();
/// assert_eq!(settings::get::<f64>("temperature"), Some(0.0));
/// assert_eq!(settings::get::<usize>("async_max_workers"), Some(8)); // a default, kept
/// ```
pub fn configure(overrides: Overrides) -> Result<(), SettingsError> {
    if in_job() {
        return Err(SettingsError::InsideJob);
    }
    validate(&overrides)?;
    let Some(new) = overrides.map else {
        return Ok(());
    };
    let workers = overrides_workers(&new);
    let replaced = {
        let mut map = global().write().unwrap_or_else(PoisonError::into_inner);
        let mut merged = Map::clone(&map);
        merged.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(n) = workers {
            // ORDERING: a reader may see the new map and the old count for a moment, or the
            // other way round; each is a value `configure` accepted.
            GLOBAL_WORKERS.store(n, Ordering::Relaxed);
        }
        std::mem::replace(&mut *map, Arc::new(merged))
    };
    // Outside the lock: the old values' destructors are user code.
    crate::guard::drop("a replaced settings value", replaced);
    crate::guard::drop("a settings value", new);
    Ok(())
}

/// The value of `key` in force here: the overrides first, then the global configuration.
/// `None` if the key is unset or holds another type than `T` (see [`try_get`]).
///
/// The value's `Clone` runs with nothing of this module borrowed or locked, so it may itself
/// read or change settings.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Overrides};
///
/// assert_eq!(settings::get::<usize>("async_max_workers"), Some(8));
/// settings::context(Overrides::new().with("async_max_workers", 2usize), || {
///     assert_eq!(settings::get::<usize>("async_max_workers"), Some(2));
/// });
/// ```
pub fn get<T: Any + Clone>(key: impl SettingKey<T>) -> Option<T> {
    try_get(key).ok().flatten()
}

/// Like [`get`], but a value of another type is an error rather than `None`.
///
/// # Errors
///
/// [`SettingsError::WrongType`] when the value in force under `key` is not a `T`.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, SettingsError};
///
/// let err = settings::try_get::<String>("async_max_workers").unwrap_err();
/// assert!(matches!(err, SettingsError::WrongType { found: "usize", .. }));
/// ```
pub fn try_get<T: Any + Clone>(key: impl SettingKey<T>) -> Result<Option<T>, SettingsError> {
    let key = key.name();
    let found = in_force(|f| value_of(f.effective().map.as_deref(), key))
        .flatten()
        .or_else(|| global_value(key));
    found.map(|v| downcast(key, &v)).transpose()
}

// ---------------------------------------------------------------------------------------------
// What is in force on this thread.

/// What a running job's captured context offers to settings: its overrides. The job's context
/// (`capture::Ctx`) is moved into this thread's slot for the job's duration and moved back
/// after, so that reading a job's overrides costs no reference count on them (a count taken on
/// the worker would move their cache line between cores on every call; see `capture`).
pub(crate) trait JobLayer: Any + Send + Sync {
    fn overrides(&self) -> &Overrides;
    /// Back to the concrete type, for the context's owner.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// The overrides in force on a thread: those of the innermost `context` or `scope` (`own`),
/// else, inside a job, those the job's caller had (`job`); and whether a pool job runs here.
struct InForce {
    own: Overrides,
    job: Option<Arc<dyn JobLayer>>,
    in_job: bool,
}

impl InForce {
    const fn empty() -> Self {
        InForce {
            own: Overrides::new(),
            job: None,
            in_job: false,
        }
    }

    fn effective(&self) -> &Overrides {
        match &self.job {
            Some(job) if self.own.is_empty() => job.overrides(),
            _ => &self.own,
        }
    }
}

thread_local! {
    static IN_FORCE: RefCell<InForce> = const { RefCell::new(InForce::empty()) };
}

/// Reads what is in force on this thread; `None` once its slot is gone (user code run from
/// another thread-local's destructor, as the thread exits), where nothing is in force and no
/// job runs. A read never aborts the process there, as `with` would.
fn in_force<R>(read: impl FnOnce(&InForce) -> R) -> Option<R> {
    IN_FORCE.try_with(|f| read(&f.borrow())).ok()
}

/// True while a pool job runs on this thread (`configure` refuses there).
pub(crate) fn in_job() -> bool {
    in_force(|f| f.in_job).unwrap_or(false)
}

/// The address of the overrides in force here, 0 for none: equal addresses while a capture
/// holds them mean the same overrides.
pub(crate) fn current_address() -> usize {
    in_force(|f| f.effective().address()).unwrap_or(0)
}

/// A snapshot of the overrides in force here (not the global configuration, which every thread
/// shares). O(1): one reference-count increment.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Overrides};
///
/// assert!(settings::current().is_empty());
/// settings::context(Overrides::new().with("k", 1), || {
///     assert_eq!(settings::current().get::<i32>("k"), Some(1));
/// });
/// ```
pub fn current() -> Overrides {
    in_force(|f| f.effective().clone()).unwrap_or_default()
}

/// Puts overrides in force on this thread until dropped (also during a panic), then restores
/// what was there. The building block of [`context`], [`scope`] and the workers.
pub(crate) struct Installed {
    previous: Option<InForce>,
}

fn swap_in(new: InForce) -> InForce {
    IN_FORCE.with(|f| std::mem::replace(&mut *f.borrow_mut(), new))
}

/// Puts `overrides` in force on this thread, as a `context` does. They were layered on what was
/// in force (`current()`), so inside a job the job's overrides are among them: the job's own
/// layer is not kept underneath (an empty `own` would let it show through).
pub(crate) fn install(overrides: Overrides) -> Installed {
    let in_job = in_job();
    Installed {
        previous: Some(swap_in(InForce {
            own: overrides,
            job: None,
            in_job,
        })),
    }
}

/// Puts a job's context in force on this thread (moved in, handed back by
/// [`Installed::leave_job`]): none of the thread's own overrides are in force then, and
/// `configure` refuses until it is left.
pub(crate) fn enter_job(job: Option<Arc<dyn JobLayer>>) -> Installed {
    Installed {
        previous: Some(swap_in(InForce {
            own: Overrides::new(),
            job,
            in_job: true,
        })),
    }
}

impl Installed {
    /// Restores the previous overrides and hands back the ones that were installed.
    pub(crate) fn restore(mut self) -> Overrides {
        self.swap_back().map_or_else(Overrides::new, |f| f.own)
    }

    /// Leaves a job entered with [`enter_job`], handing its context back.
    pub(crate) fn leave_job(mut self) -> Option<Arc<dyn JobLayer>> {
        let left = self.swap_back()?;
        crate::guard::drop("a settings value", left.own);
        left.job
    }

    fn swap_back(&mut self) -> Option<InForce> {
        self.previous.take().map(swap_in)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // The last reference to a value may go here, and its destructor is user code.
        if let Some(left) = self.swap_back() {
            crate::guard::drop("a settings value", (left.own, left.job));
        }
    }
}

/// Runs `f` with `overrides` layered on the current ones (inner wins per key) on this thread,
/// and restores the current ones afterwards, also if `f` panics.
///
/// Pool calls made inside `f` carry the layered overrides to their worker.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{settings::{self, Overrides}, WorkerPool};
///
/// let pool = WorkerPool::new(1);
/// let seen = settings::context(Overrides::new().with("lm", "local"), || {
///     pool.spawn(|| settings::get::<&str>("lm")).wait().unwrap()
/// });
/// assert_eq!(seen, Some("local"));
/// assert_eq!(settings::get::<&str>("lm"), None);
/// ```
pub fn context<R>(overrides: Overrides, f: impl FnOnce() -> R) -> R {
    let layered = current().layered(&overrides);
    // With nothing else in force, `layered` shares `overrides`' map, and the last reference to
    // its values goes with whichever is dropped last: the caller's, dropped here, so that the
    // last is the one in force, which `Installed` lets go of through the guard (a value's
    // `Drop` is user code, and must not cost `f`'s value).
    crate::guard::drop("a settings value", overrides);
    let _installed = install(layered);
    f()
}

/// Wraps `future` so that `overrides`, layered on the overrides in force *now*, are in force
/// during every poll of it, and only then: they survive awaits and moves between threads of a
/// multi-thread executor, and never leak into other tasks polled on the same thread.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Overrides};
///
/// let fut = settings::scope(Overrides::new().with("k", 7), async {
///     settings::get::<i32>("k")
/// });
/// assert_eq!(settings::get::<i32>("k"), None); // not in force outside the future
/// assert_eq!(pollster::block_on(fut), Some(7));
/// ```
pub fn scope<F: Future>(overrides: Overrides, future: F) -> Scoped<F> {
    let layered = current().layered(&overrides);
    crate::guard::drop("a settings value", overrides); // (see `context`)
    Scoped {
        overrides: Some(layered),
        future: Box::pin(future),
    }
}

/// A future with its own overrides, made by [`scope`].
///
/// The inner future is boxed once, at `scope`, so that this crate needs no `unsafe` pin
/// projection; `Scoped` itself is `Unpin`.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Overrides, Scoped};
///
/// let fut: Scoped<_> = settings::scope(Overrides::new(), async { 1 });
/// assert_eq!(pollster::block_on(fut), 1);
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Scoped<F> {
    overrides: Option<Overrides>,
    future: Pin<Box<F>>,
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

/// The future's own overrides may hold the last reference to a settings value, whose `Drop`
/// is user code: they go through the guard, as those of a `context` do.
impl<F> Drop for Scoped<F> {
    fn drop(&mut self) {
        crate::guard::drop("a settings value", self.overrides.take());
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let installed = install(this.overrides.take().unwrap_or_default());
        // If the inner poll panics, `installed` still restores the thread's overrides (this
        // future's own are dropped then, which only matters to a caller that polls it again).
        let out = this.future.as_mut().poll(cx);
        this.overrides = Some(installed.restore());
        out
    }
}
