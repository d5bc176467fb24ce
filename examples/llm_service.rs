//! A simulated LLM backend that serves a limited number of requests at once and answers 429
//! beyond that, called through a program with a deadline, retries, a rate limit and adaptive
//! concurrency. The backend's capacity changes twice; the limit follows it.
//!
//! `cargo run --release --example llm_service` (about 6 seconds). It prints, four times a
//! second, the backend's capacity, the program's concurrency limit, the goodput and the retries
//! and timeouts so far, and ends with one summary line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asyncify_pool::{deadline, Overload, RateLimiter, Retry, WorkerPool};

/// What the backend answers.
#[derive(Debug)]
struct Reply {
    status: u16,
    #[allow(dead_code)]
    text: String,
}

/// The simulated LLM API: `capacity` requests at once, each 20–30 ms (one in 150 takes two
/// seconds), and a 429 at once for any request beyond the capacity.
struct Backend {
    capacity: AtomicUsize,
    in_flight: AtomicUsize,
    served: AtomicU64,
    rejected: AtomicU64,
    seq: AtomicU64,
}

impl Backend {
    fn complete(&self, prompt: &str) -> Reply {
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        let reply = if now > self.capacity.load(Relaxed) {
            self.rejected.fetch_add(1, Relaxed);
            Reply {
                status: 429,
                text: String::new(),
            }
        } else {
            let n = self.seq.fetch_add(1, Relaxed);
            let mut took = Duration::from_millis(20 + n % 11);
            if n % 150 == 7 {
                took = Duration::from_secs(2); // a stuck request: the deadline cuts it off
            }
            // A real client would set its own HTTP timeout from the deadline in force.
            if let Some(d) = deadline() {
                took = took.min(d.saturating_duration_since(Instant::now()));
            }
            std::thread::sleep(took);
            self.served.fetch_add(1, Relaxed);
            Reply {
                status: 200,
                text: format!("answer to {prompt}"),
            }
        };
        self.in_flight.fetch_sub(1, Relaxed);
        reply
    }
}

fn main() {
    let backend = Arc::new(Backend {
        capacity: AtomicUsize::new(12),
        in_flight: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        seq: AtomicU64::new(0),
    });
    let pool = WorkerPool::new(32);
    let b = Arc::clone(&backend);
    let api_key = RateLimiter::with_burst(600, Duration::from_secs(1), 20);
    let llm = pool
        .asyncify(move |prompt: String| b.complete(&prompt))
        .timeout(Duration::from_millis(800))
        .retry(
            Retry::new(4)
                .backoff(Duration::from_millis(10), Duration::from_millis(200))
                .retry_if(|r: &Reply| r.status == 429),
        )
        .with_rate_limiter(&api_key)
        .adaptive_concurrency(2, 32, Overload::when(|r: &Reply| r.status == 429));

    // The backend's capacity over time: 12, then 5, then 9 requests at once, 2 s each.
    let phases = [(12, 2_000), (5, 2_000), (9, 2_000)];
    let total = Duration::from_millis(phases.iter().map(|p| p.1).sum());
    let (ok, failed, timed_out) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    println!(
        "{:>5}  {:>8}  {:>5}  {:>9}  {:>7}  {:>8}",
        "t", "capacity", "limit", "goodput/s", "retries", "timeouts"
    );
    std::thread::scope(|s| {
        // 48 users of a service, each asking one question after another.
        for user in 0..48 {
            let (llm, ok, failed, timed_out) = (&llm, &ok, &failed, &timed_out);
            s.spawn(move || {
                let mut n = 0;
                while start.elapsed() < total {
                    n += 1;
                    match llm.call(format!("question {n} from user {user}")).wait() {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Relaxed),
                        Err(e) if e.is_timed_out() => timed_out.fetch_add(1, Relaxed),
                        _ => failed.fetch_add(1, Relaxed),
                    };
                }
            });
        }
        let mut last_ok = 0;
        let mut tick = Duration::ZERO;
        while tick < total {
            tick += Duration::from_millis(250);
            std::thread::sleep(tick.saturating_sub(start.elapsed()));
            let mut until = 0;
            for (capacity, ms) in phases {
                until += ms;
                if tick < Duration::from_millis(until) {
                    backend.capacity.store(capacity, Relaxed);
                    break;
                }
            }
            let stats = llm.stats();
            let done = ok.load(Relaxed);
            println!(
                "{:>5.2}  {:>8}  {:>5}  {:>9}  {:>7}  {:>8}",
                tick.as_secs_f64(),
                backend.capacity.load(Relaxed),
                stats.concurrency_limit.unwrap_or(0),
                (done - last_ok) * 4,
                stats.retries,
                stats.timed_out,
            );
            last_ok = done;
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let stats = llm.stats();
    println!(
        "summary: {} calls in {:.1} s, {} ok ({:.0}/s goodput), {} retries, {} timeouts, {} failed, {} 429s from the backend, final limit {}",
        stats.calls,
        elapsed,
        ok.load(Relaxed),
        ok.load(Relaxed) as f64 / elapsed,
        stats.retries,
        timed_out.load(Relaxed),
        failed.load(Relaxed),
        backend.rejected.load(Relaxed),
        stats.concurrency_limit.unwrap_or(0),
    );
}
