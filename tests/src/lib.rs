//! A real lockstep fleet on loopback, for the demo and the integration tests:
//! a generated PKI, a controller serving mTLS on 127.0.0.1:0 over a real sled
//! store, and agents whose "hosts" are directories measured as if they were `/`.
//!
//! - [`browser`]: Debian's headless Chromium, for pages a test renders.
//! - [`board_bench`]: the web board: a gate change to the page, first render, many boards.
//! - [`bench`]: realtime benchmarks (change to verdict, halt fan-out).
//! - [`scan_bench`]: full scan of a generated tree vs sha256sum, aide and ring's limit.
//! - [`fleet_bench`]: the real controller with 10,000 simulated enrolled agents.
//! - [`idle_bench`]: the real agent process at rest: CPU and memory.
//! - [`ingest_bench`]: many simulated agents attesting to one controller.
//! - [`fleet`]: start and drive the fleet (deploy files, rescan, console).
//! - [`knight`]: the Knight Capital morning, step by step.
//! - [`netns`]: boxes in network namespaces on a bridge, cut like a cable (nftables).
//! - [`ports`]: loopback ports for servers in child processes, outside the ephemeral range.
//! - [`ha_demo`]: `lockstep-demo --ha`: a leader killed under a live fleet on etcd.
//! - [`sink`]: a webhook receiver and a plain HTTP GET, for alerts and metrics.

pub mod bench;
pub mod board_bench;
pub mod browser;
pub mod fleet;
pub mod fleet_bench;
pub mod fuzz;
pub mod ha_bench;
pub mod ha_demo;
pub mod ha_fleet;
pub mod idle_bench;
pub mod ingest_bench;
pub mod knight;
pub mod netns;
pub mod openssl_speed;
pub mod ports;
pub mod probe_bench;
pub mod proc_fleet;
pub mod scan_bench;
pub mod sink;
