//! Whether this controller may still act as the leader. On etcd it stops
//! at the first doubt about its lead (its lease not renewed in time, a
//! write refused or left unanswered): from that instant every call is
//! refused UNAVAILABLE, marked with the [`NOT_LEADER_HEADER`] so a console
//! sends it to another controller at once, and the directive streams end.
//! A leader that cannot record a decision does not make it (Kubernetes'
//! leader election stops acting before its lease can pass on, the same
//! way). sled's one controller never stands down.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lockstep_proto::failover::NOT_LEADER_HEADER;
use tokio::sync::watch;

/// Shared by the controller's parts and its outermost gRPC layer.
#[derive(Clone)]
pub struct Standing {
    name: Arc<str>,
    down: Arc<watch::Sender<Option<String>>>,
}

impl Standing {
    /// `name`: this controller's, for the refusal's message.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            down: Arc::new(watch::channel(None).0),
        }
    }

    /// Stops answering as the leader, for `why` (the first reason is
    /// kept). True the first time.
    pub fn stand_down(&self, why: &str) -> bool {
        self.down.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            *d = Some(why.to_string());
            true
        })
    }

    /// Why this controller stood down, if it has.
    pub fn stood_down(&self) -> Option<String> {
        self.down.borrow().clone()
    }

    /// The answer to any call once this controller has stood down.
    pub fn refusal(&self) -> Option<tonic::Status> {
        let why = self.stood_down()?;
        Some(not_here(
            lockstep_proto::reason::status(
                tonic::Code::Unavailable,
                format!(
                    "controller {} no longer leads ({why}): it answers nothing as the leader; another controller takes over within seconds, ask it",
                    self.name
                ),
                lockstep_proto::reason::NOT_LEADER,
            ),
            "stood-down",
        ))
    }
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
        if let Some(refusal) = self.standing.refusal() {
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
        assert!(s.refusal().is_none());
        assert!(s.stand_down("its lease could not be renewed in time"));
        assert!(!s.stand_down("a write was refused"), "the first reason is kept");
        let r = s.refusal().unwrap();
        assert_eq!(r.code(), tonic::Code::Unavailable);
        assert!(
            r.message()
                .contains("ctl-1 no longer leads (its lease could not be renewed in time)"),
            "{}",
            r.message()
        );
        assert!(lockstep_proto::failover::refused_here(r.metadata().as_ref()));
        assert_eq!(
            lockstep_proto::reason::of(&r).as_deref(),
            Some(lockstep_proto::reason::NOT_LEADER)
        );
    }
}
