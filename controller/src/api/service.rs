//! gRPC adapters: take the peer identity from the connection, call the
//! part of the controller that owns the request, map errors once
//! (`ApiError` → `Status`, in [`crate::error`]). Who may call each method
//! was decided before the handler by the authorization table
//! ([`crate::api::authz`], applied in [`crate::api::refusals`]).

use std::pin::Pin;
use std::sync::Arc;

use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::{self, agent_service_server::AgentService, console_service_server::ConsoleService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::refusals::Audited;
use crate::audit::operator::Operator;
use crate::audit::peer::PeerInfo;
use crate::controller::Controller;
use crate::error::ApiError;

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

/// The operator a console call acts for. The table let only operator
/// certificates through; anything else is refused here too (fail closed).
pub(crate) fn operator<T>(req: &Request<T>) -> Result<Operator, Status> {
    let who = peer(req)?;
    Operator::of(&who).ok_or_else(|| {
        Status::permission_denied(format!(
            "console requests need an operator certificate; this connection is {who}"
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
        let key_id = self
            .controller
            .ingest
            .pin_key(&who, req.into_inner().public_key)
            .await?;
        Ok(Response::new(pb::PinKeyReply { key_id }))
    }

    async fn submit(&self, req: Request<pb::Envelope>) -> Result<Response<pb::SubmitReply>, Status> {
        let who = peer(&req)?;
        let audited = req.extensions().get::<Audited>().cloned();
        match self.controller.ingest.submit(&who, req.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => {
                // The controller wrote a rejection's audit record itself.
                if let (true, Some(a)) = (e.audited_here(), audited) {
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
        self.controller.ingest.agent_of(&who)?;
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
                match controller.ingest.submit(&who, envelope).await {
                    Ok(reply) => {
                        if tx.send(Ok(reply)).await.is_err() {
                            return; // the agent went away
                        }
                    }
                    Err(e) => {
                        // The controller wrote a rejection's audit record itself.
                        let rejected = e.audited_here();
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
            self.controller.enrollment.renew(&who, &req.get_ref().csr_der).await?,
        ))
    }

    async fn tpm_nonce(&self, req: Request<pb::TpmNonceRequest>) -> Result<Response<pb::TpmNonceReply>, Status> {
        let who = peer(&req)?;
        let nonce = self.controller.tpm.nonce(&who)?;
        Ok(Response::new(pb::TpmNonceReply { nonce }))
    }

    async fn tpm_quote(&self, req: Request<pb::TpmQuoteRequest>) -> Result<Response<pb::TpmQuoteReply>, Status> {
        let who = peer(&req)?;
        let audited = req.extensions().get::<Audited>().cloned();
        match self.controller.tpm.quote(&who, req.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => {
                // A refused quote is recorded (`tpm.quote_refused`).
                if let (true, Some(a)) = (e.audited_here(), audited) {
                    a.set();
                }
                Err(e.into())
            }
        }
    }

    type DirectivesStream = GateStream;

    /// Sends the host's current gate, then every new decision about it.
    async fn directives(&self, req: Request<pb::DirectivesRequest>) -> Result<Response<GateStream>, Status> {
        let who = peer(&req)?;
        let host = self.controller.ingest.agent_of(&who)?.0.to_string();
        let c = &self.controller;
        let gates = c.board.watch(&host)?;
        let scans = c.scans.watch(&host);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let connected = StreamGauge::open(c.metrics.connected_agents.clone());
        c.metrics.streams_opened.inc();
        let (board, ledger, closing) = (c.board.clone(), c.ledger.clone(), c.closing());
        tokio::spawn(async move {
            let _connected = connected;
            crate::gates::directives::follow(&host, &board, &ledger, gates, scans, tx, closing).await;
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
}

#[tonic::async_trait]
impl ConsoleService for ConsoleApi {
    async fn list_hosts(&self, req: Request<pb::ListHostsRequest>) -> Result<Response<pb::HostList>, Status> {
        operator(&req)?;
        let hosts = self.controller.queries.list_hosts(&req.get_ref().role)?;
        Ok(Response::new(pb::HostList { hosts }))
    }

    async fn get_host(&self, req: Request<pb::GetHostRequest>) -> Result<Response<pb::HostDetail>, Status> {
        operator(&req)?;
        let r = req.get_ref();
        Ok(Response::new(
            self.controller.queries.get_host(&r.host, r.include_entries)?,
        ))
    }

    async fn diff(&self, req: Request<pb::DiffRequest>) -> Result<Response<pb::DiffReply>, Status> {
        operator(&req)?;
        Ok(Response::new(self.controller.queries.diff(req.get_ref())?))
    }

    /// The check scripts and people run before the open; each run is
    /// recorded (who, when, the answer and its exit code) as evidence of
    /// the control having been applied.
    async fn gate_check(&self, req: Request<pb::GateCheckRequest>) -> Result<Response<pb::GateCheckReply>, Status> {
        let who = operator(&req)?;
        let incidents = self.controller.alerts.list();
        match self
            .controller
            .queries
            .gate_check_recorded(&who, &req.get_ref().role, &incidents)
            .await
        {
            Ok(reply) => Ok(Response::new(reply)),
            // Not answered here: the console asks another controller.
            Err(e) if e.domain::<crate::queries::Unrecorded>().is_some() => {
                Err(crate::api::standing::not_here(e.into(), "unrecorded"))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn propose_release(&self, req: Request<pb::ProposeReleaseRequest>) -> Result<Response<pb::Release>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(
            self.controller.releases.propose(&who, req.into_inner()).await?,
        ))
    }

    async fn approve_release(&self, req: Request<pb::ApproveReleaseRequest>) -> Result<Response<pb::Release>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(
            self.controller.releases.approve(&who, req.get_ref().number).await?,
        ))
    }

    async fn halt(&self, req: Request<pb::HaltRequest>) -> Result<Response<pb::HaltReply>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(self.controller.halts.halt(&who, req.into_inner()).await?))
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeReply>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(
            self.controller.halts.resume(&who, req.into_inner()).await?,
        ))
    }

    async fn list_halts(&self, req: Request<pb::ListHaltsRequest>) -> Result<Response<pb::HaltList>, Status> {
        operator(&req)?;
        let halts = self.controller.halts.list(req.get_ref().all);
        Ok(Response::new(pb::HaltList { halts }))
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::AuditList>, Status> {
        operator(&req)?;
        let controller = self.controller.clone();
        let req = req.into_inner();
        // Reading the log is work for a blocking thread, off the request path.
        Ok(Response::new(
            off_runtime(move || controller.queries.list_audit(&req)).await?,
        ))
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditReply>, Status> {
        operator(&req)?;
        let controller = self.controller.clone();
        Ok(Response::new(
            off_runtime(move || controller.queries.verify_audit()).await?,
        ))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(
            self.controller.enrollment.create_token(&who, req.get_ref()).await?,
        ))
    }

    async fn revoke_host(&self, req: Request<pb::RevokeHostRequest>) -> Result<Response<pb::RevokeHostReply>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(
            self.controller.enrollment.revoke_host(&who, req.get_ref()).await?,
        ))
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::IncidentList>, Status> {
        operator(&req)?;
        let list = self.controller.alerts.list();
        Ok(Response::new(pb::IncidentList {
            incidents: list.iter().map(|i| i.to_pb()).collect(),
        }))
    }

    async fn request_scan(
        &self,
        req: Request<pb::RequestScanRequest>,
    ) -> Result<Response<pb::RequestScanReply>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(self.controller.scans.request(&who, req.get_ref()).await?))
    }

    async fn pre_open_report(
        &self,
        req: Request<pb::PreOpenReportRequest>,
    ) -> Result<Response<pb::PreOpenReportReply>, Status> {
        let who = operator(&req)?;
        Ok(Response::new(
            self.controller.reports.pre_open(&who, req.into_inner()).await?,
        ))
    }

    async fn board_login(&self, req: Request<pb::BoardLoginRequest>) -> Result<Response<pb::BoardLoginReply>, Status> {
        let who = operator(&req)?;
        let (url, expires_at_unix_ms) = self.controller.board_sessions.issue_link(&who).await?;
        Ok(Response::new(pb::BoardLoginReply {
            url,
            expires_at_unix_ms,
        }))
    }

    async fn list_board_sessions(
        &self,
        req: Request<pb::ListBoardSessionsRequest>,
    ) -> Result<Response<pb::BoardSessionList>, Status> {
        operator(&req)?;
        let sessions = self
            .controller
            .board_sessions
            .list()
            .await?
            .iter()
            .map(board_session_pb)
            .collect();
        Ok(Response::new(pb::BoardSessionList { sessions }))
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        operator(&req)?;
        let reply = match &self.controller.cluster {
            Some(etcd) => crate::store::etcd::cluster::status(etcd.clone())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?,
            // sled: this controller is the whole control plane.
            None => pb::ClusterStatusReply {
                backend: "sled".into(),
                leader: "this controller".into(),
                leader_address: self.controller.config.listen.to_string(),
                epoch: 0,
                controllers: Vec::new(),
                members: Vec::new(),
                now_unix_ms: self.controller.ledger.now_unix_ms(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn revoke_board_session(
        &self,
        req: Request<pb::RevokeBoardSessionRequest>,
    ) -> Result<Response<pb::BoardSession>, Status> {
        let who = operator(&req)?;
        let ended = self.controller.board_sessions.revoke(&who, &req.get_ref().id).await?;
        Ok(Response::new(board_session_pb(&ended)))
    }

    async fn ack_incident(&self, req: Request<pb::AckIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let who = operator(&req)?;
        let acked = self.controller.alerts.ack(&who, req.get_ref().id).await?;
        Ok(Response::new(acked.to_pb()))
    }

    async fn list_releases(&self, req: Request<pb::ListReleasesRequest>) -> Result<Response<pb::ReleaseList>, Status> {
        operator(&req)?;
        let releases = self.controller.releases.list(&req.get_ref().role);
        Ok(Response::new(pb::ReleaseList { releases }))
    }
}

fn board_session_pb(s: &crate::logins::Session) -> pb::BoardSession {
    pb::BoardSession {
        id: s.id.clone(),
        operator: s.operator.name.clone(),
        role: s.operator.role.as_str().into(),
        created_at_unix_ms: s.created_at_unix_ms,
        expires_at_unix_ms: s.expires_at_unix_ms,
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
        let audited = req.extensions().get::<Audited>().cloned();
        match self.controller.enrollment.enroll(req.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => {
                // The ledger recorded the refusal (`enroll.refused`).
                if let (true, Some(a)) = (e.audited_here(), audited) {
                    a.set();
                }
                Err(e.into())
            }
        }
    }

    async fn tpm_challenge(
        &self,
        req: Request<pb::TpmChallengeRequest>,
    ) -> Result<Response<pb::TpmChallengeReply>, Status> {
        let audited = req.extensions().get::<Audited>().cloned();
        match self.controller.enrollment.tpm_challenge(req.into_inner()).await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(e) => {
                if let (true, Some(a)) = (e.audited_here(), audited) {
                    a.set();
                }
                Err(e.into())
            }
        }
    }
}

/// Runs a long read on a blocking thread, so it delays no other call.
async fn off_runtime<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| ApiError::Internal(format!("a read task failed: {e}")))?
}
