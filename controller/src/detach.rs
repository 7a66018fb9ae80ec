//! Every lockstep call runs to completion in a task of its own. hyper drops
//! a handler's future when its client resets the stream or the connection
//! drops; a change stopped there could be durable in the store but missing
//! from the controller's memory (an accepted seq not yet known, so the same
//! envelope replayed would pass). Detached, the handler always finishes;
//! only its answer is lost with the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Tower layer that spawns each call's future.
#[derive(Clone, Copy, Default)]
pub struct DetachLayer;

impl<S> tower::Layer<S> for DetachLayer {
    type Service = Detach<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Detach(inner)
    }
}

#[derive(Clone)]
pub struct Detach<S>(S);

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
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let handler = tokio::spawn(self.0.call(req));
        Box::pin(async move {
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
        let mut svc = DetachLayer.layer(inner);
        let call = svc.ready().await.unwrap().call(());
        started_rx.await.unwrap();
        drop(call); // the client reset the stream
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
        let mut svc = DetachLayer.layer(tower::service_fn(|(): ()| async {
            if true {
                panic!("a bug");
            }
            Ok::<(), BoxError>(())
        }));
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.to_string().contains("request handler failed"), "{err}");
    }
}
