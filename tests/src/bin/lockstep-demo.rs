//! The Knight Capital morning on a local demo fleet: a controller and 8
//! agents on loopback with a generated PKI in a temp dir. Run it with
//! `cargo run -p lockstep-tests --bin lockstep-demo`; with `--ha`, a
//! leader failover on a 3-member etcd cluster instead.

use clap::Parser;
use lockstep_tests::knight::{Morning, Step};

#[derive(Parser)]
#[command(about = "Replays the Knight Capital morning on a local lockstep fleet")]
struct Args {
    /// Hosts in the smars role.
    #[arg(long, default_value_t = 8)]
    hosts: usize,
    /// Show a failover instead: 3 etcd members, 3 controllers and agents
    /// (4 unless --hosts says), the leader killed -9 at the open. Needs
    /// Debian's etcd-server.
    #[arg(long)]
    ha: bool,
}

fn print_step(n: usize, step: &Step) {
    println!("\n=== Step {n}: {} ===", step.title);
    for (cmd, out) in &step.transcript {
        println!("$ {cmd}");
        print!("{out}");
    }
    println!("(gate check exit code {})", step.gate_check_exit);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lockstep_daemon::logging::init("error");
    let args = Args::parse();
    anyhow::ensure!(args.hosts >= 2, "--hosts must be at least 2");
    if args.ha {
        let explicit = std::env::args().any(|a| a == "--hosts" || a.starts_with("--hosts="));
        return lockstep_tests::ha_demo::run(if explicit { args.hosts } else { 4 }).await;
    }
    println!("Knight Capital, 1 August 2012, replayed with lockstep.");
    let morning = Morning::start(args.hosts).await?;
    println!(
        "Fleet: controller on {} (mTLS, TLS 1.3), {} agents, PKI and data in {}",
        morning.fleet.addr,
        args.hosts,
        morning.fleet.dir.path().display()
    );
    println!(
        "Each agent enrolled with a one-time join token (lockstep token create, then lockstep-agent enroll): \
         its TLS and attestation keys were made on the host, the controller signed its certificate and pinned its key."
    );
    print_step(1, &morning.step1_release_everywhere().await?);
    print_step(2, &morning.step2_new_code_on_all_but_one().await?);
    print_step(3, &morning.step3_roll_back().await?);
    let (step, took) = morning.step4_halt().await?;
    print_step(4, &step);
    println!("every agent's local gate (lockstep-agent gate check) closed {took:.0?} after the halt");
    println!("\n=== Step 5: The audit log tells the story and verifies; the incidents wait for an operator ===");
    for (cmd, out) in morning.step5_audit().await? {
        println!("$ {cmd}");
        print!("{out}");
    }
    println!(
        "\nlockstep kept every odd host out of the market: trading may start only where `lockstep gate check` exits 0."
    );
    morning.fleet.shutdown().await
}
