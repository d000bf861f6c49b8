//! The tower layer in front of every service: every call except
//! [`PUBLIC_METHODS`] needs a valid bearer token; the caller's
//! [`Session`](crate::auth::Session) goes into the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;

use crate::appliance::Appliance;
use crate::auth::AuthError;

/// gRPC paths served without a token.
pub const PUBLIC_METHODS: [&str; 2] = [
    "/shunt.management.v1.System/Login",
    "/shunt.management.v1.System/Health",
];

#[derive(Clone)]
pub struct AuthLayer {
    appliance: Arc<Appliance>,
}

impl AuthLayer {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            appliance: self.appliance.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    appliance: Arc<Appliance>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        self.appliance.count_call();
        let path = request.uri().path();
        if PUBLIC_METHODS.contains(&path) {
            return Box::pin(self.inner.call(request));
        }
        let verdict =
            bearer(request.headers()).and_then(|token| self.appliance.auth.session(token));
        match verdict {
            Ok(session) => {
                request.extensions_mut().insert(session);
                Box::pin(self.inner.call(request))
            }
            Err(e) => {
                tracing::debug!(path, error = %e, "call refused");
                let status = Status::unauthenticated(e.to_string());
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

fn bearer(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::MissingToken)?;
    let text = value.to_str().map_err(|_| AuthError::InvalidToken)?;
    text.strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or(AuthError::InvalidToken)
}
