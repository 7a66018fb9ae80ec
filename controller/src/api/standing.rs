//! The refusal of a controller that stood down ([`crate::ledger::standing`]):
//! UNAVAILABLE, marked with the [`NOT_LEADER_HEADER`] so a console sends
//! the call to another controller at once, from the outermost layer of the
//! leader's gRPC server, before anything reaches a handler.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use lockstep_link::failover::NOT_LEADER_HEADER;

use crate::ledger::standing::Standing;

/// The answer to any call once `standing` says this controller stood down.
pub fn refusal(standing: &Standing) -> Option<tonic::Status> {
    let why = standing.stood_down()?;
    Some(not_here(
        lockstep_proto::reason::status(
            tonic::Code::Unavailable,
            format!(
                "controller {} no longer leads ({why}): it answers nothing as the leader; another controller takes over within seconds, ask it",
                standing.name()
            ),
            lockstep_proto::reason::NOT_LEADER,
        ),
        "stood-down",
    ))
}

/// `status`, marked as done nowhere (see [`NOT_LEADER_HEADER`]): a
/// console sends the call to another controller.
pub fn not_here(mut status: tonic::Status, why: &'static str) -> tonic::Status {
    status
        .metadata_mut()
        .insert(NOT_LEADER_HEADER, tonic::metadata::MetadataValue::from_static(why));
    status
}

/// The outermost layer of the leader's gRPC server: once the controller
/// has stood down, nothing reaches a handler.
#[derive(Clone)]
pub struct StandingLayer(pub Standing);

impl<S> tower::Layer<S> for StandingLayer {
    type Service = StandingCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StandingCheck {
            inner,
            standing: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StandingCheck<S> {
    inner: S,
    standing: Standing,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for StandingCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(refusal) = refusal(&self.standing) {
            return Box::pin(async move { Ok(refusal.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_that_stood_down_refuses_naming_why_and_marks_it_done_nowhere() {
        let s = Standing::new("ctl-1");
        assert!(refusal(&s).is_none());
        assert!(s.stand_down("its lease could not be renewed in time"));
        assert!(!s.stand_down("a write was refused"), "the first reason is kept");
        let r = refusal(&s).unwrap();
        assert_eq!(r.code(), tonic::Code::Unavailable);
        assert!(
            r.message()
                .contains("ctl-1 no longer leads (its lease could not be renewed in time)"),
            "{}",
            r.message()
        );
        assert!(lockstep_link::failover::refused_here(r.metadata().as_ref()));
        assert_eq!(
            lockstep_proto::reason::of(&r).as_deref(),
            Some(lockstep_proto::reason::NOT_LEADER)
        );
    }
}
