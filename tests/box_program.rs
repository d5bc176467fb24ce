//! `BoxProgram`: one nameable type for every program of a shape, with everything a program
//! does (calls, try_call, batches, following `async_max_workers`).

mod common;

use asyncify_pool::settings::{self, Overrides, ASYNC_MAX_WORKERS};
use asyncify_pool::{asyncify, BoxProgram, Program, WorkerPool};
use common::wait;

struct Upper;

impl Program<String> for Upper {
    type Output = String;
    fn run(&self, input: String) -> String {
        input.to_uppercase()
    }
}

/// An application state holding programs of different concrete types behind one type.
struct State {
    programs: Vec<BoxProgram<String, String>>,
}

#[test]
fn programs_of_different_types_share_one_boxed_type() {
    let pool = WorkerPool::new(2);
    let suffix = String::from("!");
    let state = State {
        programs: vec![
            pool.asyncify(Upper).boxed(),
            pool.asyncify(move |s: String| s + &suffix).boxed(),
        ],
    };
    let outs: Vec<String> = state
        .programs
        .iter()
        .map(|p| wait(p.call("hi".to_owned())).unwrap())
        .collect();
    assert_eq!(outs, ["HI", "hi!"]);
    let clone = state.programs[0].clone();
    assert_eq!(wait(clone.call("x".into())).unwrap(), "X");
    assert_eq!(wait(clone.try_call("y".into()).unwrap()).unwrap(), "Y");
}

#[test]
fn a_boxed_program_runs_batches() {
    let pool = WorkerPool::new(2);
    let square: BoxProgram<u64, u64> = pool.asyncify(|x: u64| x * x).boxed();
    let result = square.batch(1..=5u64).wait();
    let outs: Vec<u64> = result
        .into_results()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(outs, [1, 4, 9, 16, 25]);
}

/// Boxing keeps what the free `asyncify` does: follow `async_max_workers` per call.
#[test]
fn a_boxed_free_asyncify_program_still_follows_async_max_workers() {
    let program: BoxProgram<(), usize> =
        asyncify(|_: ()| asyncify_pool::default_pool().threads()).boxed();
    let handle = settings::context(Overrides::new().with(&ASYNC_MAX_WORKERS, 5), || {
        program.call(())
    });
    assert_eq!(wait(handle), Ok(5));
}
