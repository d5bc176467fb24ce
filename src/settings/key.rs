//! Typed keys: a setting's name and the type of its value, checked by the compiler.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use super::{Overrides, SettingsError};

/// The name of a setting whose value is a `T`.
///
/// String keys are what DSPy users know, but a string key says nothing of its value's type:
/// store a `String` under `"tenant"` and read it back with `get::<&str>("tenant")`, and the
/// answer is `None`, silently. A `Key<T>` carries the type, so that every
/// [`Overrides::with`], [`configure`](super::configure) and [`get`](super::get) through it is
/// checked at compile time. It names the same entry as its string, so typed and string access
/// mix freely.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{self, Key, Overrides};
///
/// static TENANT: Key<String> = Key::new("tenant");
///
/// let tenant = settings::context(Overrides::new().with(&TENANT, "acme".to_owned()), || {
///     TENANT.get() // or settings::get(&TENANT)
/// });
/// assert_eq!(tenant.as_deref(), Some("acme"));
/// ```
///
/// A value of another type does not compile:
///
/// ```compile_fail
/// use asyncify_pool::settings::{Key, Overrides};
///
/// static TENANT: Key<String> = Key::new("tenant");
/// let _ = Overrides::new().with(&TENANT, "acme"); // a `&str` is not a `String`
/// ```
pub struct Key<T> {
    name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    /// The key named `name`, for values of type `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::Key;
    /// const TEMPERATURE: Key<f64> = Key::new("temperature");
    /// assert_eq!(TEMPERATURE.name(), "temperature");
    /// ```
    pub const fn new(name: &'static str) -> Self {
        Key {
            name,
            value: PhantomData,
        }
    }

    /// The key's name: the string key of the same entry.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(asyncify_pool::settings::ASYNC_MAX_WORKERS.name(), "async_max_workers");
    /// ```
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T: Any + Clone> Key<T> {
    /// The value in force here, as [`settings::get`](super::get) finds it: the overrides, then
    /// the global configuration. `None` if unset (or set, through its string name, to a value
    /// of another type; [`try_get`](Self::try_get) tells the two apart).
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::{self, Key, Overrides};
    /// const RETRIES: Key<u32> = Key::new("retries");
    /// assert_eq!(RETRIES.get(), None);
    /// assert_eq!(settings::context(Overrides::new().with(&RETRIES, 3), || RETRIES.get()), Some(3));
    /// ```
    pub fn get(&self) -> Option<T> {
        super::get(self)
    }

    /// Like [`get`](Self::get), but a value of another type stored under the key's name is an
    /// error rather than `None`.
    ///
    /// # Errors
    ///
    /// [`SettingsError::WrongType`] when the value in force is not a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::{self, Key, Overrides};
    /// const LIMIT: Key<u64> = Key::new("limit");
    /// let wrong = Overrides::new().with("limit", 5i32); // a string key stores any type
    /// assert!(settings::context(wrong, || LIMIT.try_get()).is_err());
    /// ```
    pub fn try_get(&self) -> Result<Option<T>, SettingsError> {
        super::try_get(self)
    }

    /// The value under this key in `overrides`, if there and a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::settings::{Key, Overrides};
    /// const MODEL: Key<&str> = Key::new("model");
    /// assert_eq!(MODEL.get_from(&Overrides::new().with(&MODEL, "small")), Some("small"));
    /// ```
    pub fn get_from(&self, overrides: &Overrides) -> Option<T> {
        overrides.get(self)
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Key<T> {}

impl<T> PartialEq for Key<T> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl<T> Eq for Key<T> {}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key<{}>({:?})", std::any::type_name::<T>(), self.name)
    }
}

/// What names a setting whose value is a `T`: a `&`[`Key<T>`] (for that `T` only), or a string
/// (for any `T`, as in DSPy). Taken by [`Overrides::with`], [`Overrides::get`],
/// [`get`](super::get) and [`try_get`](super::try_get).
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{Key, Overrides, SettingKey};
///
/// fn describe<T>(key: impl SettingKey<T>) -> String {
///     format!("setting {}", key.name())
/// }
/// assert_eq!(describe::<u8>("a"), "setting a");
/// assert_eq!(describe(&Key::<u8>::new("b")), "setting b");
/// ```
pub trait SettingKey<T> {
    /// The setting's name.
    fn name(&self) -> &str;

    /// The name, owned (for storing). Costs no copy for an owned `String`.
    fn into_name(self) -> Box<str>
    where
        Self: Sized,
    {
        self.name().into()
    }
}

impl<T> SettingKey<T> for &Key<T> {
    fn name(&self) -> &str {
        self.name
    }
}

impl<T> SettingKey<T> for &str {
    fn name(&self) -> &str {
        self
    }
}

impl<T> SettingKey<T> for String {
    fn name(&self) -> &str {
        self
    }
    fn into_name(self) -> Box<str> {
        self.into_boxed_str()
    }
}

impl<T> SettingKey<T> for &String {
    fn name(&self) -> &str {
        self
    }
}

impl<T> SettingKey<T> for Box<str> {
    fn name(&self) -> &str {
        self
    }
    fn into_name(self) -> Box<str> {
        self
    }
}

impl<T> SettingKey<T> for Cow<'_, str> {
    fn name(&self) -> &str {
        self
    }
}
