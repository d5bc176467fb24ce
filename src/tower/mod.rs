//! [tower](https://docs.rs/tower) integration, behind the `tower` feature: a program as a
//! `tower::Service` whose readiness is the pool's bounded queue, and a layer that runs every
//! request under overrides taken from it.
//!
//! * [`ProgramService`] (from [`AsyncProgram::service`](crate::AsyncProgram::service)): its
//!   `poll_ready` takes a slot in the pool's queue, and waits (woken, not polling) while a
//!   bounded queue ([`Builder::queue_capacity`](crate::Builder::queue_capacity)) is full, so
//!   tower's `load_shed`, `buffer` and `concurrency_limit` see the pool's backpressure.
//! * [`OverridesLayer`]: wraps any service so that each request runs under
//!   [`settings::Overrides`](crate::settings::Overrides) computed from the request, as
//!   [`settings::scope`](crate::settings::scope) would: in force while the inner service's
//!   `call` runs (where a program captures them) and during every poll of its future.
//!
//! # Examples
//!
//! ```
//! use asyncify_pool::settings::{self, Key, Overrides};
//! use asyncify_pool::tower::OverridesLayer;
//! use asyncify_pool::WorkerPool;
//! use tower_layer::Layer;
//! use tower_service::Service;
//!
//! static TENANT: Key<String> = Key::new("tenant");
//!
//! let pool = WorkerPool::new(2);
//! let greet = pool.asyncify(|name: String| format!("{}: hello {name}", TENANT.get().unwrap()));
//! let layer = OverridesLayer::new(|name: &String| {
//!     Overrides::new().with(&TENANT, format!("tenant-of-{name}"))
//! });
//! let mut service = layer.layer(greet.service());
//!
//! let out = pollster::block_on(async {
//!     std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
//!     service.call("ada".to_owned()).await
//! });
//! assert_eq!(out.unwrap(), "tenant-of-ada: hello ada");
//! ```

mod layer;
mod service;

pub use layer::{OverridesLayer, WithOverrides};
pub use service::{BoxProgramService, ProgramService};
