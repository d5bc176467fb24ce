//! The tour: a simulated slow "LLM call" asyncified on a worker pool, called 64 times with
//! per-call settings overrides, at 1, 4 and 16 threads.
//!
//! Run it with `cargo run --release --example quickstart`.

use std::time::{Duration, Instant};

use asyncify_pool::settings::{self, Overrides};
use asyncify_pool::WorkerPool;

/// Stands in for a blocking LLM client: sleeps like a network call, and reads the model and
/// temperature from the settings in force, as a DSPy module reads `dspy.settings.lm`.
fn answer(question: u32) -> String {
    std::thread::sleep(Duration::from_millis(20));
    let model = settings::get::<&str>("lm").unwrap_or("unset");
    let temperature = settings::get::<f64>("temperature").unwrap_or(0.0);
    format!("q{question:02} answered by {model} at t={temperature}")
}

const CALLS: u32 = 64;

fn main() {
    settings::configure(Overrides::new().with("lm", "gpt-small")).expect("configure");

    // One executor for the whole run; any executor works, this one has no runtime at all.
    pollster::block_on(async {
        let mut last = Vec::new();
        for threads in [1u32, 4, 16] {
            let pool = WorkerPool::new(threads as usize);
            let program = pool.asyncify(answer);
            let start = Instant::now();

            // Every fourth call runs under its own override; the others see the global `lm`.
            let handles: Vec<_> = (0..CALLS)
                .map(|q| {
                    if q % 4 == 0 {
                        let per_call = Overrides::new()
                            .with("lm", "gpt-large")
                            .with("temperature", 0.7);
                        settings::context(per_call, || program.call(q))
                    } else {
                        program.call(q)
                    }
                })
                .collect();
            let mut answers = Vec::with_capacity(handles.len());
            for handle in handles {
                answers.push(handle.await.expect("the program does not panic"));
            }

            let wall = start.elapsed();
            let ideal = Duration::from_millis(20) * CALLS.div_ceil(threads);
            println!(
                "{threads:>2} threads: {CALLS} calls in {:>4} ms (ideal {:>4} ms)",
                wall.as_millis(),
                ideal.as_millis()
            );
            pool.shutdown();
            last = answers;
        }

        println!("\nwhat each call saw (first 8):");
        for line in last.iter().take(8) {
            println!("  {line}");
        }
        let large = last.iter().filter(|a| a.contains("gpt-large")).count();
        println!("{large} of {CALLS} calls ran with the per-call override, the rest with the global setting");
    });
}
