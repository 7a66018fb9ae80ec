//! gRPC adapters: take the peer identity from the connection, call the
//! controller, map errors once (`ApiError` → `Status`).

use std::pin::Pin;
use std::sync::Arc;

use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::{self, agent_service_server::AgentService, console_service_server::ConsoleService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit::AuditEvent;
use crate::controller::Controller;
use crate::error::ApiError;
use crate::refusals::Audited;
use crate::server::PeerInfo;

fn peer<T>(req: &Request<T>) -> Result<PeerIdentity, Status> {
    let info = req
        .extensions()
        .get::<PeerInfo>()
        .ok_or_else(|| Status::unauthenticated("no TLS peer information"))?;
    info.identity.clone().map_err(|e| {
        Status::unauthenticated(format!(
            "client certificate: {e}; only enrollment (`lockstep-agent enroll --token`) is served without a fleet certificate"
        ))
    })
}

pub struct AgentApi {
    controller: Arc<Controller>,
}

impl AgentApi {
    pub fn new(controller: Arc<Controller>) -> Self {
        Self { controller }
    }
}

type GateStream = Pin<Box<dyn Stream<Item = Result<pb::Directive, Status>> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::SubmitReply, Status>> + Send>>;

const ATTEST_PATH: &str = "/lockstep.v1.AgentService/Attest";

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn pin_key(&self, req: Request<pb::PinKeyRequest>) -> Result<Response<pb::PinKeyReply>, Status> {
        let who = peer(&req)?;
        let key_id = self.controller.pin_key(&who, req.into_inner().public_key).await?;
        Ok(Response::new(pb::PinKeyReply { key_id }))
    }

    async fn submit(&self, req: Request<pb::Envelope>) -> Result<Response<pb::SubmitReply>, Status> {
        let who = peer(&req)?;
        let audited = req.extensions().get::<Audited>().cloned();
        match self.controller.submit(&who, req.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => {
                // The controller wrote a rejection's audit record itself.
                if let (ApiError::Rejected(_), Some(a)) = (&e, audited) {
                    a.set();
                }
                Err(e.into())
            }
        }
    }

    type AttestStream = ReplyStream;

    /// `submit` on one stream: each envelope answered in order. The first
    /// error ends the stream with its status, as `submit` would have
    /// answered it; the agent opens a new stream for its next attestation.
    async fn attest(&self, req: Request<tonic::Streaming<pb::Envelope>>) -> Result<Response<ReplyStream>, Status> {
        let who = peer(&req)?;
        // Refused callers are answered before the stream opens (and counted
        // by the refusal layer, as for `submit`).
        self.controller.agent_host(&who)?;
        let info = req.extensions().get::<PeerInfo>().cloned();
        let mut envelopes = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let controller = self.controller.clone();
        tokio::spawn(async move {
            let closing = controller.closing();
            tokio::pin!(closing);
            loop {
                let next = tokio::select! {
                    next = envelopes.message() => next,
                    () = &mut closing => return, // the controller is stopping
                };
                let envelope = match next {
                    Ok(Some(envelope)) => envelope,
                    Ok(None) => return, // the agent closed its side
                    Err(status) => {
                        // Undecodable or over the size limit (counted), or the
                        // agent went away (not a refusal).
                        controller.refusals.stream_ended(info.as_ref(), ATTEST_PATH, &status);
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                match controller.submit(&who, envelope).await {
                    Ok(reply) => {
                        if tx.send(Ok(reply)).await.is_err() {
                            return; // the agent went away
                        }
                    }
                    Err(e) => {
                        // The controller wrote a rejection's audit record itself.
                        let rejected = matches!(e, ApiError::Rejected(_));
                        let status = Status::from(e);
                        if !rejected {
                            controller.refusals.stream_ended(info.as_ref(), ATTEST_PATH, &status);
                        }
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::RenewReply>, Status> {
        let who = peer(&req)?;
        Ok(Response::new(
            self.controller.renew(&who, &req.get_ref().csr_der).await?,
        ))
    }

    type DirectivesStream = GateStream;

    /// Sends the host's current gate, then every new decision about it.
    async fn directives(&self, req: Request<pb::DirectivesRequest>) -> Result<Response<GateStream>, Status> {
        let who = peer(&req)?;
        let PeerIdentity::Agent { host } = who else {
            return Err(Status::permission_denied("only agents receive directives"));
        };
        let mut gates = self.controller.watch_gate(&host)?;
        let mut scans = self.controller.scan_requests.watch(&host);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let closing = self.controller.closing();
        let connected = StreamGauge::open(self.controller.metrics.connected_agents.clone());
        let controller = self.controller.clone();
        self.controller.metrics.streams_opened.inc();
        tokio::spawn(async move {
            let _connected = connected;
            tokio::pin!(closing);
            loop {
                let mut gate = gates.borrow_and_update().clone();
                // The agent counts the lease from when it hears it:
                // lease_expires - decided_at must be what is left *now*.
                gate.decided_at_unix_ms = lockstep_proto::now_unix_ms();
                let directive = pb::Directive {
                    kind: Some(pb::directive::Kind::Gate(gate)),
                };
                if tx.send(Ok(directive)).await.is_err() {
                    return; // the agent went away
                }
                // A revoked host has been told it is CLOSED; nothing more for it.
                if controller.refuse_if_revoked(&host).is_err() {
                    return;
                }
                // Scan requests go out as they come; then the next gate.
                loop {
                    tokio::select! {
                        changed = gates.changed() => if changed.is_err() { return } else { break },
                        changed = scans.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let Some(request) = scans.borrow_and_update().clone() else { continue };
                            let directive = pb::Directive {
                                kind: Some(pb::directive::Kind::Scan(request)),
                            };
                            if tx.send(Ok(directive)).await.is_err() {
                                return;
                            }
                        }
                        () = &mut closing => return, // the controller is stopping
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Counts an open directive stream for as long as it lives.
struct StreamGauge(prometheus_client::metrics::gauge::Gauge);

impl StreamGauge {
    fn open(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct ConsoleApi {
    controller: Arc<Controller>,
}

impl ConsoleApi {
    pub fn new(controller: Arc<Controller>) -> Self {
        Self { controller }
    }

    /// Records a refused console action in the audit log (who tried what),
    /// then hands the result on.
    async fn audited<T>(&self, who: &PeerIdentity, what: &str, result: Result<T, ApiError>) -> Result<T, Status> {
        if let Err(ApiError::PermissionDenied(why)) = &result {
            let event = AuditEvent {
                actor: who.to_string(),
                action: "console.denied".into(),
                detail: format!("{what}: {why}"),
                ..Default::default()
            };
            if let Err(e) = self.controller.audit(vec![event]).await {
                tracing::error!(error = %e, "cannot record a denied console action");
            }
        }
        result.map_err(Status::from)
    }
}

#[tonic::async_trait]
impl ConsoleService for ConsoleApi {
    async fn list_hosts(&self, req: Request<pb::ListHostsRequest>) -> Result<Response<pb::HostList>, Status> {
        let who = peer(&req)?;
        let hosts = self
            .audited(&who, "hosts", self.controller.list_hosts(&who, &req.get_ref().role))
            .await?;
        Ok(Response::new(pb::HostList { hosts }))
    }

    async fn get_host(&self, req: Request<pb::GetHostRequest>) -> Result<Response<pb::HostDetail>, Status> {
        let who = peer(&req)?;
        let r = req.get_ref();
        let result = self.controller.get_host(&who, &r.host, r.include_entries);
        Ok(Response::new(self.audited(&who, "host", result).await?))
    }

    async fn diff(&self, req: Request<pb::DiffRequest>) -> Result<Response<pb::DiffReply>, Status> {
        let who = peer(&req)?;
        Ok(Response::new(
            self.audited(&who, "diff", self.controller.diff(&who, req.get_ref()))
                .await?,
        ))
    }

    async fn gate_check(&self, req: Request<pb::GateCheckRequest>) -> Result<Response<pb::GateCheckReply>, Status> {
        let who = peer(&req)?;
        Ok(Response::new(
            self.audited(
                &who,
                "gate check",
                self.controller.gate_check(&who, &req.get_ref().role),
            )
            .await?,
        ))
    }

    async fn propose_release(&self, req: Request<pb::ProposeReleaseRequest>) -> Result<Response<pb::Release>, Status> {
        let who = peer(&req)?;
        let result = self.controller.propose_release(&who, req.into_inner()).await;
        Ok(Response::new(self.audited(&who, "release propose", result).await?))
    }

    async fn approve_release(&self, req: Request<pb::ApproveReleaseRequest>) -> Result<Response<pb::Release>, Status> {
        let who = peer(&req)?;
        let result = self.controller.approve_release(&who, req.get_ref().number).await;
        Ok(Response::new(self.audited(&who, "release approve", result).await?))
    }

    async fn halt(&self, req: Request<pb::HaltRequest>) -> Result<Response<pb::HaltReply>, Status> {
        let who = peer(&req)?;
        let result = self.controller.halt(&who, req.into_inner()).await;
        Ok(Response::new(self.audited(&who, "halt", result).await?))
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeReply>, Status> {
        let who = peer(&req)?;
        let result = self.controller.resume(&who, req.into_inner()).await;
        Ok(Response::new(self.audited(&who, "resume", result).await?))
    }

    async fn list_halts(&self, req: Request<pb::ListHaltsRequest>) -> Result<Response<pb::HaltList>, Status> {
        let who = peer(&req)?;
        let halts = self
            .audited(&who, "halts", self.controller.list_halts(&who, req.get_ref().all))
            .await?;
        Ok(Response::new(pb::HaltList { halts }))
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::AuditList>, Status> {
        let who = peer(&req)?;
        let records = self
            .audited(&who, "audit", self.controller.list_audit(&who, req.get_ref()))
            .await?;
        Ok(Response::new(pb::AuditList { records }))
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditReply>, Status> {
        let who = peer(&req)?;
        Ok(Response::new(
            self.audited(&who, "audit verify", self.controller.verify_audit(&who))
                .await?,
        ))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let who = peer(&req)?;
        let reply = self
            .audited(
                &who,
                "token create",
                self.controller.create_token(&who, req.get_ref()).await,
            )
            .await?;
        Ok(Response::new(reply))
    }

    async fn revoke_host(&self, req: Request<pb::RevokeHostRequest>) -> Result<Response<pb::RevokeHostReply>, Status> {
        let who = peer(&req)?;
        let what = if req.get_ref().remove {
            "host remove"
        } else {
            "host revoke"
        };
        let reply = self
            .audited(&who, what, self.controller.revoke_host(&who, req.get_ref()).await)
            .await?;
        Ok(Response::new(reply))
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::IncidentList>, Status> {
        let who = peer(&req)?;
        let list = self
            .audited(&who, "alerts", self.controller.list_incidents(&who))
            .await?;
        Ok(Response::new(pb::IncidentList {
            incidents: list.iter().map(|i| i.to_pb()).collect(),
        }))
    }

    async fn request_scan(
        &self,
        req: Request<pb::RequestScanRequest>,
    ) -> Result<Response<pb::RequestScanReply>, Status> {
        let who = peer(&req)?;
        let reply = self
            .audited(&who, "scan", self.controller.request_scan(&who, req.get_ref()).await)
            .await?;
        Ok(Response::new(reply))
    }

    async fn ack_incident(&self, req: Request<pb::AckIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let who = peer(&req)?;
        let id = req.get_ref().id;
        let acked = self
            .audited(&who, "alerts ack", self.controller.ack_incident(&who, id).await)
            .await?;
        Ok(Response::new(acked.to_pb()))
    }

    async fn list_releases(&self, req: Request<pb::ListReleasesRequest>) -> Result<Response<pb::ReleaseList>, Status> {
        let who = peer(&req)?;
        let releases = self
            .audited(
                &who,
                "release list",
                self.controller.list_releases(&who, &req.get_ref().role),
            )
            .await?;
        Ok(Response::new(pb::ReleaseList { releases }))
    }
}

/// Enrollment: the one service answered without a client certificate; the
/// join token is the credential.
pub struct EnrollApi {
    controller: Arc<Controller>,
}

impl EnrollApi {
    pub fn new(controller: Arc<Controller>) -> Self {
        Self { controller }
    }
}

#[tonic::async_trait]
impl pb::enroll_service_server::EnrollService for EnrollApi {
    async fn enroll(&self, req: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollReply>, Status> {
        Ok(Response::new(self.controller.enroll(req.into_inner()).await?))
    }
}
