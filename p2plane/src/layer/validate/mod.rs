//! Checks requests before they go further: before they leave (client side) or before the
//! handler sees them (server side).

mod layer;

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
pub use layer::ValidateLayer;
use p2plane_core::{Error, Request, Validate as ValidateBody};
use tower_service::Service;

/// Decides whether a request may pass. Implemented by [`ByBody`] (the body's own
/// [`Validate`](p2plane_core::Validate) impl) and by closures
/// `Fn(&Request<T>) -> Result<(), String>`.
pub trait Validator<T> {
    /// `Ok` to let the request through, otherwise the reason it is refused.
    fn check(&self, request: &Request<T>) -> Result<(), String>;
}

/// The validator that runs the request body's [`Validate`](p2plane_core::Validate) impl (for
/// a [`Message`](p2plane_core::Message), [`Message::validate`](p2plane_core::Message::validate)).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByBody;

impl<T: ValidateBody> Validator<T> for ByBody {
    fn check(&self, request: &Request<T>) -> Result<(), String> {
        request.body().validate()
    }
}

/// The validator that lets every request through: with [`ValidateLayer::items_only`], only a
/// stream's items (or uploads) are checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct ItemsOnly;

impl<T> Validator<T> for ItemsOnly {
    fn check(&self, _: &Request<T>) -> Result<(), String> {
        Ok(())
    }
}

impl<T, F> Validator<T> for F
where
    F: Fn(&Request<T>) -> Result<(), String>,
{
    fn check(&self, request: &Request<T>) -> Result<(), String> {
        self(request)
    }
}

/// Left in a request's [extensions](Request::extensions) by [`Validate`]: the items of its
/// stream are to be validated as well (see [`Validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidateItems;

/// Refuses requests the validator rejects with [`Error::Rejected`], without calling the
/// inner service: on the client side nothing is sent; on the server side the handler does
/// not run and the caller receives `Rejected` with the reason.
///
/// On streaming calls it also marks the request ([`ValidateItems`]) so that each item is
/// checked too: by a [`StreamClient`](crate::StreamClient) below it, each item it receives
/// with [`Streaming::validate_item`](crate::Streaming::validate_item) (one refused ends the
/// stream with [`Error::Protocol`]); in a handler, each upload it takes with
/// [`Uploads::take`](crate::Uploads::take), with
/// [`Streaming::validate_upload`](crate::Streaming::validate_upload).
#[derive(Debug, Clone)]
pub struct Validate<S, V> {
    inner: S,
    validator: V,
}

impl<S, V> Validate<S, V> {
    /// Wraps `inner` with `validator`.
    pub const fn new(inner: S, validator: V) -> Self {
        Self { inner, validator }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, V, T> Service<Request<T>> for Validate<S, V>
where
    S: Service<Request<T>>,
    S::Error: From<Error>,
    V: Validator<T>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<T>) -> Self::Future {
        match self.validator.check(&request) {
            Ok(()) => {
                request.extensions_mut().insert(ValidateItems);
                Either::Right(self.inner.call(request))
            }
            Err(reason) => Either::Left(ready(Err(Error::Rejected { peer: None, reason }.into()))),
        }
    }
}
