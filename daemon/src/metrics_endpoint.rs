//! The plain-HTTP `/metrics` endpoint both daemons serve for Prometheus.
//! It listens where the config says (loopback by default): it carries host
//! names and states, nothing secret, and no way to change anything.

use std::future::Future;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;

/// The Prometheus text exposition format (OpenMetrics flavour), which
/// `prometheus_client` writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the metrics text when scraped.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Render,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], render()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
