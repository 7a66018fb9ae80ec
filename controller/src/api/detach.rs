//! Every call (lockstep's services, health, reflection) runs to completion
//! in a task of its own. hyper drops a handler's future when its client
//! resets the stream or the connection drops; a change stopped there could
//! be durable in the store but missing from the controller's memory (an
//! accepted seq not yet known, so the same envelope replayed would pass).
//! Detached, the handler always finishes; only its answer is lost with the
//! client.
//!
//! tonic's per-connection call limit is released when the call is dropped,
//! so a client resetting its calls could leave any number of handlers
//! running: at most `MAX_DETACHED` run at once, the rest wait their turn
//! (and a call dropped while it waits never starts).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;

/// Handlers running at once, over every connection.
pub const MAX_DETACHED: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Tower layer that spawns each call's future.
#[derive(Clone)]
pub struct DetachLayer {
    running: Arc<Semaphore>,
}

impl DetachLayer {
    /// At most `max` handlers running at once.
    pub fn new(max: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> tower::Layer<S> for DetachLayer {
    type Service = Detach<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Detach {
            inner,
            running: self.running.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Detach<S> {
    inner: S,
    running: Arc<Semaphore>,
}

impl<S, Req> tower::Service<Req> for Detach<S>
where
    S: tower::Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let call = self.inner.call(req);
        let running = self.running.clone();
        Box::pin(async move {
            let slot = running
                .acquire_owned()
                .await
                .map_err(|_| "the controller is stopping")?;
            let handler = tokio::spawn(async move {
                let _slot = slot;
                call.await
            });
            match handler.await {
                Ok(result) => result.map_err(Into::into),
                // A panicking handler ends its call, as it would undetached.
                Err(e) => Err(format!("the request handler failed: {e}").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    #[tokio::test]
    async fn a_call_whose_caller_goes_away_still_finishes() {
        let finished = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
        let inner = {
            let finished = finished.clone();
            tower::service_fn(move |(): ()| {
                let finished = finished.clone();
                let started = started_tx.lock().unwrap().take();
                async move {
                    if let Some(s) = started {
                        let _ = s.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    finished.store(true, Ordering::SeqCst);
                    Ok::<_, BoxError>(())
                }
            })
        };
        let mut svc = DetachLayer::new(4).layer(inner);
        let call = tokio::spawn(svc.ready().await.unwrap().call(()));
        started_rx.await.unwrap();
        call.abort(); // the client reset the stream
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !finished.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the handler was cancelled with its caller"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_ends_its_call_with_an_error() {
        let mut svc = DetachLayer::new(4).layer(tower::service_fn(|(): ()| async {
            if true {
                panic!("a bug");
            }
            Ok::<(), BoxError>(())
        }));
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.to_string().contains("request handler failed"), "{err}");
    }

    #[tokio::test]
    async fn no_more_than_the_limit_run_at_once_and_the_rest_wait() {
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inner = {
            let (running, most) = (running.clone(), most.clone());
            tower::service_fn(move |(): ()| {
                let (running, most) = (running.clone(), most.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(())
                }
            })
        };
        let mut svc = DetachLayer::new(3).layer(inner);
        let mut calls = Vec::new();
        for _ in 0..12 {
            calls.push(tokio::spawn(svc.ready().await.unwrap().call(())));
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }
}
