//! The console reads a standby answers itself, from its warm view of the
//! ledger ([`crate::ha::follow`]) and the store as etcd holds it (the
//! audit log, the incident book): hosts, one host, diffs, releases, halts,
//! the audit log and its verification, incidents, and cluster status. The
//! answers are the same functions the leader answers with
//! ([`crate::queries::ViewReads`]), over the followed view, so an operator
//! can read the fleet while the leader is busy, being replaced, or etcd has
//! no quorum (the view is then as of the last revision followed).
//!
//! Every other call is the leader's and is sent there (the refusal names
//! it, [`crate::ha::standby::StandbyView::refusal`]): anything that writes, and
//! the reads that are records themselves: `gate check` (each run is
//! audited evidence), the pre-open report (signed by the leader), board
//! links and sessions (held by the leader). Each answer carries the
//! `lockstep-served-by` header, which says it came from a standby and how
//! far behind the ledger its view was; the console prints it.

use std::sync::Arc;

use lockstep_link::failover::SERVED_BY_HEADER;
use lockstep_proto::pb::{self, console_service_server::ConsoleService};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::fleet::gate::Clock;
use crate::ha::follow::Followed;
use crate::ha::standby::StandbyView;
use crate::queries::{self, ViewReads};
use crate::store::Store;
use crate::store::etcd::Etcd;
use crate::store::etcd::store::{EtcdStore, Fence};
use lockstep_daemon::clock::SharedClock;

pub struct StandbyConsole {
    config: Arc<ControllerConfig>,
    followed: Arc<Followed>,
    etcd: Arc<Etcd>,
    /// Read-only: a standby writes nothing.
    store: Arc<EtcdStore>,
    view: watch::Receiver<StandbyView>,
    /// What gate decisions are made at (the controller's injected clock).
    clock: SharedClock,
}

impl StandbyConsole {
    pub fn new(
        config: Arc<ControllerConfig>,
        followed: Arc<Followed>,
        etcd: Arc<Etcd>,
        view: watch::Receiver<StandbyView>,
        clock: SharedClock,
    ) -> Self {
        let store = Arc::new(EtcdStore::new(etcd.clone(), Fence::ReadOnly));
        Self {
            config,
            followed,
            etcd,
            store,
            view,
            clock,
        }
    }

    /// The leader's call: sent there.
    fn leaders(&self) -> Status {
        self.view.borrow().refusal()
    }

    /// `answer` from the followed view, once it is loaded (before, the
    /// call is sent to the leader like a write).
    fn read_view<T>(&self, answer: impl FnOnce(&ViewReads<'_>) -> Result<T, ApiError>) -> Result<Response<T>, Status> {
        let Some(lag) = self.followed.lag_revisions() else {
            return Err(self.leaders());
        };
        let clock = Clock::at(&self.config, self.clock.now_unix_ms());
        let reply = {
            let state = self.followed.view.read().unwrap_or_else(|p| p.into_inner());
            answer(&ViewReads::new(&self.config, &state, clock))?
        };
        Ok(self.served(reply, lag))
    }

    /// `answer` from the store as etcd holds it now, off the async workers
    /// (a store read waits on etcd).
    async fn read_store<T: Send + 'static>(
        &self,
        answer: impl FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let store = self.store.clone();
        let reply = tokio::task::spawn_blocking(move || answer(store.as_ref()))
            .await
            .map_err(|e| Status::internal(format!("reading the store: {e}")))??;
        Ok(self.served(reply, 0))
    }

    fn served<T>(&self, reply: T, lag: i64) -> Response<T> {
        let mut response = Response::new(reply);
        let said = format!("standby {} ({lag} revisions behind the ledger)", self.view.borrow().me);
        if let Ok(v) = said.parse() {
            response.metadata_mut().insert(SERVED_BY_HEADER, v);
        }
        response
    }
}

#[tonic::async_trait]
impl ConsoleService for StandbyConsole {
    async fn list_hosts(&self, req: Request<pb::ListHostsRequest>) -> Result<Response<pb::HostList>, Status> {
        crate::api::service::operator(&req)?;
        self.read_view(|v| {
            Ok(pb::HostList {
                hosts: v.list_hosts(&req.get_ref().role)?,
            })
        })
    }

    async fn get_host(&self, req: Request<pb::GetHostRequest>) -> Result<Response<pb::HostDetail>, Status> {
        crate::api::service::operator(&req)?;
        let r = req.get_ref();
        self.read_view(|v| v.get_host(&r.host, r.include_entries))
    }

    async fn diff(&self, req: Request<pb::DiffRequest>) -> Result<Response<pb::DiffReply>, Status> {
        crate::api::service::operator(&req)?;
        self.read_view(|v| v.diff(req.get_ref()))
    }

    async fn list_releases(&self, req: Request<pb::ListReleasesRequest>) -> Result<Response<pb::ReleaseList>, Status> {
        crate::api::service::operator(&req)?;
        self.read_view(|v| {
            Ok(pb::ReleaseList {
                releases: crate::releases::list_in(v.state(), &req.get_ref().role),
            })
        })
    }

    async fn list_halts(&self, req: Request<pb::ListHaltsRequest>) -> Result<Response<pb::HaltList>, Status> {
        crate::api::service::operator(&req)?;
        self.read_view(|v| {
            Ok(pb::HaltList {
                halts: crate::halts::list_in(v.state(), req.get_ref().all),
            })
        })
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::AuditList>, Status> {
        crate::api::service::operator(&req)?;
        let req = req.into_inner();
        let archive = self.config.audit.archive_dir.clone();
        self.read_store(move |store| queries::list_audit(store, &archive, &req))
            .await
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditReply>, Status> {
        crate::api::service::operator(&req)?;
        self.read_store(queries::verify_audit).await
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::IncidentList>, Status> {
        crate::api::service::operator(&req)?;
        self.read_store(|store| {
            let book = crate::alerts::incidents::Incidents::load(store.incidents().map_err(ApiError::Store)?);
            Ok(pb::IncidentList {
                incidents: book.list().iter().map(|i| i.to_pb()).collect(),
            })
        })
        .await
    }

    async fn cluster_status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        crate::api::service::operator(&req)?;
        let reply = crate::store::etcd::cluster::status(self.etcd.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(self.served(reply, self.followed.lag_revisions().unwrap_or(0)))
    }

    // A recorded read: the leader's audit log keeps each run.
    async fn gate_check(&self, _: Request<pb::GateCheckRequest>) -> Result<Response<pb::GateCheckReply>, Status> {
        Err(self.leaders())
    }

    // Signed with the leader's report key, from the audit log it keeps.
    async fn pre_open_report(
        &self,
        _: Request<pb::PreOpenReportRequest>,
    ) -> Result<Response<pb::PreOpenReportReply>, Status> {
        Err(self.leaders())
    }

    // Board sessions live in the leader's memory.
    async fn board_login(&self, _: Request<pb::BoardLoginRequest>) -> Result<Response<pb::BoardLoginReply>, Status> {
        Err(self.leaders())
    }

    async fn list_board_sessions(
        &self,
        _: Request<pb::ListBoardSessionsRequest>,
    ) -> Result<Response<pb::BoardSessionList>, Status> {
        Err(self.leaders())
    }

    // Writes.
    async fn propose_release(&self, _: Request<pb::ProposeReleaseRequest>) -> Result<Response<pb::Release>, Status> {
        Err(self.leaders())
    }

    async fn approve_release(&self, _: Request<pb::ApproveReleaseRequest>) -> Result<Response<pb::Release>, Status> {
        Err(self.leaders())
    }

    async fn halt(&self, _: Request<pb::HaltRequest>) -> Result<Response<pb::HaltReply>, Status> {
        Err(self.leaders())
    }

    async fn resume(&self, _: Request<pb::ResumeRequest>) -> Result<Response<pb::ResumeReply>, Status> {
        Err(self.leaders())
    }

    async fn ack_incident(&self, _: Request<pb::AckIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        Err(self.leaders())
    }

    async fn create_token(&self, _: Request<pb::CreateTokenRequest>) -> Result<Response<pb::CreateTokenReply>, Status> {
        Err(self.leaders())
    }

    async fn revoke_host(&self, _: Request<pb::RevokeHostRequest>) -> Result<Response<pb::RevokeHostReply>, Status> {
        Err(self.leaders())
    }

    async fn request_scan(&self, _: Request<pb::RequestScanRequest>) -> Result<Response<pb::RequestScanReply>, Status> {
        Err(self.leaders())
    }

    async fn revoke_board_session(
        &self,
        _: Request<pb::RevokeBoardSessionRequest>,
    ) -> Result<Response<pb::BoardSession>, Status> {
        Err(self.leaders())
    }
}
