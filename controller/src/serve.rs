//! A leader at work: its gRPC services (behind the outermost layers: the
//! standing check, detached calls, the refusal audit) on the acceptor's
//! connections, the web board, and the background loops (gate refresh and
//! transitions, alerts, refusal windows, heartbeat counts, the SIEM
//! forwarder), started together and drained in order at shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::pb::agent_service_server::AgentServiceServer;
use lockstep_proto::pb::console_service_server::ConsoleServiceServer;
use lockstep_proto::pb::enroll_service_server::EnrollServiceServer;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::api::server::{Accepting, accept_loop};
use crate::api::service::{AgentApi, ConsoleApi, EnrollApi};
use crate::controller::Controller;

/// After shutdown begins, connections get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves both services on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_all(listener.into(), None, tls, controller, shutdown).await
}

/// [`serve`], and the web board on `board` (its listener, bound by the
/// caller so that a bad `board.listen` stops the start naming it).
pub async fn serve_all(
    listener: Accepting,
    board_listener: Option<Accepting>,
    tls: Arc<ServerConfig>,
    controller: Arc<Controller>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let max = controller.config().max_message_bytes();
    // Background loops end when the server has stopped, each finishing
    // what it is doing (mini-redis's shutdown shape): the gate recorder
    // writes what is still queued, then the last refusal window and
    // heartbeat count are written. None is aborted.
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stopped_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut loops = tokio::task::JoinSet::new();
    {
        let (board, stop) = (controller.board.clone(), stopped());
        loops.spawn(async move { board.refresh(stop).await });
        let (board, stop) = (controller.board.clone(), stopped());
        loops.spawn(async move { board.record_transitions(stop).await });
        let (alerts, outcomes, stop) = (controller.alerts.clone(), controller.metrics.alerts.clone(), stopped());
        loops.spawn(alerts.run(outcomes, stop));
        let (c, stop) = (controller.clone(), stopped());
        loops.spawn(async move {
            crate::alerts::store_size::run(c.ledger.clone(), c.alerts.clone(), c.metrics.clone(), stop).await
        });
        let (c, stop) = (controller.clone(), stopped());
        loops.spawn(async move { crate::audit::refusals::run(&c.refusals, &c.ledger, stop).await });
        let (c, stop) = (controller.clone(), stopped());
        loops.spawn(async move { c.ingest.count_heartbeats(stop).await });
        match crate::report::open_or_create_key(&crate::report::ReportIssuer::key_path(&controller.config)) {
            Ok(key) => {
                let archivist =
                    crate::archive::Archivist::new(controller.config.clone(), controller.ledger.clone(), Arc::new(key));
                loops.spawn(archivist.run(stopped()));
            }
            Err(e) => tracing::error!(error = %e, "no report key: audit segments are neither closed nor archived"),
        }
        if let Some(forwarder) = crate::alerts::siem::Forwarder::new(
            &controller.config,
            controller.alerts.clone(),
            controller.ledger.clone(),
            controller.metrics.clone(),
        ) {
            loops.spawn(forwarder.run(stopped()));
        }
        if let Some(board) = board_listener {
            match lockstep_link::tls::web_server_config(&controller.config.tls) {
                Ok(web_tls) => {
                    let (c, stop) = (controller.clone(), stopped());
                    loops.spawn(crate::web::serve(board, web_tls, c, stop));
                }
                Err(e) => {
                    tracing::error!(error = %e, "the board cannot use the controller's certificate; not serving it")
                }
            }
        }
    }
    let incoming = ReceiverStream::new(accept_loop(listener, tls, controller.clone()));
    let stopping = controller.clone();
    let stopping_flush = controller.clone();
    let closing_for_health = controller.closing();
    let begin = async move {
        shutdown.await;
        stopping.begin_shutdown();
    };
    let closing = controller.closing();
    // Standard gRPC health and reflection, so off-the-shelf tools work.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<ConsoleServiceServer<ConsoleApi>>().await;
    // v1 and v1alpha: older grpcurl and Python's grpcio-reflection speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lockstep_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The descriptors are compiled in: failing here is a build defect.
    let unavailable = |e: tonic_reflection::server::Error| {
        tracing::error!(error = %e, "gRPC reflection unavailable");
        e
    };
    let reflection = reflection_builder().build_v1().map_err(unavailable).ok();
    let reflection_v1alpha = reflection_builder().build_v1alpha().map_err(unavailable).ok();
    // Health says NOT_SERVING as soon as shutdown begins (a load balancer
    // stops sending), while calls in flight finish.
    let reporter = health.clone();
    let health_task = tokio::spawn(async move {
        closing_for_health.await;
        reporter.set_not_serving::<AgentServiceServer<AgentApi>>().await;
        reporter.set_not_serving::<ConsoleServiceServer<ConsoleApi>>().await;
    });
    let server = tonic::transport::Server::builder()
        // Outermost first: a call and its refusal count finish even when the
        // client goes away.
        .layer(
            tower::ServiceBuilder::new()
                // A controller that stood down answers nothing, health included.
                .layer(crate::api::standing::StandingLayer(controller.standing.clone()))
                .layer(crate::api::detach::DetachLayer::new(crate::api::detach::MAX_DETACHED))
                .layer(crate::api::refusals::RefusalLayer::new(
                    controller.refusals.clone(),
                    controller.ledger.clone(),
                ))
                .into_inner(),
        )
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(
            AgentServiceServer::new(AgentApi::new(controller.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            ConsoleServiceServer::new(ConsoleApi::new(controller.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            EnrollServiceServer::new(EnrollApi::new(controller))
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(64 * 1024),
        )
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, begin);
    tokio::pin!(server);
    // Streams end when shutdown begins; anything still open after the grace
    // period (a peer that never reads) does not keep the process alive.
    let result = tokio::select! {
        r = &mut server => r,
        () = async { closing.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            warn!("connections still open {}s after shutdown began; stopping anyway", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    };
    // Also when the server ended on its own (an error): nothing waits for a
    // shutdown that never comes.
    stopping_flush.begin_shutdown();
    let _ = stopped_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a background loop failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            "background loops still busy {}s after the server stopped; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    let _ = health_task.await;
    drop(health);
    crate::audit::refusals::flush(&stopping_flush.refusals, &stopping_flush.ledger).await;
    stopping_flush.ingest.record_heartbeat_count().await;
    result
}
