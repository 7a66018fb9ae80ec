//! `lockstep-bench`: lockstep's performance on this machine, side by side
//! with the physical limits and the tools a user would otherwise pick, in
//! one run so the ratios hold on a noisy machine. Not part of the test
//! suite's pass/fail; a smoke test runs each part tiny so it cannot rot.
//!
//!   cargo build --release -p lockstep-agent -p lockstep-controller    # idle and fleet run the real binaries
//!   cargo run --release -p lockstep-tests --bin lockstep-bench              # everything
//!   cargo run --release -p lockstep-tests --bin lockstep-bench -- --only scan

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lockstep_tests::bench::{self, board, failover, fleet, idle, ingest, openssl_speed, probe, realtime, scan};
// (bench::age is called by path: `age` is also this binary's part.)

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Scan,
    Realtime,
    Idle,
    Ingest,
    Fleet,
    /// A latency probe on a CPU of its own beside the agent (trading host).
    Probe,
    /// Peak RSS of a full scan: the probe's tree and many small files.
    Memory,
    /// The web board: gate change → a real Chromium's page, first render at 10,000 hosts, 50 boards.
    Board,
    /// Failover on etcd: kill -9 the leader of three controllers (Debian's etcd-server).
    Failover,
    /// Ingest with the ledger on etcd beside sled, alternating, same agents in flight.
    EtcdIngest,
    /// The controller on an audit log grown to millions of records (sled).
    Age,
    /// Years of the log with the archive at work, a day at a time, on sled and etcd.
    Years,
    /// The TPM: a quote, an enrollment's activation, the controller's checks,
    /// and file write → verdict with every host on a software TPM beside
    /// without (needs `--features tpm`, Debian's swtpm and libtss2-dev).
    Tpm,
}

/// Where the controller keeps its ledger in a benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Ledger {
    Sled,
    /// A 3-member etcd cluster on loopback (Debian's etcd-server).
    Etcd,
}

#[derive(Parser)]
#[command(about = "lockstep benchmarks against the physical limits and the peers")]
struct Args {
    /// Run only these parts (repeatable); default: all.
    #[arg(long, value_enum)]
    only: Vec<Part>,
    /// Files in the generated scan tree.
    #[arg(long, default_value_t = 20_000)]
    scan_files: usize,
    /// Size of the generated scan tree, MiB.
    #[arg(long, default_value_t = 2048)]
    scan_mib: u64,
    /// Where to generate the scan tree (default: the temp dir).
    #[arg(long)]
    scan_dir: Option<PathBuf>,
    /// File changes to time (write → controller verdict).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Quotes timed in the TPM benchmark.
    #[arg(long, default_value_t = 200)]
    tpm_quotes: usize,
    /// Hosts in the fleet for the change benchmark.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Fleet sizes for the halt fan-out (repeatable).
    #[arg(long = "agents", default_values_t = [100usize, 1000])]
    agents: Vec<usize>,
    /// Simulated hosts for the fleet-scale benchmark.
    #[arg(long, default_value_t = 10_000)]
    fleet_hosts: usize,
    /// Seconds the idle agent is watched.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Simulated agents for the ingest benchmark (repeatable: each is a
    /// run; fewer in flight trade throughput for latency).
    #[arg(long = "ingest-agents", default_values_t = [32usize, 200])]
    ingest_agents: Vec<usize>,
    /// Seconds of heartbeats (and of bare calls) in the ingest benchmark.
    #[arg(long, default_value_t = 10)]
    ingest_seconds: u64,
    /// Seconds of each probe phase per round.
    #[arg(long, default_value_t = 5)]
    probe_seconds: u64,
    /// Rounds of the probe's phases (interleaved).
    #[arg(long, default_value_t = 3)]
    probe_rounds: usize,
    /// Halts timed for the gate-priority measurement.
    #[arg(long, default_value_t = 50)]
    probe_halts: usize,
    /// Internal: read WORKING_SET, scan TREE, print WORKING_SET's resident share.
    #[arg(long, hide = true, num_args = 3, value_names = ["WORKING_SET", "TREE", "RESTORE"])]
    page_cache_child: Vec<String>,
    /// Memory limit (MiB) of the cgroup for the page-cache-under-pressure measurement.
    #[arg(long, default_value_t = 1024)]
    pressure_mib: u64,
    /// Internal: serve a plain tonic no-op service (LISTEN CA CERT KEY) until killed.
    #[arg(long, hide = true, num_args = 4, value_names = ["LISTEN", "CA", "CERT", "KEY"])]
    noop_server: Vec<String>,
    /// Internal: scan this tree once and print the peak RSS (KiB).
    #[arg(long, hide = true)]
    rss_child: Option<PathBuf>,
    /// Small files for the peak-RSS measurement (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    rss_small_files: usize,
    /// Size of the tree the probe's agent scans, MiB.
    #[arg(long, default_value_t = 2048)]
    probe_mib: u64,
    /// Gate flips timed on the board's page.
    #[arg(long, default_value_t = 100)]
    board_changes: usize,
    /// Inventory hosts for the board's first render.
    #[arg(long, default_value_t = 10_000)]
    board_hosts: usize,
    /// Boards following one fleet at once.
    #[arg(long, default_value_t = 50)]
    boards: usize,
    /// Real agents in the failover benchmark.
    #[arg(long, default_value_t = 100)]
    failover_agents: usize,
    /// Failovers per mode in the failover benchmark.
    #[arg(long, alias = "failover-kills", default_value_t = 20)]
    failover_trials: usize,
    /// How the failover benchmark stops the leader (repeatable; default: every way).
    #[arg(long = "mode", value_enum)]
    failover_modes: Vec<failover::Mode>,
    /// Ledgers the fleet-scale benchmark runs on (repeatable).
    #[arg(long = "fleet-on", value_enum, default_values_t = [Ledger::Sled])]
    fleet_on: Vec<Ledger>,
    /// Simulated agents in flight for the etcd-beside-sled ingest runs.
    #[arg(long, default_value_t = 200)]
    etcd_ingest_agents: usize,
    /// Rounds of (sled, etcd) ingest runs, alternating.
    #[arg(long, default_value_t = 2)]
    etcd_ingest_rounds: usize,
    /// Audit log sizes for the age part (repeatable, ascending: one log grown through them).
    #[arg(long = "age-records", default_values_t = [10_000u64, 1_000_000])]
    age_records: Vec<u64>,
    /// Hosts in the role of the age part.
    #[arg(long, default_value_t = 1_000)]
    age_hosts: usize,
    /// Internal: measure the controller on the grown log in DIR (the age part's child).
    #[arg(long, hide = true)]
    age_child: Option<PathBuf>,
    /// Log sizes for the years part (repeatable, ascending).
    #[arg(long = "years-records", default_values_t = [10_000u64, 1_000_000])]
    years_records: Vec<u64>,
    /// Hosts in the role of the years part (repeatable: one run each).
    #[arg(long = "years-hosts", default_values_t = [1_000usize])]
    years_hosts: Vec<usize>,
    /// Ledgers of the years part (repeatable).
    #[arg(long = "years-ledger", value_enum, default_values_t = [Ledger::Sled, Ledger::Etcd])]
    years_ledger: Vec<Ledger>,
    /// Internal: measure the controller on the grown log in DIR (the years part's child).
    #[arg(long, hide = true)]
    years_child: Option<PathBuf>,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn gbs(bytes: u64, d: Duration) -> String {
    format!("{:.2} GB/s", bytes as f64 / d.as_secs_f64() / 1e9)
}

/// A generated tree of `args.scan_files` files and `mib` MiB under the
/// scan directory: (its temp dir, the tree, files, bytes).
fn generated_tree(args: &Args, mib: u64) -> anyhow::Result<(tempfile::TempDir, PathBuf, usize, u64)> {
    let dir = scan::workdir(args.scan_dir.clone())?;
    let root = dir.path().join("tree");
    let spec = scan::TreeSpec {
        files: args.scan_files,
        total_bytes: mib << 20,
    };
    let (files, bytes) = scan::generate(&root, spec)?;
    Ok((dir, root, files, bytes))
}

fn scan(args: &Args) -> anyhow::Result<()> {
    let (dir, root, files, bytes) = generated_tree(args, args.scan_mib)?;
    let ring1 = scan::ring_rate(512 << 20);
    let ring_all = bench::on_every_core(|| scan::ring_rate(512 << 20));
    println!("\n## Full scan: {files} files, {:.2} GB\n", bytes as f64 / 1e9);
    println!("| tool | cache | time | GB/s | files/s | vs lockstep |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let row = |tool: &str, cache: &str, took: Duration, base: Duration| {
        println!(
            "| {tool} | {cache} | {} | {} | {:.0} | {:.2}× |",
            ms(took),
            gbs(bytes, took),
            files as f64 / took.as_secs_f64(),
            took.as_secs_f64() / base.as_secs_f64()
        );
    };
    // Warm: the tree was just written; one untimed pass makes sure it is all cached.
    scan::lockstep_scan(&root)?;
    let mut runs: Vec<Duration> = (0..3)
        .map(|_| scan::lockstep_scan(&root).map(|r| r.0))
        .collect::<Result<_, _>>()?;
    runs.sort();
    let base = runs[1];
    row("lockstep-agent (all cores)", "warm", base, base);
    row("find \\| xargs sha256sum", "warm", scan::sha256sum(&root, 1)?, base);
    row(
        "find \\| xargs -P 2 sha256sum",
        "warm",
        scan::sha256sum(&root, 2)?,
        base,
    );
    match scan::aide(&root, dir.path(), 2)? {
        Ok(took) => row("aide --init (sha256, 2 workers)", "warm", took, base),
        Err(why) => println!("| aide --init | | {why} | | | |"),
    }
    match scan::drop_caches() {
        Ok(()) => {
            let (cold, _) = scan::lockstep_scan(&root)?;
            row("lockstep-agent (all cores)", "cold", cold, base);
            scan::drop_caches().map_err(anyhow::Error::msg)?;
            row(
                "find \\| xargs -P 2 sha256sum",
                "cold",
                scan::sha256sum(&root, 2)?,
                base,
            );
        }
        Err(why) => println!("| cold cache | | {why} | | | |"),
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "| ring SHA-256, in memory, 1 core (the limit per core) | | | {:.2} GB/s | | |",
        ring1 / 1e9
    );
    println!(
        "| the same on {cores} cores at once (the limit) | | | {:.2} GB/s | | |",
        ring_all / 1e9
    );
    match openssl_speed::sha256_rate(3) {
        Ok(rate) => println!(
            "| OpenSSL SHA-256 (`openssl speed -evp sha256`), 1 core, same CPU | | | {:.2} GB/s | | |",
            rate / 1e9
        ),
        Err(why) => println!("| OpenSSL SHA-256 | | {why} | | | |"),
    }
    Ok(())
}

async fn failover(args: &Args) -> anyhow::Result<()> {
    println!(
        "\n## Failover on etcd (3 controllers each in its own network namespace, 3 etcd members, {} agents)\n",
        args.failover_agents
    );
    let modes = if args.failover_modes.is_empty() {
        vec![
            failover::Mode::Kill,
            failover::Mode::Freeze,
            failover::Mode::Cut,
            failover::Mode::CutEtcd,
        ]
    } else {
        args.failover_modes.clone()
    };
    let f = failover::failover(args.failover_agents, args.failover_trials, 3, &modes).await?;
    println!("| the leader is | from the stop → | trials | median | p99 | max |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for m in &f.modes {
        for (what, l) in [
            ("a standby leads and answers", &m.leader),
            ("every agent's report accepted by it", &m.agents),
            (
                "(after it leads) `lockstep halts`, the failed address first",
                &m.console,
            ),
            ("(halt acknowledged →) the halt in every agent's gate file", &m.halt),
        ] {
            println!(
                "| {} | {what} | {} | {} | {} | {} |",
                m.mode.label(),
                l.samples.len(),
                ms(l.quantile(0.5)),
                ms(l.quantile(0.99)),
                ms(l.max())
            );
        }
    }
    println!();
    for m in &f.modes {
        println!(
            "- {}: {} gate-file samples CLOSED between the stop and the halt (flaps); {} acknowledged halts lost",
            m.mode.label(),
            m.flaps,
            m.lost
        );
    }
    println!(
        "(leader_ttl {} s: a killed, frozen or cut leader's lease must run out first)",
        f.leader_ttl_s
    );
    Ok(())
}

async fn board(args: &Args) -> anyhow::Result<()> {
    println!("\n## The web board\n");
    println!("| benchmark | size | median | p99 | max |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let c = board::change_to_page(3, args.board_changes).await?;
    for (what, l) in [
        (
            "controller's gate decision → Chromium's open page showing it",
            &c.decision_to_page,
        ),
        (
            "file write on the host → Chromium's open page showing it",
            &c.write_to_page,
        ),
    ] {
        println!(
            "| {what} | {} changes | {} | {} | {} |",
            l.samples.len(),
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.max())
        );
    }
    let r = board::first_render(args.board_hosts, 20).await?;
    println!(
        "| first render of the fleet page, Chromium navigation to load | {} hosts, {} KB page | {} | {} | {} |",
        r.hosts,
        r.bytes / 1000,
        ms(r.load.quantile(0.5)),
        ms(r.load.quantile(0.99)),
        ms(r.load.max())
    );
    println!(
        "| the same, the controller's answer alone (request → last byte) | {} hosts | {} | {} | {} |",
        r.hosts,
        ms(r.server.quantile(0.5)),
        ms(r.server.quantile(0.99)),
        ms(r.server.max())
    );
    let many = board::many_boards(args.boards, 20).await?;
    println!(
        "| gate decision → every board holding a fresh page showing it | {} boards × {} changes | {} | {} | {} |",
        many.boards,
        many.changes,
        ms(many.decision_to_fresh.quantile(0.5)),
        ms(many.decision_to_fresh.quantile(0.99)),
        ms(many.decision_to_fresh.max())
    );
    println!(
        "\nCPU per change with {} boards (controller and every board client, one process): {}",
        many.boards,
        ms(many.cpu_per_change)
    );
    Ok(())
}

async fn realtime(args: &Args) -> anyhow::Result<()> {
    println!("\n## Realtime\n");
    println!("| benchmark | size | median | p99 | max |");
    println!("| --- | --- | ---: | ---: | ---: |");
    // The defaults, then every change treated as a burst (the agent before
    // small changes had their own pause).
    for (quiet_ms, small_ms) in [(50u64, 15u64), (50, 50)] {
        let (quiet, small) = (Duration::from_millis(quiet_ms), Duration::from_millis(small_ms));
        let l = realtime::change_to_verdict(args.hosts, args.changes, quiet, small).await?;
        println!(
            "| file write → controller verdict, quiet_period {quiet_ms} ms, small_change_quiet_period {small_ms} ms | {} changes, {} hosts | {} | {} | {} |",
            l.samples.len(),
            args.hosts,
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.max())
        );
    }
    for &n in &args.agents {
        let took = realtime::halt_fanout(n).await?;
        println!(
            "| `lockstep halt` → gate file closed on every agent | {n} agents | | | {} |",
            ms(took)
        );
    }
    Ok(())
}

async fn idle(args: &Args) -> anyhow::Result<()> {
    let r = idle::idle_agent(Duration::from_secs(10), Duration::from_secs(args.idle_seconds)).await?;
    println!("\n## Agent at rest (real process, heartbeat every 10 s, inotify on)\n");
    println!("| measure | value | over |");
    println!("| --- | ---: | --- |");
    println!(
        "| CPU, share of one core | {:.3} % | {} s |",
        r.cpu_percent,
        r.watched.as_secs()
    );
    println!(
        "| resident memory (VmRSS) | {:.1} MB | at the end |",
        r.rss_bytes as f64 / 1e6
    );
    Ok(())
}

async fn ingest(args: &Args) -> anyhow::Result<()> {
    let verify = ingest::ed25519_verify_rate(Duration::from_secs(2));
    let verify_all = bench::on_every_core(|| ingest::ed25519_verify_rate(Duration::from_secs(2)));
    let openssl_verify = openssl_speed::ed25519_verify_rate(3);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let mut runs = Vec::new();
    for &agents in &args.ingest_agents {
        runs.push(ingest::ingest(agents, Duration::from_secs(args.ingest_seconds)).await?);
    }
    println!("\n## Controller ingest: simulated agents over mTLS, controller process on the same {cores} cores\n");
    println!("| measure | agents in flight | rate | median | p99 | controller CPU per call |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &runs {
        for (w, how) in [
            (&r.streamed, "on each agent's Attest stream"),
            (&r.unary, "one unary Submit each"),
        ] {
            println!(
                "| signed heartbeats verified and durably stored, {how} | {} | {:.0}/s | {} | {} | {:.0} µs |",
                r.agents,
                w.per_second(),
                ms(w.latencies.quantile(0.5)),
                ms(w.latencies.quantile(0.99)),
                w.controller_us_per_attestation()
            );
        }
    }
    for r in &runs {
        println!(
            "| bare mTLS unary call (PinKey), same agents, same stack | {} | {:.0}/s | | | {:.0} µs |",
            r.agents,
            r.bare_per_second(),
            r.controller_us_per_bare_call()
        );
    }
    for r in &runs {
        println!(
            "| plain tonic no-op service (gRPC health `Check`, its own process), same TLS config and client | {} | {:.0}/s | | | {:.0} µs (its server's CPU) |",
            r.agents,
            r.noop_per_second(),
            r.noop_us_per_call()
        );
    }
    println!(
        "| Ed25519 verify, ring, 1 core | | {verify:.0}/s | | | {:.0} µs |",
        1e6 / verify.max(1.0)
    );
    println!(
        "| Ed25519 verify, ring, on {cores} cores at once (the limit) | | {verify_all:.0}/s | | | {:.0} µs |",
        cores * 1e6 / verify_all.max(1.0)
    );
    match &openssl_verify {
        Ok(rate) => println!(
            "| Ed25519 verify, OpenSSL (`openssl speed ed25519`), 1 core, same CPU | | {rate:.0}/s | | | {:.0} µs |",
            1e6 / rate.max(1.0)
        ),
        Err(why) => println!("| Ed25519 verify, OpenSSL | | {why} | | | |"),
    }
    for r in &runs {
        for (w, how) in [(&r.streamed, "streamed"), (&r.unary, "unary")] {
            println!(
                "\n{} agents, {how}: CPU during the heartbeat window: controller {:.1} s, load generator {:.1} s ({:.0} µs per heartbeat), of {:.1} s × {cores} cores.",
                r.agents,
                w.controller_cpu.as_secs_f64(),
                w.generator_cpu.as_secs_f64(),
                w.generator_us_per_attestation(),
                w.took.as_secs_f64()
            );
            if w.ran_dry {
                println!(
                    "WARNING: an agent used up its signed-ahead heartbeats before the window ended; the rate is a lower bound."
                );
            }
        }
    }
    if let Some(r) = runs.first() {
        println!(
            "Request sizes: a heartbeat envelope {} bytes, a PinKey request {} bytes (the same TLS record and HTTP/2 frame count).",
            r.heartbeat_bytes, r.bare_bytes
        );
    }
    if let Some(r) = runs.iter().max_by_key(|r| r.agents) {
        // Per attestation at least one verify (CPU per verify with every
        // core busy) and the generator's own share of the same cores; a
        // unary call adds the controller's side of a bare call.
        let verify_us = cores * 1e6 / verify_all.max(1.0);
        let (gen_stream, gen_unary) = (
            r.streamed.generator_us_per_attestation(),
            r.unary.generator_us_per_attestation(),
        );
        let unary_floor = verify_us + r.controller_us_per_bare_call();
        println!(
            "Bounds ({} agents): verification alone, with the streamed generator's {gen_stream:.0} µs on the same cores → {:.0}/s. \
             Unary: verify + bare call {unary_floor:.0} µs, with the unary generator's {gen_unary:.0} µs → {:.0}/s. \
             Measured controller cost: streamed {:.0} µs, unary {:.0} µs.",
            r.agents,
            cores * 1e6 / (verify_us + gen_stream),
            cores * 1e6 / (unary_floor + gen_unary),
            r.streamed.controller_us_per_attestation(),
            r.unary.controller_us_per_attestation(),
        );
    }
    Ok(())
}

async fn fleet(args: &Args) -> anyhow::Result<()> {
    for &ledger in &args.fleet_on {
        fleet_on(args, ledger).await?;
    }
    Ok(())
}

async fn fleet_on(args: &Args, ledger: Ledger) -> anyhow::Result<()> {
    let r = fleet::fleet_on(args.fleet_hosts, ledger == Ledger::Etcd).await?;
    println!(
        "\n## Fleet scale: {} hosts, one role, each an enrolled simulated agent, ledger on {}\n",
        r.hosts,
        match ledger {
            Ledger::Sled => "sled",
            Ledger::Etcd => "etcd (3 members, loopback; the controller leads)",
        }
    );
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| enrolling every host (token + CSR + pinned key) | {} |",
        ms(r.enroll_took)
    );
    println!(
        "| controller RSS, every host reported, every stream open | {:.0} MB |",
        r.controller_rss_bytes as f64 / 1e6
    );
    println!(
        "| `gate check --role` over every host, median of 5 | {} |",
        ms(r.gate_check.quantile(0.5))
    );
    println!(
        "| `lockstep halt` → every connected agent told CLOSED | {} |",
        ms(r.halt_to_all)
    );
    println!("| deploy storm: reports spread over | {} |", ms(r.storm_span));
    println!(
        "| deploy storm: last report → every gate OPEN on the new release | {} |",
        ms(r.storm_settle)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lockstep_daemon::logging::init("error");
    let args = Args::parse();
    if !args.noop_server.is_empty() {
        return ingest::noop_server(&args.noop_server).await;
    }
    if let Some(tree) = &args.rss_child {
        return probe::rss_child(tree);
    }
    if let Some(dir) = &args.age_child {
        return bench::age::child(dir, args.age_hosts).await;
    }
    if let Some(dir) = &args.years_child {
        return bench::years::child(dir).await;
    }
    if let [ws, tree, restore] = args.page_cache_child.as_slice() {
        return probe::page_cache_child(ws.as_ref(), tree.as_ref(), restore == "restore");
    }
    let want = |p| args.only.is_empty() || args.only.contains(&p);
    println!(
        "lockstep-bench on {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if want(Part::Scan) {
        scan(&args)?;
    }
    if want(Part::Realtime) {
        realtime(&args).await?;
    }
    if want(Part::Idle) {
        idle(&args).await?;
    }
    if want(Part::Ingest) {
        ingest(&args).await?;
    }
    if want(Part::Fleet) {
        fleet(&args).await?;
    }
    if want(Part::Probe) {
        probe(&args).await?;
    }
    if want(Part::Memory) {
        memory(&args)?;
    }
    if want(Part::Board) {
        board(&args).await?;
    }
    if want(Part::Failover) {
        failover(&args).await?;
    }
    if want(Part::EtcdIngest) {
        etcd_ingest(&args).await?;
    }
    if want(Part::Age) {
        age(&args).await?;
    }
    if want(Part::Years) {
        years(&args).await?;
    }
    if want(Part::Tpm) {
        tpm(&args).await?;
    }
    Ok(())
}

async fn tpm(args: &Args) -> anyhow::Result<()> {
    if !lockstep_agent::tpm::BUILT_WITH_TPM {
        println!("\n## TPM\n\nskipped: build the bench with `--features tpm` (libtss2-dev) to measure the TPM");
        return Ok(());
    }
    let f = lockstep_tests::bench::tpm::costs(args.tpm_quotes, 20).await?;
    println!("\n## TPM (Debian's swtpm 0.7, one per host)\n");
    println!("| measure | runs | median | p99 | max |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (what, l) in [
        (
            "agent: one quote (open the TPM, EK, load the AK, quote PCRs 0-9 + 23, read them, flush)",
            &f.quote,
        ),
        ("agent: an enrollment's 8 credentials activated", &f.activate),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} |",
            l.samples.len(),
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.max())
        );
    }
    println!("\n| controller, one core | per second | per call |");
    println!("| --- | ---: | ---: |");
    for (what, rate) in [
        (
            "a quote checked (signature, nonce, PCR digest, session binding)",
            f.verify_per_s,
        ),
        (
            "ring: one ECDSA P-256 SHA-256 verification (the limit of the above)",
            f.ecdsa_verify_per_s,
        ),
        (
            "a credential made (MakeCredential: ECDH P-256, KDFs, HMAC; 8 per enrollment)",
            f.make_credential_per_s,
        ),
    ] {
        println!("| {what} | {rate:.0} | {:.1} µs |", 1e6 / rate);
    }
    println!("\n| file write → controller verdict (defaults) | changes, hosts | median | p99 | max |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let (quiet, small) = (Duration::from_millis(50), Duration::from_millis(15));
    for with_tpm in [false, true] {
        let l = if with_tpm {
            realtime::change_to_verdict_with_tpm(args.hosts, args.changes).await?
        } else {
            realtime::change_to_verdict(args.hosts, args.changes, quiet, small).await?
        };
        println!(
            "| {} | {} changes, {} hosts | {} | {} | {} |",
            if with_tpm {
                "TPM on: every host on its own swtpm, quoting every 2 s"
            } else {
                "TPM off"
            },
            l.samples.len(),
            args.hosts,
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.max())
        );
    }
    Ok(())
}

/// What the store holds and what answers cost over years, archiving daily.
async fn years(args: &Args) -> anyhow::Result<()> {
    for &ledger in &args.years_ledger {
        for &hosts in &args.years_hosts {
            let etcd = ledger == Ledger::Etcd;
            let rows = bench::years::years(&args.years_records, hosts, etcd, true).await?;
            println!(
                "\n## Years with the archive at work: {hosts} hosts, {} (segment 1 day, keep_online 14 days)\n",
                if etcd { "etcd, 3 members, 1 GiB quota" } else { "sled" }
            );
            println!(
                "| records | days | in the store | store | most on any day | archive | slowest daily round | restart | periodic verify (peak) | audit verify (peak) | report: last day, archived day (peak; size) | gate check | slowest during audit verify (of n) | audit --limit 50 | board host page | RSS at rest, after the reads |"
            );
            println!(
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for r in &rows {
                println!(
                    "| {} | {} | {} | {:.0} MB | {:.0} MB | {:.0} MB | {} | {} | {} ({:.1} MiB) | {} ({:.1} MiB) | {}, {} ({:.1} MiB; {:.1} MB) | {} | {} ({}) | {} | {} | {:.0} MiB, {:.0} MiB |",
                    r.records,
                    r.days,
                    r.store_records,
                    r.store_bytes as f64 / 1e6,
                    r.max_store_bytes as f64 / 1e6,
                    r.archive_bytes as f64 / 1e6,
                    ms(r.slowest_round),
                    ms(r.restart),
                    ms(r.periodic_verify),
                    r.periodic_peak_mib.max(0.0),
                    ms(r.audit_verify),
                    r.audit_verify_peak_mib.max(0.0),
                    ms(r.report),
                    ms(r.report_archived),
                    r.report_peak_mib.max(0.0),
                    r.report_bytes as f64 / 1e6,
                    ms(r.gate_check),
                    ms(r.during_verify),
                    r.checks_during_verify,
                    ms(r.audit_tail),
                    ms(r.host_page),
                    r.rest_mib,
                    r.after_mib
                );
            }
        }
    }
    Ok(())
}

/// What the controller's answers cost as its audit log ages.
async fn age(args: &Args) -> anyhow::Result<()> {
    let rows = bench::age::age(&args.age_records, args.age_hosts, bench::age::Measure::InChild).await?;
    println!(
        "\n## Age: one audit log grown to each size (a gate check and a heartbeat count a minute, a gate state a day), {} hosts, sled\n",
        args.age_hosts
    );
    println!(
        "| records | store | restart | verify the chain | its peak RSS above rest | pre-open report | its peak | gate check (unchanged) | slowest gate check during audit verify (of n) | audit --limit 50 | RSS at rest |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.0} MB | {} | {} | {:.1} MiB | {} | {:.1} MiB | {} | {} ({}) | {} | {:.0} MiB |",
            r.records,
            r.store_bytes as f64 / 1e6,
            ms(r.restart),
            ms(r.verify),
            r.verify_peak_mib.max(0.0),
            ms(r.report),
            r.report_peak_mib.max(0.0),
            ms(r.gate_check),
            ms(r.during_verify),
            r.checks_during_verify,
            ms(r.audit_tail),
            r.rest_mib
        );
    }
    Ok(())
}

/// The same ingest run with the ledger on sled and on etcd, alternating so
/// neither gets the quieter machine.
async fn etcd_ingest(args: &Args) -> anyhow::Result<()> {
    let agents = args.etcd_ingest_agents;
    let duration = Duration::from_secs(args.ingest_seconds);
    let mut rows = Vec::new();
    for round in 1..=args.etcd_ingest_rounds {
        for etcd in [false, true] {
            let r = ingest::ingest_on(agents, duration, etcd).await?;
            rows.push((round, etcd, r));
        }
    }
    println!(
        "\n## Ingest with the ledger on etcd beside sled: {agents} agents in flight, {} s windows\n",
        duration.as_secs()
    );
    println!(
        "| round | ledger | streamed rate | median | p99 | unary rate | unary p99 | controller CPU per heartbeat |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (round, etcd, r) in &rows {
        println!(
            "| {round} | {} | {:.0}/s | {} | {} | {:.0}/s | {} | {:.0} µs |",
            if *etcd { "etcd (3 members, loopback)" } else { "sled" },
            r.streamed.per_second(),
            ms(r.streamed.latencies.quantile(0.5)),
            ms(r.streamed.latencies.quantile(0.99)),
            r.unary.per_second(),
            ms(r.unary.latencies.quantile(0.99)),
            r.streamed.controller_us_per_attestation()
        );
    }
    let mean = |on_etcd: bool| {
        let rates: Vec<f64> = rows
            .iter()
            .filter(|(_, e, _)| *e == on_etcd)
            .map(|(_, _, r)| r.streamed.per_second())
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    };
    let (sled, etcd) = (mean(false), mean(true));
    println!(
        "\netcd / sled, streamed, mean of rounds: {etcd:.0}/s / {sled:.0}/s = {:.2} (target at least 0.5)",
        etcd / sled.max(1.0)
    );
    if rows.iter().any(|(_, _, r)| r.streamed.ran_dry || r.unary.ran_dry) {
        println!("WARNING: an agent ran out of signed-ahead heartbeats in some window; that rate is a lower bound.");
    }
    Ok(())
}

fn memory(args: &Args) -> anyhow::Result<()> {
    let (dir, root, files, bytes) = generated_tree(args, args.probe_mib)?;
    println!("\n== memory of a full scan");
    let kib = |k: Option<u64>| k.map_or_else(|| "n/a (no /usr/bin/time)".to_string(), |k| format!("{} MiB", k >> 10));
    let rss = |tree: &std::path::Path, what: String| -> anyhow::Result<()> {
        println!(
            "peak RSS over {what}: {} MiB for the agent's full scan alone; {} for `lockstep-agent measure` (scan + manifest JSON)",
            probe::scan_peak_rss_kib(tree)? >> 10,
            kib(probe::peak_rss_kib(tree)?)
        );
        Ok(())
    };
    rss(&root, format!("the probe's tree ({files} files, {} MiB)", bytes >> 20))?;
    if args.rss_small_files > 0 {
        let small = dir.path().join("small");
        probe::small_files(&small, args.rss_small_files)?;
        rss(&small, format!("{} small files", args.rss_small_files))?;
        std::fs::remove_dir_all(&small)?;
    }
    Ok(())
}

async fn probe(args: &Args) -> anyhow::Result<()> {
    let (dir, root, files, bytes) = generated_tree(args, args.probe_mib)?;
    let phase = Duration::from_secs(args.probe_seconds);
    let r = probe::run(&root, bytes, phase, args.probe_rounds)?;
    println!(
        "\n== probe: {} on CPU {} beside the agent on CPU {} ({files} files, {} MiB; {} rounds of {} s per phase)",
        probe::probe_name(),
        r.probe_cpu,
        r.agent_cpus,
        r.tree_bytes >> 20,
        args.probe_rounds,
        args.probe_seconds
    );
    println!(
        "{:<32} {:>9} {:>8} {:>8} {:>9} {:>9} {:>10}",
        "phase", "samples", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "hashed MiB"
    );
    let base = r.phases.first().map_or(1.0, |p| p.1.p99);
    for (load, l, hashed) in &r.phases {
        println!(
            "{:<32} {:>9} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>10}   p99 {:+.0}% of baseline",
            load.name(),
            l.samples,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            hashed >> 20,
            (l.p99 / base - 1.0) * 100.0
        );
    }
    for nice in [0, 10] {
        let took = probe::gate_close_under_load(nice, args.probe_halts).await?;
        let l = bench::Latencies::new(took);
        println!(
            "halt -> gate file CLOSED, agent at nice {nice} sharing CPU 0 with a busy loop: median {}, p99 {}, max {} ({} halts)",
            ms(l.quantile(0.5)),
            ms(l.quantile(0.99)),
            ms(l.max()),
            l.samples.len()
        );
    }
    let working = dir.path().join("working-set.bin");
    std::fs::write(&working, vec![7u8; 512 << 20])?;
    let [(on, on_tree), (off, off_tree)] = probe::page_cache(&root, &working)?;
    println!(
        "page cache after a full scan of the uncached tree: working set {:.0}% resident, tree {} MiB cached (restore on); {:.0}% and {} MiB (restore off)",
        on * 100.0,
        on_tree >> 20,
        off * 100.0,
        off_tree >> 20
    );
    let ws_dir = dir.path().join("working-set");
    std::fs::create_dir_all(&ws_dir)?;
    let ws = ws_dir.join("working-set.bin");
    std::fs::rename(&working, &ws)?;
    match probe::page_cache_under_pressure(&root, &ws, args.pressure_mib << 20) {
        Ok([on, off]) => println!(
            "under a {} MiB memory cgroup (working set and scan in it): working set {:.0}% resident after the scan with the change, {:.0}% without",
            args.pressure_mib,
            on * 100.0,
            off * 100.0
        ),
        Err(e) => println!("page cache under memory pressure: not measured ({e:#})"),
    }
    Ok(())
}
