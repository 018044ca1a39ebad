use tower::Layer;

use super::{ByBody, ItemsOnly, Validate};

/// Applies [`Validate`] to a service.
///
/// [`ValidateLayer::new`] runs the body's own [`Validate`](p2plane_core::Validate) impl;
/// [`ValidateLayer::with`] runs a closure over the request; [`ValidateLayer::items_only`]
/// checks only a stream's items.
#[derive(Debug, Clone, Copy)]
pub struct ValidateLayer<V = ByBody> {
    validator: V,
}

impl ValidateLayer<ByBody> {
    /// A layer that runs the request body's own validation.
    pub const fn new() -> Self {
        Self { validator: ByBody }
    }
}

impl ValidateLayer<ItemsOnly> {
    /// A layer for streaming calls whose requests need no check: it lets every request
    /// through and has each item (or upload) checked by the protocol's
    /// [`Streaming`](p2plane_core::Streaming) validation.
    pub const fn items_only() -> Self {
        Self {
            validator: ItemsOnly,
        }
    }
}

impl Default for ValidateLayer<ByBody> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> ValidateLayer<V> {
    /// A layer that runs `validator`, typically a closure
    /// `|request: &Request<T>| -> Result<(), String>`.
    pub const fn with(validator: V) -> Self {
        Self { validator }
    }
}

impl<S, V: Clone> Layer<S> for ValidateLayer<V> {
    type Service = Validate<S, V>;

    fn layer(&self, inner: S) -> Validate<S, V> {
        Validate::new(inner, self.validator.clone())
    }
}
