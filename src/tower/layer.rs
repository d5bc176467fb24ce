//! A tower layer that runs each request under overrides taken from it.

use std::fmt;
use std::task::{Context, Poll};

use crate::settings::{self, Overrides, Scoped};

/// A [`tower_layer::Layer`] that runs every request of the service it wraps under overrides
/// made from the request by `make` (a tenant from a header, a model from a query parameter):
/// they are in force while the inner service's `call` runs, which is when a program captures
/// them, and during every poll of the response future, as with
/// [`settings::scope`](crate::settings::scope). They are layered on the overrides in force at
/// the call, the new ones winning key by key.
///
/// # Examples
///
/// ```
/// use asyncify_pool::settings::{Key, Overrides};
/// use asyncify_pool::tower::OverridesLayer;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// static MODEL: Key<&str> = Key::new("model");
///
/// let pool = asyncify_pool::WorkerPool::new(1);
/// let answer = pool.asyncify(|q: (bool, &'static str)| format!("[{}] {}", MODEL.get().unwrap(), q.1));
/// let layer = OverridesLayer::new(|q: &(bool, &'static str)| {
///     Overrides::new().with(&MODEL, if q.0 { "large" } else { "small" })
/// });
/// let mut service = layer.layer(answer.service());
/// let out = pollster::block_on(async {
///     std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
///     service.call((true, "hi")).await
/// });
/// assert_eq!(out.unwrap(), "[large] hi");
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[derive(Clone)]
pub struct OverridesLayer<F> {
    make: F,
}

impl<F> OverridesLayer<F> {
    /// A layer that takes each request's overrides from `make(&request)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use asyncify_pool::{settings::Overrides, tower::OverridesLayer};
    /// let layer = OverridesLayer::new(|_: &u32| Overrides::new().with("k", 1));
    /// # let _ = layer;
    /// ```
    pub fn new(make: F) -> Self {
        OverridesLayer { make }
    }
}

impl<S, F: Clone> tower_layer::Layer<S> for OverridesLayer<F> {
    type Service = WithOverrides<S, F>;

    fn layer(&self, inner: S) -> WithOverrides<S, F> {
        WithOverrides {
            inner,
            make: self.make.clone(),
        }
    }
}

impl<F> fmt::Debug for OverridesLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverridesLayer").finish_non_exhaustive()
    }
}

/// The service an [`OverridesLayer`] makes: `inner`, with each request under its overrides.
///
/// # Examples
///
/// ```
/// use asyncify_pool::{settings::Overrides, tower::{OverridesLayer, WithOverrides}};
/// use tower_layer::Layer;
///
/// let pool = asyncify_pool::WorkerPool::new(1);
/// let service = pool.asyncify(|x: u8| x).service();
/// let wrapped: WithOverrides<_, _> =
///     OverridesLayer::new(|_: &u8| Overrides::new()).layer(service);
/// # let _ = wrapped;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
#[derive(Clone)]
pub struct WithOverrides<S, F> {
    inner: S,
    make: F,
}

impl<S, F, R> tower_service::Service<R> for WithOverrides<S, F>
where
    S: tower_service::Service<R>,
    F: Fn(&R) -> Overrides,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Scoped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Scoped<S::Future> {
        let overrides = (self.make)(&request);
        let inner = &mut self.inner;
        let future = settings::context(overrides.clone(), || inner.call(request));
        settings::scope(overrides, future)
    }
}

impl<S: fmt::Debug, F> fmt::Debug for WithOverrides<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithOverrides")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
