//! Whether this controller may still act as the leader. On etcd it stops
//! at the first doubt about its lead (its lease not renewed in time, a
//! write refused or left unanswered): a leader that cannot record a
//! decision does not make it (Kubernetes' leader election stops acting
//! before its lease can pass on, the same way). Every front consults it
//! before it answers ([`crate::api::standing`], the board). sled's one
//! controller never stands down.

use std::sync::Arc;

use tokio::sync::watch;

/// Shared by the controller's parts and its outermost gRPC layer.
#[derive(Clone)]
pub struct Standing {
    name: Arc<str>,
    down: Arc<watch::Sender<Option<String>>>,
}

impl Standing {
    /// `name`: this controller's, for the refusal's message.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            down: Arc::new(watch::channel(None).0),
        }
    }

    /// Stops answering as the leader, for `why` (the first reason is
    /// kept). True the first time.
    pub fn stand_down(&self, why: &str) -> bool {
        self.down.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            *d = Some(why.to_string());
            true
        })
    }

    /// This controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why this controller stood down, if it has.
    pub fn stood_down(&self) -> Option<String> {
        self.down.borrow().clone()
    }
}
