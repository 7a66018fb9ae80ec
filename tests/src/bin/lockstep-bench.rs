//! `lockstep-bench`: realtime figures on this machine. Not part of the test
//! suite's pass/fail; a smoke test runs it tiny so it cannot rot.
//!
//!   cargo run --release -p lockstep-tests --bin lockstep-bench

use clap::Parser;
use lockstep_tests::bench;

#[derive(Parser)]
#[command(about = "lockstep realtime benchmarks on a loopback fleet")]
struct Args {
    /// File changes to time (write → controller verdict).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Hosts in the fleet for the change benchmark.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Fleet sizes for the halt fan-out (repeatable).
    #[arg(long = "agents", default_values_t = [100usize, 1000])]
    agents: Vec<usize>,
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    println!("| benchmark | size | median | p99 | max |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let l = bench::change_to_verdict(args.hosts, args.changes).await?;
    println!(
        "| file write → controller verdict | {} changes, {} hosts | {} | {} | {} |",
        l.samples.len(),
        args.hosts,
        ms(l.quantile(0.5)),
        ms(l.quantile(0.99)),
        ms(l.max())
    );
    for n in args.agents {
        let took = bench::halt_fanout(n).await?;
        println!(
            "| `lockstep halt` → gate file closed on every agent | {n} agents | | | {} |",
            ms(took)
        );
    }
    Ok(())
}
