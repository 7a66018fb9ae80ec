//! What a host *runs*: for each configured process, the image it executes
//! (read through /proc/PID/exe, which still works when the file on disk was
//! replaced or deleted), its executable mappings (shared libraries), and its
//! command line. Instances that run different images give one entry each,
//! so the odd one out is named.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use lockstep_proto::pb::{Entry, EntryKind};

use crate::measure::entry::{READ_BUF_BYTES, hash_file};

/// A process to measure: matched by executable path and/or process name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRule {
    /// Label in entries and reasons ("proc:<name>...").
    pub name: String,
    pub exe: Option<String>,
    /// The kernel's process name (/proc/PID/comm, at most 15 characters).
    pub comm: Option<String>,
}

/// What the kernel appends to the exe link of a deleted file.
pub const DELETED: &str = " (deleted)";

struct Instance {
    pid: u32,
    exe: String,
}

/// The exe link as the host sees it: under `root` (an agent measuring a
/// host tree mounted elsewhere) the prefix is taken off.
fn host_view(exe: &str, root: Option<&Path>) -> String {
    match root.and_then(|r| exe.strip_prefix(r.to_str()?)) {
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => exe.to_string(),
    }
}

/// PIDs matching `rule`, with their exe link.
fn matching(rule: &ProcessRule, root: Option<&Path>) -> Vec<Instance> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in dir.flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Kernel threads and processes we may not inspect have no readable exe.
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let exe = host_view(&exe.to_string_lossy(), root);
        let on_disk = exe.strip_suffix(DELETED).unwrap_or(&exe);
        let by_exe = rule.exe.as_deref().is_some_and(|want| want == on_disk);
        let by_comm = rule.comm.as_deref().is_some_and(|want| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == want)
        });
        if by_exe || by_comm {
            out.push(Instance { pid, exe });
        }
    }
    out
}

fn hash_path(path: &Path, buf: &mut [u8]) -> Result<Vec<u8>, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    hash_file(&mut f, buf, crate::measure::entry::Reading::default()).map_err(|e| e.to_string())
}

/// Executable file mappings of `pid`: (path as the kernel shows it, hash of
/// what is mapped).
fn libraries(pid: u32, buf: &mut [u8]) -> Vec<(String, Result<Vec<u8>, String>)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut seen = BTreeMap::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut f = line.splitn(6, ' ');
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3).map(str::trim_start).unwrap_or("");
        if !perms.contains('x') || !path.starts_with('/') || seen.contains_key(path) {
            continue;
        }
        // map_files reaches the mapped inode even if the file was replaced
        // or deleted; fall back to the path where it is not permitted.
        let hash = hash_path(Path::new(&format!("/proc/{pid}/map_files/{range}")), buf)
            .or_else(|_| hash_path(Path::new(path.strip_suffix(DELETED).unwrap_or(path)), buf));
        seen.insert(path.to_string(), hash);
    }
    seen.into_iter().collect()
}

fn short(sha: &[u8]) -> String {
    hex::encode(&sha[..sha.len().min(4)])
}

/// Entries for every configured process that is running. A configured
/// process that is not running gives no entry: before the open, the trading
/// process is not started yet, and that is not drift.
pub fn measure(rules: &[ProcessRule], root: Option<&Path>) -> Vec<Entry> {
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut out = BTreeMap::<String, Entry>::new();
    for rule in rules {
        let mut cmdlines = std::collections::BTreeSet::new();
        for inst in matching(rule, root) {
            let image = hash_path(Path::new(&format!("/proc/{}/exe", inst.pid)), &mut buf);
            let (sha256, error) = match image {
                Ok(h) => (h, String::new()),
                Err(e) => (Vec::new(), format!("cannot read the running image: {e}")),
            };
            let path = format!("proc:{}@{}", rule.name, short(&sha256));
            out.entry(path.clone()).or_insert_with(|| Entry {
                path: path.into_bytes(),
                kind: if error.is_empty() {
                    EntryKind::Process
                } else {
                    EntryKind::Unreadable
                } as i32,
                sha256: sha256.clone(),
                link_target: inst.exe.clone().into_bytes(),
                error,
                ..Default::default()
            });
            for (lib, hash) in libraries(inst.pid, &mut buf) {
                let lib = host_view(&lib, root);
                if lib == inst.exe {
                    continue;
                }
                let (sha, error) = match hash {
                    Ok(h) => (h, String::new()),
                    Err(e) => (Vec::new(), e),
                };
                let path = format!("proc:{}/lib:{lib}@{}", rule.name, short(&sha));
                out.entry(path.clone()).or_insert_with(|| Entry {
                    path: path.into_bytes(),
                    kind: if error.is_empty() {
                        EntryKind::ProcessLib
                    } else {
                        EntryKind::Unreadable
                    } as i32,
                    sha256: sha,
                    link_target: lib.into_bytes(),
                    error,
                    ..Default::default()
                });
            }
            if let Ok(raw) = std::fs::read(format!("/proc/{}/cmdline", inst.pid)) {
                let args = String::from_utf8_lossy(raw.strip_suffix(b"\0").unwrap_or(&raw)).into_owned();
                cmdlines.insert(args);
            }
        }
        for (i, args) in cmdlines.into_iter().enumerate() {
            let path = format!("proc:{}/cmdline#{i}", rule.name);
            out.insert(
                path.clone(),
                Entry {
                    path: path.into_bytes(),
                    kind: EntryKind::ProcessArgs as i32,
                    value: args,
                    ..Default::default()
                },
            );
        }
    }
    out.into_values().collect()
}
