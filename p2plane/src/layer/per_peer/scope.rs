use std::{
    any::Any,
    sync::{Arc, Mutex},
};

/// What must live as long as a served stream. The request of a streaming call carries one
/// in its [extensions](p2plane_core::Request::extensions); the node releases what it holds
/// when the stream ends (cleanly, with an error, or cancelled by the caller). Middleware
/// that accounts for the whole call, not just the handler's call, keeps its guard here:
/// [`InFlightLimitLayer`](super::InFlightLimitLayer) does, so that it counts open streams.
#[derive(Clone, Default)]
pub struct StreamScope(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl std::fmt::Debug for StreamScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamScope").finish_non_exhaustive()
    }
}

impl StreamScope {
    /// Keeps `value` until the stream ends.
    pub fn keep(&self, value: impl Any + Send) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(value));
    }

    /// Drops what is kept (the node calls this when the stream ends).
    pub(crate) fn release(&self) {
        let kept = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        drop(kept);
    }
}
