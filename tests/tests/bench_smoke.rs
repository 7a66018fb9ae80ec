//! The benchmarks at a tiny size, so the harness cannot rot. No timing is
//! asserted: only that each benchmark runs and measures what it says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_tests::bench;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_to_verdict_benchmark_runs_at_tiny_size() {
    let l = bench::realtime::change_to_verdict(
        2,
        3,
        std::time::Duration::from_millis(20),
        std::time::Duration::from_millis(10),
    )
    .await
    .unwrap();
    assert_eq!(l.samples.len(), 3);
    assert!(l.quantile(0.5) <= l.quantile(0.99) && l.quantile(0.99) <= l.max());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_fanout_benchmark_runs_at_tiny_size() {
    bench::realtime::halt_fanout(3).await.unwrap();
}

#[test]
fn quantiles_use_nearest_rank() {
    let ms = |n| std::time::Duration::from_millis(n);
    let l = bench::Latencies::new((1..=100).rev().map(ms).collect());
    assert_eq!((l.quantile(0.5), l.quantile(0.99), l.max()), (ms(50), ms(99), ms(100)));
}

#[test]
fn scan_benchmark_runs_at_tiny_size_against_sha256sum() {
    use lockstep_tests::bench::scan;
    let dir = scan::workdir(None).unwrap();
    let root = dir.path().join("tree");
    let spec = scan::TreeSpec {
        files: 40,
        total_bytes: 8 << 20,
    };
    let (files, bytes) = scan::generate(&root, spec).unwrap();
    assert_eq!(files, 40);
    assert!(bytes > 4 << 20, "{bytes}");
    let (_, hashed) = scan::lockstep_scan(&root).unwrap();
    assert_eq!(hashed, files, "every generated file is hashed");
    scan::sha256sum(&root, 2).unwrap();
    // aide may be absent here; when present it must run.
    if let Err(why) = scan::aide(&root, dir.path(), 2).unwrap() {
        assert!(why.contains("not installed"), "{why}");
    }
    assert!(scan::ring_rate(8 << 20) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_benchmark_runs_at_tiny_size() {
    let r = lockstep_tests::bench::ingest::ingest(3, std::time::Duration::from_millis(500))
        .await
        .unwrap();
    assert!(r.bare_calls > 0);
    assert!(r.noop_calls > 0, "the plain tonic no-op service answered");
    assert!(r.heartbeat_bytes > r.bare_bytes && r.bare_bytes > 0);
    for w in [&r.streamed, &r.unary] {
        assert!(w.accepted > 0);
        assert_eq!(w.latencies.samples.len() as u64, w.accepted);
        assert!(!w.ran_dry, "3 agents cannot use up 500 ms of signed-ahead heartbeats");
        assert!(
            w.controller_cpu + w.generator_cpu > std::time::Duration::ZERO,
            "CPU accounting reads /proc"
        );
    }
    assert!(lockstep_tests::bench::ingest::ed25519_verify_rate(std::time::Duration::from_millis(50)) > 0.0);
}

#[test]
fn openssl_comparison_reads_its_figures_or_says_why_not() {
    // openssl may be absent here; when present its output must parse.
    match lockstep_tests::bench::openssl_speed::ed25519_verify_rate(1) {
        Ok(rate) => assert!(rate > 0.0),
        Err(why) => assert!(why.contains("not installed"), "{why}"),
    }
    match lockstep_tests::bench::openssl_speed::sha256_rate(1) {
        Ok(rate) => assert!(rate > 0.0),
        Err(why) => assert!(why.contains("not installed"), "{why}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_agent_benchmark_runs_the_real_agent_briefly() {
    let r =
        lockstep_tests::bench::idle::idle_agent(std::time::Duration::from_secs(1), std::time::Duration::from_secs(1))
            .await
            .unwrap();
    assert!(
        r.rss_bytes > 1 << 20,
        "a running agent has some memory: {}",
        r.rss_bytes
    );
    assert!(r.cpu_percent >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_benchmark_runs_the_real_controller_with_a_few_hosts() {
    let r = lockstep_tests::bench::fleet::fleet(5).await.unwrap();
    assert_eq!(r.hosts, 5);
    assert_eq!(r.gate_check.samples.len(), 5);
    assert!(r.controller_rss_bytes > 1 << 20, "{}", r.controller_rss_bytes);
}

#[test]
fn probe_benchmark_runs_at_tiny_size() {
    use lockstep_tests::bench::{probe, scan};
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("SKIPPED: the probe needs a CPU of its own");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path().join("tree");
    let spec = scan::TreeSpec {
        files: 20,
        total_bytes: 2 << 20,
    };
    let (_, bytes) = scan::generate(&root, spec).unwrap();
    let r = probe::run(&root, bytes, std::time::Duration::from_millis(100), 1).unwrap();
    assert_eq!(r.phases.len(), 7);
    for (load, l, hashed) in &r.phases {
        assert!(l.samples > 10, "{}: {} samples", load.name(), l.samples);
        assert!(l.p50 <= l.p99 && l.p99 <= l.max, "{}: {l:?}", load.name());
        if !matches!(load, probe::Load::None | probe::Load::Idle | probe::Load::DeployAlone) {
            assert!(*hashed > 0, "{} hashed nothing", load.name());
        }
    }
    let working = dir.path().join("working.bin");
    std::fs::write(&working, vec![1u8; 1 << 20]).unwrap();
    let [(on, _), (off, _)] = probe::page_cache(&root, &working).unwrap();
    assert!(
        on > 0.9 && off > 0.9,
        "the working set stays resident with memory to spare: {on} {off}"
    );
}

/// The board's benchmarks at tiny size (they need Debian's Chromium, which
/// `.ci/run` installs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_benchmarks_run_at_tiny_size() {
    use lockstep_tests::{bench::board, browser};
    if browser::chromium().unwrap().is_none() {
        return;
    }
    let c = board::change_to_page(2, 2).await.unwrap();
    assert_eq!(c.write_to_page.samples.len(), 2);
    assert!(c.decision_to_page.quantile(0.5) <= c.write_to_page.max());
    let r = board::first_render(20, 2).await.unwrap();
    assert_eq!(r.load.samples.len(), 2);
    assert!(r.bytes > 0);
    let many = board::many_boards(3, 2).await.unwrap();
    assert_eq!(many.decision_to_fresh.samples.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_benchmark_runs_at_tiny_size() {
    use lockstep_tests::bench::failover::Mode;
    let modes = [Mode::Kill, Mode::Freeze, Mode::Cut, Mode::CutEtcd];
    let f = lockstep_tests::bench::failover::failover(2, 1, 2, &modes)
        .await
        .unwrap();
    assert_eq!(f.modes.len(), 4);
    for m in &f.modes {
        assert_eq!(m.agents.samples.len(), 1, "{:?}", m.mode);
        // Every agent is on the new leader after (or as) it leads.
        assert!(m.agents.max() >= m.leader.max(), "{:?}", m.mode);
        assert_eq!(m.lost, 0, "{:?}: an acknowledged halt was lost", m.mode);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_benchmark_runs_at_tiny_size() {
    use lockstep_tests::bench::age::{Measure, age};
    let rows = age(&[300, 3_000], 20, Measure::InProcess).await.unwrap();
    assert_eq!(rows.len(), 2);
    // Each size holds its records and the few the controller adds (report, states, checks).
    assert!(rows[0].records >= 300 && rows[0].records < 320, "{:?}", rows[0]);
    assert!(rows[1].records >= 3_000 && rows[1].records < 3_020, "{:?}", rows[1]);
    assert!(
        rows.iter()
            .all(|r| r.store_bytes > 0 && r.verify > std::time::Duration::ZERO)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn years_benchmark_runs_at_tiny_size_and_archives() {
    // 17 days at a record every 30 s: the first days leave the store.
    let rows = lockstep_tests::bench::years::years(&[3_000, 50_000], 10, false, false)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].archive_bytes, 0, "nothing is 14 days old yet: {:?}", rows[0]);
    let last = &rows[1];
    assert!(last.records >= 50_000, "{last:?}");
    assert!(last.archive_bytes > 0, "{last:?}");
    // 18 days: the store keeps the last 14-odd, the first 3 are archived.
    assert!(
        last.store_records + 3 * 2_880 < last.records,
        "the store keeps the online window: {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_benchmark_runs_at_tiny_size_on_a_software_tpm() {
    let f = bench::tpm::costs(3, 1).await.unwrap();
    assert_eq!((f.quote.samples.len(), f.activate.samples.len()), (3, 1));
    assert!(f.verify_per_s > 0.0 && f.ecdsa_verify_per_s > 0.0 && f.make_credential_per_s > 0.0);
    let l = bench::realtime::change_to_verdict_with_tpm(2, 2).await.unwrap();
    assert_eq!(l.samples.len(), 2);
}
