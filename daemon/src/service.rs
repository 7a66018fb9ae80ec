//! What a daemon runs beside its work while it serves: the `/metrics`
//! endpoint and the systemd watchdog pings, started with READY=1 and, at the
//! end, told to stop and awaited (never aborted).

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics_endpoint::{self, Render};

pub struct Sidecars {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sidecars {
    /// Serves `/metrics` on the listener (if any), feeds the watchdog (if
    /// systemd asks for it), and says READY=1 with `status`.
    pub fn start(metrics: Option<(TcpListener, Render)>, status: &str) -> Self {
        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = Vec::new();
        if let Some((listener, render)) = metrics {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving /metrics");
            }
            let stop = until_stopped();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = metrics_endpoint::serve(listener, render, stop).await {
                    tracing::error!(error = %e, "the /metrics endpoint stopped");
                }
            }));
        }
        if let Some(every) = crate::systemd::watchdog_interval() {
            tasks.push(tokio::spawn(crate::systemd::keep_watchdog_fed(every, until_stopped())));
        }
        crate::systemd::ready(status);
        Self { stop, tasks }
    }

    /// Stops both and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
