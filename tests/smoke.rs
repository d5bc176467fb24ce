use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::WorkerPool;
use std::time::Duration;

#[test]
fn call_context_and_cancel() {
    let pool = WorkerPool::new(2);
    let p = pool.asyncify(|x: u32| (x * 2, settings::get::<&str>("lm")));
    let h = settings::context(Overrides::new().with("lm", "big"), || p.call(21));
    assert_eq!(h.wait().unwrap(), (42, Some("big")));
    assert_eq!(p.call(1).wait().unwrap(), (2, None));
    let r = pollster::block_on(p.call(5));
    assert_eq!(r.unwrap().0, 10);
    let mut slow = pool.spawn(|| std::thread::sleep(Duration::from_millis(50)));
    assert!(slow.wait_timeout(Duration::from_secs(10)).is_some());
    pool.shutdown();
    assert!(p.call(1).wait().unwrap_err().is_shut_down());
}
