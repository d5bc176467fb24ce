//! Typed settings keys: a `Key<T>` names the same entry as its string, carries its value's
//! type, and travels with a call to the worker like any override.

mod common;

use asyncify_pool::settings::{self, Key, Overrides, SettingsError, ASYNC_MAX_WORKERS};
use asyncify_pool::{asyncify, WorkerPool};
use common::wait;

static TENANT: Key<String> = Key::new("tenant");
const RETRIES: Key<u32> = Key::new("retries");

/// The pitfall typed keys remove: a `String` stored under a string key and read as `&str` is
/// `None` without a word; through the key, the read is a `String` and finds it.
#[test]
fn a_string_value_is_found_through_its_key_where_a_str_read_misses_it() {
    let pool = WorkerPool::new(2);
    let handle = settings::context(
        Overrides::new().with(&TENANT, format!("acme-{}", 7)),
        || pool.spawn(|| (settings::get::<&str>("tenant"), TENANT.get())),
    );
    let (as_str, typed) = wait(handle).unwrap();
    assert_eq!(as_str, None, "a String is not a &str");
    assert_eq!(typed.as_deref(), Some("acme-7"));
}

#[test]
fn typed_and_string_access_name_the_same_entry() {
    let by_string = Overrides::new().with("retries", 3u32);
    assert_eq!(RETRIES.get_from(&by_string), Some(3));
    let by_key = Overrides::new().with(&RETRIES, 4);
    assert_eq!(by_key.get::<u32>("retries"), Some(4));
    assert_eq!(by_key.get(&RETRIES), Some(4));
    assert!(by_key.contains_key(RETRIES.name()));
    settings::context(by_key, || {
        assert_eq!(settings::get(&RETRIES), Some(4));
        assert_eq!(settings::get::<u32>("retries"), Some(4));
    });
}

#[test]
fn a_value_of_another_type_under_the_name_is_a_wrong_type_error() {
    let wrong = Overrides::new().with("retries", "three");
    let err = settings::context(wrong, || RETRIES.try_get()).unwrap_err();
    assert_eq!(
        err,
        SettingsError::WrongType {
            key: "retries".to_owned(),
            expected: "u32",
            found: "&str",
        }
    );
    assert_eq!(
        settings::context(Overrides::new(), || RETRIES.try_get()),
        Ok(None)
    );
}

/// Through the string, `16` is an `i32` and the call is refused; through the typed key the
/// same literal is a `usize`, and the default pool follows it.
#[test]
fn an_integer_literal_through_the_typed_async_max_workers_is_a_usize() {
    let program = asyncify(|_: ()| asyncify_pool::default_pool().threads());
    let untyped = settings::context(Overrides::new().with("async_max_workers", 3), || {
        program.call(())
    });
    assert!(wait(untyped).unwrap_err().is_invalid_setting());
    let typed = settings::context(Overrides::new().with(&ASYNC_MAX_WORKERS, 3), || {
        program.call(())
    });
    assert_eq!(wait(typed), Ok(3));
}

#[test]
fn configure_takes_typed_keys() {
    static REGION: Key<&str> = Key::new("typed_keys_region");
    settings::configure(Overrides::new().with(&REGION, "eu-west")).unwrap();
    let pool = WorkerPool::new(1);
    assert_eq!(wait(pool.spawn(|| REGION.get())), Ok(Some("eu-west")));
    // An override of the key wins over the global value, key by key.
    let inner = settings::context(Overrides::new().with(&REGION, "us-east"), || REGION.get());
    assert_eq!(inner, Some("us-east"));
}

#[test]
fn keys_compare_and_print_by_name_and_type() {
    assert_eq!(Key::<u32>::new("retries"), RETRIES);
    assert_eq!(
        format!("{RETRIES:?}"),
        r#"Key<u32>("retries")"#,
        "the type is in the debug output"
    );
}
