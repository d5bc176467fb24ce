//! Evaluation, DSPy `Evaluate`-style: a simulated LLM program scored over a few hundred
//! generated examples with a batch, failures sprinkled in.
//!
//! Run it with `cargo run --release --example evaluate`, or with a terminal progress bar:
//! `cargo run --release --example evaluate --features progress`.

use std::time::{Duration, Instant};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::WorkerPool;

/// One example of the data set: a question and its gold answer.
#[derive(Debug, Clone)]
struct Example {
    id: u64,
    question: String,
    answer: i64,
}

/// What the simulated model can fail with, like a real client's error type.
#[derive(Debug)]
enum LmError {
    RateLimited,
}

const EXAMPLES: u64 = 300;
const THREADS: usize = 16;

/// A pseudo-random number from `seed`, so that every run sees the same latencies and faults.
fn scramble(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn dataset() -> Vec<Example> {
    (0..EXAMPLES)
        .map(|id| {
            let (a, b) = (
                (scramble(id) % 90 + 10) as i64,
                (scramble(id + 7) % 90) as i64,
            );
            Example {
                id,
                question: format!("What is {a} + {b}?"),
                answer: a + b,
            }
        })
        .collect()
}

/// Stands in for a blocking LLM call: 2–8 ms of "network", the model taken from the settings
/// in force, right about 85% of the time, rate limited now and then, and once in a while
/// answering something that cannot be parsed (a panic, as a buggy parser would).
fn predict(example: Example) -> Result<i64, LmError> {
    let noise = scramble(example.id * 31);
    std::thread::sleep(Duration::from_millis(2 + noise % 7));
    let model = settings::get::<&str>("lm").unwrap_or("unset");
    assert_eq!(model, "sim-small", "the override reaches every item");
    match noise % 100 {
        0..=3 => Err(LmError::RateLimited),
        4 => panic!("unparseable completion for example {}", example.id),
        5..=18 => Ok(example.answer + 1), // a wrong answer
        _ => Ok(example.answer),
    }
}

fn main() {
    // The simulated parser's panics are caught and reported below; keep them off stderr
    // (and off the progress bar). Any other panic still prints.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<String>().map_or("", |s| s);
        if !message.starts_with("unparseable completion") {
            default_hook(info);
        }
    }));

    let data = dataset();
    let gold: Vec<i64> = data.iter().map(|e| e.answer).collect();
    let pool = WorkerPool::new(THREADS);
    let program = pool.asyncify(predict);

    let start = Instant::now();
    let batch = settings::context(Overrides::new().with("lm", "sim-small"), || {
        program
            .batch(data)
            .fail_if(Result::is_err) // rate limits count against the error budget too
            .max_errors(40)
            .keep_failed_inputs()
    });
    #[cfg(feature = "progress")]
    let batch = batch.progress_bar();
    let result = batch.wait();
    let wall = start.elapsed();

    let correct = result
        .results()
        .iter()
        .zip(&gold)
        .filter(|(r, gold)| matches!(r, Ok(Ok(answer)) if answer == *gold))
        .count();
    let scored = result.done();
    println!(
        "accuracy: {correct}/{scored} = {:.1}% of the answered examples ({:.1}% of all {})",
        100.0 * correct as f64 / scored.max(1) as f64,
        100.0 * correct as f64 / result.total() as f64,
        result.total()
    );
    println!(
        "failures: {} (budget 40{}), never started: {}",
        result.failed(),
        if result.is_stopped() {
            ", exceeded"
        } else {
            ""
        },
        result.not_started()
    );
    for (index, example) in result.failed_inputs().iter().take(5) {
        let why = match &result.results()[*index] {
            Ok(Err(e)) => format!("{e:?}"),
            Err(e) => e.to_string(),
            Ok(Ok(_)) => unreachable!("a failed item has an error"),
        };
        println!("  #{index} {:?}: {why}", example.question);
    }
    if result.failed() > 5 {
        println!("  … and {} more", result.failed() - 5);
    }
    println!(
        "wall time: {wall:.2?} on {THREADS} threads (one after another: about {:.2?})",
        Duration::from_millis(5 * EXAMPLES)
    );
}
