//! Webhook delivery: each notification is one HTTP POST of a JSON body,
//! retried with jittered backoff, through a bounded queue. When the queue is
//! full a notification is dropped and counted (the incident itself stays in
//! `lockstep alerts`, so nothing is lost for the operator, only for the pager).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lockstep_daemon::backoff::Backoff;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::WebhookSettings;
use crate::metrics::AlertLabels;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The sending side of the queue.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    outcomes: Family<AlertLabels, Counter>,
}

impl Outbox {
    /// Queues one JSON body; never waits.
    pub fn send(&self, body: Vec<u8>) {
        if self.tx.try_send(Bytes::from(body)).is_err() {
            self.outcomes.get_or_create(&AlertLabels { outcome: "dropped" }).inc();
            warn!("alert queue full: a webhook notification was dropped (see `lockstep alerts`)");
        }
    }
}

fn client(ca: Option<&Path>) -> Result<HttpClient, String> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca {
        Some(ca) => {
            let roots = lockstep_link::tls::load_roots(ca).map_err(|e| e.to_string())?;
            let config = rustls::ClientConfig::builder_with_provider(lockstep_link::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => match builder.with_provider_and_native_roots((*lockstep_link::tls::provider()).clone()) {
            Ok(b) => b,
            Err(e) => {
                // Plain-HTTP webhooks still work; HTTPS ones will fail and say why.
                warn!(error = %e, "no system CA certificates: HTTPS webhooks need `alerts.webhook_ca`");
                let config = rustls::ClientConfig::builder_with_provider(lockstep_link::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        },
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Starts the delivery task; the returned outbox feeds it.
pub fn start(settings: WebhookSettings, outcomes: Family<AlertLabels, Counter>) -> Result<Outbox, String> {
    let client = client(settings.ca.as_deref())?;
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    tokio::spawn(deliver(rx, client, settings, outcomes.clone()));
    Ok(Outbox { tx, outcomes })
}

async fn deliver(
    mut rx: mpsc::Receiver<Bytes>,
    client: HttpClient,
    settings: WebhookSettings,
    outcomes: Family<AlertLabels, Counter>,
) {
    let count = |outcome| outcomes.get_or_create(&AlertLabels { outcome }).inc();
    while let Some(body) = rx.recv().await {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt = 1;
        loop {
            match post(&client, &settings, body.clone()).await {
                Ok(()) => {
                    count("sent");
                    break;
                }
                Err(e) if attempt < settings.max_attempts => {
                    count("retried");
                    warn!(url = %settings.url, attempt, error = %e, "webhook delivery failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    count("failed");
                    error!(url = %settings.url, attempts = attempt, error = %e,
                        "webhook delivery gave up; the incident is still listed by `lockstep alerts`");
                    break;
                }
            }
        }
    }
    info!("webhook delivery stopped");
}

async fn post(client: &HttpClient, settings: &WebhookSettings, body: Bytes) -> Result<(), String> {
    let request = hyper::Request::post(settings.url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("lockstep/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(settings.timeout, client.request(request))
        .await
        .map_err(|_| format!("no answer within {:?}", settings.timeout))?
        .map_err(|e| {
            format!(
                "{e}: {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            )
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}
