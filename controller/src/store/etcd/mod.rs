//! The etcd backend: a client for the part of etcd's API we use
//! (`etcd/etcd_api.proto`), the [`Store`](crate::store::Store) on it
//! ([`store::EtcdStore`]) and leader election ([`election`]). etcd's types
//! stay inside this module.

pub mod cluster;
pub mod election;
pub mod latency;
pub mod presence;
pub mod store;
pub mod trust;
pub mod watch;

use std::future::Future;
use std::time::Duration;

use lockstep_link::failover::FailoverChannel;

use crate::config::EtcdSettings;
use crate::store::StoreError;

#[allow(clippy::all, clippy::pedantic)]
pub(crate) mod api {
    tonic::include_proto!("etcdserverpb");
}

use api::kv_client::KvClient;
use api::lease_client::LeaseClient;

/// One connection to the etcd cluster (TLS with our client certificate; the
/// channel moves to the next member when one stops answering) and the
/// runtime its calls run on. The runtime is the client's own so the
/// synchronous [`Store`](crate::store::Store) can wait on a call from any
/// thread, a tokio worker included, without blocking the runtime it is on.
/// How often the client pings etcd: above etcd's 5 s minimum.
const ETCD_PING: std::time::Duration = std::time::Duration::from_secs(6);

pub struct Etcd {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    channel: FailoverChannel,
    tls: std::sync::Arc<rustls::ClientConfig>,
    pub(crate) settings: EtcdSettings,
    /// How long each kind of call took, for `/metrics`.
    pub latency: latency::Latency,
}

impl Etcd {
    pub fn connect(settings: &EtcdSettings) -> Result<Self, StoreError> {
        let backend = |reason: String| StoreError::Backend {
            path: format!("etcd {}", settings.endpoints.join(",")),
            reason,
        };
        let tls =
            lockstep_link::tls::client_config(&settings.tls).map_err(|e| backend(format!("store.etcd TLS: {e}")))?;
        let targets = settings
            .endpoints
            .iter()
            .map(|e| {
                Ok(lockstep_link::tls::Target {
                    address: e.clone(),
                    server_name: lockstep_link::tls::default_server_name(e).map_err(|err| backend(err.to_string()))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| backend(format!("starting the etcd client's runtime: {e}")))?;
        // The channel's connector spawns onto the runtime it is made in.
        let channel = {
            let _in = runtime.enter();
            // etcd refuses pings more often than every 5 s (see the function).
            lockstep_link::failover::failover_channel_pinging(targets, tls.clone(), settings.request_timeout, ETCD_PING)
                .map_err(|e| backend(e.to_string()))?
        };
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            channel,
            tls,
            settings: settings.clone(),
            latency: latency::Latency::default(),
        })
    }

    pub(crate) fn kv(&self) -> KvClient<FailoverChannel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub(crate) fn lease(&self) -> LeaseClient<FailoverChannel> {
        LeaseClient::new(self.channel.clone())
    }

    /// A watch made by `request`: its responses, until the receiver is
    /// dropped or etcd ends it (the last item is then the error).
    pub(crate) fn watch_prefix(
        &self,
        request: api::WatchRequest,
    ) -> tokio::sync::mpsc::Receiver<Result<api::WatchResponse, StoreError>> {
        use tokio_stream::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut client = api::watch_client::WatchClient::new(self.channel.clone()).max_decoding_message_size(64 << 20);
        let path = format!("etcd {}{}", self.settings.endpoints.join(","), self.settings.prefix);
        let failed = move |s: tonic::Status| StoreError::Backend {
            path: path.clone(),
            reason: format!("watching the ledger: etcd said {:?}: {}", s.code(), s.message()),
        };
        self.handle.spawn(async move {
            // The request side stays open: etcd ends a watch whose client
            // has closed it.
            let requests = tokio_stream::iter([request]).chain(tokio_stream::pending());
            let mut stream = match client.watch(requests).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let _ = tx.send(Err(failed(s))).await;
                    return;
                }
            };
            loop {
                let next = tokio::select! {
                    n = stream.message() => n,
                    () = tx.closed() => return,
                };
                let item = match next {
                    Ok(Some(r)) => Ok(r),
                    Ok(None) => return,
                    Err(s) => Err(failed(s)),
                };
                let ended = item.is_err();
                if tx.send(item).await.is_err() || ended {
                    return;
                }
            }
        });
        rx
    }

    /// A channel to one member alone (`host:port`), for its own status.
    pub(crate) fn member_channel(&self, address: &str) -> Result<FailoverChannel, StoreError> {
        let _in = self.handle.enter();
        let name = lockstep_link::tls::default_server_name(address).map_err(|e| self.backend(e.to_string()))?;
        lockstep_link::failover::channel(address, &name, self.tls.clone(), self.settings.request_timeout)
            .map_err(|e| self.backend(e.to_string()))
    }

    pub(crate) fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.settings.prefix).into_bytes()
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `call` on the client's runtime and waits for it, at most
    /// `request_timeout`: an etcd without quorum answers nothing, and the
    /// caller must hear so rather than hang.
    pub(crate) fn wait<T, F>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        self.wait_answer(what, call)?
            .map_err(|status| self.failed(what, &status))
    }

    /// Like [`Etcd::wait`], with etcd's refusal handed back as it came.
    fn wait_answer<T, F>(&self, what: &str, call: F) -> Result<Result<T, tonic::Status>, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let timeout = self.settings.request_timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let started = std::time::Instant::now();
        self.handle().spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, call).await);
        });
        let Ok(outcome) = rx.recv_timeout(timeout + Duration::from_millis(500)) else {
            // Not etcd's silence: the client's own runtime never got to run
            // the call's timer (its thread busy or blocked). Said apart, so
            // a slow etcd and a starved client are not mistaken.
            self.latency.observe(what, started.elapsed(), false);
            return Err(self.backend(format!(
                "{what}: the etcd client's runtime did not run the call within {} (its thread busy or blocked)",
                humantime::format_duration(timeout + Duration::from_millis(500))
            )));
        };
        self.latency
            .observe(what, started.elapsed(), matches!(outcome, Ok(Ok(_))));
        match outcome {
            Ok(answer) => Ok(answer),
            Err(_) => Err(self.unanswered(what)),
        }
    }

    /// One Range request, waited for like [`Etcd::wait`] (the store's
    /// reads). A reply over the client's message bound is asked again for
    /// half as many keys, down to one: a page of large values shrinks
    /// instead of failing the read.
    pub(crate) fn range_waiting(
        &self,
        what: &str,
        mut request: api::RangeRequest,
    ) -> Result<api::RangeResponse, StoreError> {
        loop {
            let mut kv = self.kv();
            let asked = request.clone();
            match self.wait_answer(what, async move { kv.range(asked).await.map(|r| r.into_inner()) })? {
                Ok(reply) => return Ok(reply),
                Err(status) if too_large(&status) && request.limit != 1 => {
                    request.limit = if request.limit <= 0 {
                        PAGE_AFTER_TOO_LARGE
                    } else {
                        request.limit / 2
                    };
                    tracing::debug!(
                        what,
                        limit = request.limit,
                        "etcd reply too large: asking for fewer keys"
                    );
                }
                Err(status) => return Err(self.failed(what, &status)),
            }
        }
    }

    /// The size of etcd's database file, as the member this client talks
    /// to reports it (what etcd's quota is measured against).
    pub(crate) fn db_size(&self) -> Result<u64, StoreError> {
        let mut maintenance = api::maintenance_client::MaintenanceClient::new(self.channel.clone());
        let status = self.wait("asking etcd its size", async move {
            maintenance.status(api::StatusRequest {}).await.map(|r| r.into_inner())
        })?;
        Ok(u64::try_from(status.db_size).unwrap_or(0))
    }

    /// One Range request, from async code (election, following, status).
    pub(crate) async fn range(&self, what: &str, request: api::RangeRequest) -> Result<api::RangeResponse, StoreError> {
        let mut kv = self.kv();
        self.call(what, async move { kv.range(request).await.map(|r| r.into_inner()) })
            .await
    }

    /// The same, for async callers (the election).
    pub(crate) async fn call<T, F>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.settings.request_timeout, self.handle().spawn(call)).await;
        self.latency
            .observe(what, started.elapsed(), matches!(outcome, Ok(Ok(Ok(_)))));
        match outcome {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(status))) => Err(self.failed(what, &status)),
            Ok(Err(join)) => Err(self.backend(format!("{what}: {join}"))),
            Err(_) => Err(self.unanswered(what)),
        }
    }

    pub(crate) fn backend(&self, reason: String) -> StoreError {
        StoreError::Backend {
            path: format!("etcd {}{}", self.settings.endpoints.join(","), self.settings.prefix),
            reason,
        }
    }

    fn unanswered(&self, what: &str) -> StoreError {
        self.backend(format!(
            "{what}: etcd did not answer within {} (quorum lost, or every member down?)",
            humantime::format_duration(self.settings.request_timeout)
        ))
    }

    fn failed(&self, what: &str, status: &tonic::Status) -> StoreError {
        let hint = if status.message().contains("space exceeded") {
            "; etcd's quota is full: compact and defragment it (docs/ha.md)"
        } else if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
        ) {
            // What a member going away looks like from here (a transport error).
            " (quorum lost, or every member down?)"
        } else {
            ""
        };
        self.backend(format!(
            "{what}: etcd said {:?}: {}{hint}",
            status.code(),
            status.message()
        ))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // A runtime dropped inside another one panics; let it go quietly.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The smallest key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first page size tried after an unlimited Range came back too large.
const PAGE_AFTER_TOO_LARGE: i64 = 256;

/// tonic's refusal of a reply over `max_decoding_message_size`.
fn too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange && status.message().contains("too large")
}
