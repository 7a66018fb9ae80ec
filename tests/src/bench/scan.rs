//! Full-scan benchmark: a generated deployment tree shaped like a trading
//! host (a few large binaries, some libraries, many small configs), measured
//! by the agent's scanner and, in the same run, by `sha256sum`, by `aide
//! --init` (SHA-256 only) and against ring's raw SHA-256 rate on one core.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The shape of the generated tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeSpec {
    pub files: usize,
    pub total_bytes: u64,
}

impl TreeSpec {
    /// About 20,000 files, about 2 GiB: the reference host.
    pub fn reference() -> Self {
        Self {
            files: 20_000,
            total_bytes: 2 << 30,
        }
    }
}

/// Fills `buf` with cheap pseudo-random bytes (xorshift): content must not
/// compress or repeat, but its quality does not matter.
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

fn write_file(path: &Path, size: u64, seed: &mut u64, buf: &mut [u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        fill(&mut buf[..n], seed);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// Generates the tree under `root`: half the bytes in 3 binaries, a quarter
/// in libraries of 1–10 MiB, the rest (and almost every file) configs of
/// 1–50 KiB. Returns (files, bytes) written.
pub fn generate(root: &Path, spec: TreeSpec) -> std::io::Result<(usize, u64)> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut buf = vec![0u8; 1 << 20];
    let (mut files, mut bytes) = (0usize, 0u64);
    let binaries = spec.total_bytes / 2;
    for (i, share) in [5u64, 3, 2].iter().enumerate() {
        let size = binaries * share / 10;
        write_file(
            &root.join(format!("opt/trading/bin/engine-{i}")),
            size,
            &mut seed,
            &mut buf,
        )?;
        files += 1;
        bytes += size;
    }
    let libs_budget = spec.total_bytes / 4;
    let mut libs = 0u64;
    let mut i = 0;
    while libs < libs_budget && files < spec.files / 2 {
        let size = ((1 + (i % 10)) << 20).min(libs_budget - libs);
        write_file(
            &root.join(format!("opt/trading/lib/lib{i}.so")),
            size,
            &mut seed,
            &mut buf,
        )?;
        libs += size;
        files += 1;
        i += 1;
    }
    bytes += libs;
    let configs = spec.files.saturating_sub(files).max(1);
    let per_config = ((spec.total_bytes.saturating_sub(bytes)) / configs as u64).clamp(1024, 50 * 1024);
    for c in 0..configs {
        // 1–50 KiB around the mean.
        let size = (per_config / 2 + (c as u64 * 7919) % per_config).clamp(1024, 50 * 1024);
        let path = root.join(format!("etc/trading/desk-{:03}/strategy-{c}.conf", c % 200));
        write_file(&path, size, &mut seed, &mut buf)?;
        files += 1;
        bytes += size;
    }
    Ok((files, bytes))
}

/// One measured way of hashing the tree.
#[derive(Debug, Clone)]
pub struct ScanResult {
    pub tool: String,
    pub took: Option<Duration>,
    pub note: String,
}

/// Times the agent's scanner (every core) over `root`.
pub fn lockstep_scan(root: &Path) -> anyhow::Result<(Duration, usize)> {
    let pattern = format!("{}/**", root.display());
    let scanner = lockstep_agent::measure::scan::Scanner::new(&[pattern], None)?;
    let start = Instant::now();
    let (entries, stats) = scanner.scan_with_stats(true)?;
    let took = start.elapsed();
    anyhow::ensure!(stats.hashed > 0 && !entries.is_empty(), "the scan hashed nothing");
    Ok((took, stats.hashed))
}

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(start.elapsed())
}

/// `find ROOT -type f -print0 | xargs -0 [-P workers] sha256sum`.
pub fn sha256sum(root: &Path, workers: usize) -> anyhow::Result<Duration> {
    let script = format!(
        "find {} -type f -print0 | xargs -0 -P {workers} -n 256 sha256sum > /dev/null",
        shell_quote(root)
    );
    timed(Command::new("sh").args(["-c", &script]))
}

/// `aide --init` with a SHA-256-only rule over ROOT and `workers` workers,
/// or why it could not run.
pub fn aide(root: &Path, work: &Path, workers: usize) -> anyhow::Result<Result<Duration, String>> {
    if Command::new("aide").arg("--version").output().is_err() {
        return Ok(Err("not installed (apt-get install aide)".into()));
    }
    let conf = work.join("aide.conf");
    std::fs::write(
        &conf,
        format!(
            "database_out=file:{db}\ngzip_dbout=no\nnum_workers={workers}\nreport_url=stdout\nLockstep = sha256\n{root} Lockstep\n",
            db = work.join("aide.db.new").display(),
            root = root.display()
        ),
    )?;
    let start = Instant::now();
    let out = Command::new("aide").args(["--init", "--config"]).arg(&conf).output()?;
    let took = start.elapsed();
    if !out.status.success() {
        return Ok(Err(format!(
            "aide --init failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default()
        )));
    }
    Ok(Ok(took))
}

/// ring's SHA-256 over an in-memory buffer on one core: the limit per core.
pub fn ring_rate(bytes: usize) -> f64 {
    let mut buf = vec![0u8; 1 << 20];
    let mut seed = 7u64;
    fill(&mut buf, &mut seed);
    let rounds = (bytes >> 20).max(1);
    let start = Instant::now();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for _ in 0..rounds {
        ctx.update(&buf);
    }
    std::hint::black_box(ctx.finish());
    (rounds << 20) as f64 / start.elapsed().as_secs_f64()
}

/// Drops the page cache so the next read comes from disk, if allowed here.
pub fn drop_caches() -> Result<(), String> {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").map_err(|e| format!("cannot drop the page cache here: {e}"))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Where the tree goes: `dir` if given, else a temp dir.
pub fn workdir(dir: Option<PathBuf>) -> anyhow::Result<tempfile::TempDir> {
    Ok(match dir {
        Some(d) => tempfile::Builder::new().prefix("lockstep-scan-bench-").tempdir_in(d)?,
        None => tempfile::Builder::new().prefix("lockstep-scan-bench-").tempdir()?,
    })
}
