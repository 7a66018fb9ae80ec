//! The signals that stop a daemon gracefully.

/// Resolves on SIGTERM (how systemd stops us) or SIGINT. The handlers are
/// installed when this is called, not when the future is first polled, so a
/// signal right after READY=1 is a graceful stop, not a kill. Call it inside
/// the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
