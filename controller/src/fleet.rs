//! The controller's in-memory view of the fleet: host records, manifests by
//! digest (shared by every host that holds them), and releases. It is loaded
//! from the store at start and updated only after a write is durable, so it
//! never shows anything the store would not. Gate decisions read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lockstep_proto::digest::{Digest, digest_where};
use lockstep_proto::pb::{Entry, Gate};

use crate::config::{ControllerConfig, RoleConfig, RoleMode};
use crate::gate::{self, Clock, Expected, HostFacts};
use crate::store::{HaltRecord, HostRecord, ReleaseRecord, Store, StoreError};

#[derive(Default)]
pub struct FleetState {
    pub hosts: HashMap<String, HostRecord>,
    manifests: HashMap<String, Arc<Vec<Entry>>>,
    /// (role, full digest) → digest without the role's per-host paths.
    comparable: HashMap<(String, String), Digest>,
    pub releases: BTreeMap<u64, ReleaseRecord>,
    /// Every halt ever thrown, lifted ones included.
    pub halts: BTreeMap<u64, HaltRecord>,
}

impl FleetState {
    /// Loads hosts, releases and every manifest they point at.
    pub fn load(store: &dyn Store, config: &ControllerConfig) -> Result<Self, StoreError> {
        let mut state = Self::default();
        for release in store.releases()? {
            state.load_manifest(store, config, &release.role, &release.digest_hex)?;
            state.releases.insert(release.number, release);
        }
        for halt in store.halts()? {
            state.halts.insert(halt.id, halt);
        }
        for host in store.hosts()? {
            if host.has_reported() {
                state.load_manifest(store, config, &host.role, &host.digest_hex)?;
            }
            state.hosts.insert(host.host.clone(), host);
        }
        Ok(state)
    }

    fn load_manifest(
        &mut self,
        store: &dyn Store,
        config: &ControllerConfig,
        role: &str,
        digest_hex: &str,
    ) -> Result<(), StoreError> {
        if !self.manifests.contains_key(digest_hex) {
            let entries = store.manifest(digest_hex)?.ok_or_else(|| StoreError::Corrupt {
                key: format!("manifest {digest_hex}"),
                reason: "referenced but not stored".into(),
            })?;
            self.manifests.insert(digest_hex.to_string(), Arc::new(entries));
        }
        self.note_comparable(config, role, digest_hex);
        Ok(())
    }

    pub fn manifest(&self, digest_hex: &str) -> Option<Arc<Vec<Entry>>> {
        self.manifests.get(digest_hex).cloned()
    }

    pub fn has_manifest(&self, digest_hex: &str) -> bool {
        self.manifests.contains_key(digest_hex)
    }

    /// Adds a (durably stored) manifest to the cache.
    pub fn add_manifest(&mut self, config: &ControllerConfig, role: &str, digest_hex: &str, entries: Arc<Vec<Entry>>) {
        self.manifests.entry(digest_hex.to_string()).or_insert(entries);
        self.note_comparable(config, role, digest_hex);
    }

    fn note_comparable(&mut self, config: &ControllerConfig, role: &str, digest_hex: &str) {
        let key = (role.to_string(), digest_hex.to_string());
        if self.comparable.contains_key(&key) {
            return;
        }
        let (Some(role_cfg), Some(entries)) = (config.roles.get(role), self.manifests.get(digest_hex)) else {
            return;
        };
        let d = digest_where(entries, |e| !role_cfg.is_excluded_from_comparison(&e.path));
        self.comparable.insert(key, d);
    }

    fn facts<'a>(&'a self, role: &str, host: &'a str) -> HostFacts<'a> {
        let record = self.hosts.get(host).filter(|r| r.role == role);
        let reported = record.filter(|r| r.has_reported());
        HostFacts {
            host,
            record,
            entries: reported
                .and_then(|r| self.manifests.get(&r.digest_hex))
                .map(|m| m.as_slice()),
            comparable: reported.and_then(|r| self.comparable.get(&(role.to_string(), r.digest_hex.clone())).copied()),
        }
    }

    /// The role's active release: its highest-numbered approved release.
    pub fn active_release(&self, role: &str) -> Option<&ReleaseRecord> {
        self.releases
            .values()
            .rev()
            .find(|r| r.role == role && r.approved_by.is_some())
    }

    /// What the role's hosts must hold now.
    pub fn expected<'a>(&'a self, role: &RoleConfig, facts: &[HostFacts<'a>], clock: Clock) -> Expected<'a> {
        match role.mode {
            RoleMode::Consensus => gate::consensus(role, facts, clock),
            RoleMode::Release => {
                let Some(release) = self.active_release(&role.name) else {
                    return Expected::NoRelease;
                };
                let key = (role.name.clone(), release.digest_hex.clone());
                match (self.comparable.get(&key), self.manifests.get(&release.digest_hex)) {
                    (Some(c), Some(entries)) => Expected::Release {
                        number: release.number,
                        comparable: *c,
                        entries,
                    },
                    // Cannot happen after a successful load; never OPEN on it.
                    _ => Expected::NoRelease,
                }
            }
        }
    }

    /// Active halts covering `host` of `role`.
    fn halts_on(&self, role: &str, host: &str) -> Vec<&HaltRecord> {
        self.halts
            .values()
            .filter(|h| h.is_active() && h.scope.covers(host, role))
            .collect()
    }

    /// Every inventory host's gate in `role`, in inventory order.
    pub fn role_gates(&self, role: &RoleConfig, clock: Clock) -> (Vec<Gate>, u64) {
        let facts: Vec<HostFacts<'_>> = role.hosts.iter().map(|h| self.facts(&role.name, h)).collect();
        let expected = self.expected(role, &facts, clock);
        let gates = facts
            .iter()
            .map(|f| gate::decide(role, f, &expected, &self.halts_on(&role.name, f.host), clock))
            .collect();
        (gates, expected.release_number())
    }

    /// One host's gate, judged within its whole role.
    pub fn host_gate(&self, role: &RoleConfig, host: &str, clock: Clock) -> Gate {
        let expected = match role.mode {
            // Only consensus needs the other hosts' sets.
            RoleMode::Consensus => {
                let facts: Vec<HostFacts<'_>> = role.hosts.iter().map(|h| self.facts(&role.name, h)).collect();
                self.expected(role, &facts, clock)
            }
            RoleMode::Release => self.expected(role, &[], clock),
        };
        let mine = self.facts(&role.name, host);
        gate::decide(role, &mine, &expected, &self.halts_on(&role.name, host), clock)
    }
}
