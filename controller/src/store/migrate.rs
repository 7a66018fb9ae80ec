//! `lockstep-controller migrate --from A.toml --to B.toml`: copies every
//! record from the store config A names into the (empty) store config B
//! names, sled into etcd or back, with no controller running on either.
//! The audit chain is verified on the source before anything is written
//! and on the target after, and the two heads must be the same record.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::{Backend, ControllerConfig};
use crate::store::Store;
use crate::store::audit_reads;
use crate::store::etcd::Etcd;
use crate::store::etcd::store::{EtcdStore, Fence};
use crate::store::sled::SledStore;
use lockstep_evidence::chain::ChainCheck;

/// What was copied, for the operator.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub hosts: usize,
    pub manifests: usize,
    pub releases: usize,
    pub halts: usize,
    pub incidents: usize,
    pub tokens: usize,
    pub audit_records: usize,
}

fn open(config_path: &Path) -> anyhow::Result<(String, Arc<dyn Store>)> {
    let config = ControllerConfig::load(config_path)?;
    Ok(match config.backend {
        Backend::Sled => {
            let path = config.data_dir.join("store");
            let store = SledStore::open_with_cache(&path, config.store.sled_cache_bytes)
                .with_context(|| format!("{}: the sled store", config_path.display()))?;
            (format!("sled at {}", path.display()), Arc::new(store))
        }
        Backend::Etcd(settings) => {
            crate::store::etcd::trust::check(&config.tls.ca, &settings.tls)
                .with_context(|| config_path.display().to_string())?;
            let etcd = Arc::new(Etcd::connect(&settings).context("store.etcd")?);
            // A leading controller would change the fleet under the copy.
            let leader = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::store::etcd::election::leader(&etcd))?;
            if let Some(l) = leader {
                bail!(
                    "{}: a controller leads this prefix ({} at {}, epoch {}): stop every controller before migrating",
                    config_path.display(),
                    l.name,
                    l.address,
                    l.epoch
                );
            }
            // Writes are fenced on "no controller leads this prefix".
            let store = EtcdStore::new(etcd, Fence::NoLeader);
            (
                format!("etcd at {} (prefix {})", settings.endpoints.join(","), settings.prefix),
                Arc::new(store),
            )
        }
    })
}

/// Copies `from` into `to` (see the module). Blocking: run it off any
/// async runtime.
pub fn migrate(from: &Path, to: &Path) -> anyhow::Result<Copied> {
    let (from_name, source) = open(from)?;
    let (to_name, target) = open(to)?;
    if !target.hosts()?.is_empty() || target.last_audit()?.is_some() {
        bail!(
            "{to_name} already holds a fleet: migrate only into an empty store (another data_dir, or another store.etcd.prefix)"
        );
    }
    // The chain is checked a page at a time before anything is copied, and
    // again as it is copied: no step holds the whole log. Records already
    // archived stay in the archive: the copy starts after them, and the
    // target is given the same mark.
    let mark = source.archive_mark()?;
    let start = || {
        mark.as_ref()
            .map_or_else(ChainCheck::from_start, |m| ChainCheck::after(m.head()))
    };
    let mut before = start();
    audit_reads::verify(source.as_ref(), &mut before)?.map_err(|b| {
        anyhow::anyhow!(
            "{from_name}: the audit chain is broken at seq {}: {}; nothing copied",
            b.seq,
            b.problem
        )
    })?;

    let mut copied = Copied::default();
    for digest in source.manifest_digests()? {
        let entries = source
            .manifest(&digest)?
            .with_context(|| format!("{from_name}: manifest {digest} listed but unreadable"))?;
        target.put_manifest(&digest, &entries)?;
        copied.manifests += 1;
    }
    for r in source.releases()? {
        target.put_release(&r)?;
        copied.releases += 1;
    }
    for h in source.halts()? {
        target.put_halt(&h)?;
        copied.halts += 1;
    }
    for i in source.incidents()? {
        target.put_incident(&i)?;
        copied.incidents += 1;
    }
    for t in source.tokens()? {
        target.put_token(&t)?;
        copied.tokens += 1;
    }
    for h in source.hosts()? {
        target.put_host(&h)?;
        copied.hosts += 1;
    }
    if let Some(m) = &mark {
        target.drop_archived(m)?;
    }
    let mut copying = start();
    for page in audit_reads::pages(source.as_ref(), copying.head().next_seq) {
        for r in page? {
            copying.next(&r).map_err(|b| {
                anyhow::anyhow!(
                    "{from_name}: the audit log changed while it was copied (seq {}): {}",
                    b.seq,
                    b.problem
                )
            })?;
            target.put_audit(&r)?;
            // Bounded batches: etcd transactions have an operation limit.
            if r.seq % 64 == 0 {
                target.flush()?;
            }
        }
    }
    target.flush()?;
    copied.audit_records = usize::try_from(copying.checked()).unwrap_or(usize::MAX);

    // Read back what landed: the same chain, verified, with the same head.
    let mut landed = start();
    audit_reads::verify(target.as_ref(), &mut landed)?.map_err(|b| {
        anyhow::anyhow!(
            "{to_name}: the copied audit chain is broken at seq {}: {}",
            b.seq,
            b.problem
        )
    })?;
    if landed.checked() != copying.checked() || landed.head() != copying.head() || copying.head() != before.head() {
        bail!(
            "{to_name}: {} audit records landed of {}; the heads differ",
            landed.checked(),
            before.checked()
        );
    }
    if target.hosts()?.len() != copied.hosts {
        bail!("{to_name}: {} hosts landed of {}", target.hosts()?.len(), copied.hosts);
    }
    tracing::info!(from = %from_name, to = %to_name, ?copied, "migrated");
    Ok(copied)
}
