//! The benchmarks at a tiny size, so the harness cannot rot. No timing is
//! asserted: only that each benchmark runs and measures what it says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_tests::bench;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_to_verdict_benchmark_runs_at_tiny_size() {
    let l = bench::change_to_verdict(2, 3).await.unwrap();
    assert_eq!(l.samples.len(), 3);
    assert!(l.quantile(0.5) <= l.quantile(0.99) && l.quantile(0.99) <= l.max());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_fanout_benchmark_runs_at_tiny_size() {
    bench::halt_fanout(3).await.unwrap();
}

#[test]
fn quantiles_use_nearest_rank() {
    let ms = |n| std::time::Duration::from_millis(n);
    let l = bench::Latencies::new((1..=100).rev().map(ms).collect());
    assert_eq!((l.quantile(0.5), l.quantile(0.99), l.max()), (ms(50), ms(99), ms(100)));
}
