//! A real lockstep fleet on loopback, for the demo and the integration tests:
//! a generated PKI, a controller serving mTLS on 127.0.0.1:0 over a real sled
//! store, and agents whose "hosts" are directories measured as if they were `/`.
//!
//! - [`browser`]: Debian's headless Chromium, for pages a test renders.
//! - [`bench`]: the benchmarks `lockstep-bench` runs, one module per part.
//! - [`fleet`]: start and drive the fleet (deploy files, rescan, console); `fleet::process` runs it as real processes, `fleet::ha` as controllers on etcd.
//! - [`knight`]: the Knight Capital morning, step by step.
//! - [`netns`]: boxes in network namespaces on a bridge, cut like a cable (nftables).
//! - [`child`]: child processes: found next to the test binary, killed on drop.
//! - [`etcd_cluster`]: a 3-member etcd cluster with its own CA, for the HA tests.
//! - [`ports`]: loopback ports for servers in child processes, outside the ephemeral range.
//! - [`swtpm`]: a software TPM per test host (Debian's swtpm), and a PCR changed as a boot would.
//! - [`ha_demo`]: `lockstep-demo --ha`: a leader killed under a live fleet on etcd.
//! - [`collectors`]: what the controller sends to, for real: a webhook receiver
//!   (and a plain HTTP GET, for metrics) and Debian's rsyslog as the SIEM collector.

pub mod bench;
pub mod browser;
pub mod child;
pub mod collectors;
pub mod etcd_cluster;
pub mod fleet;
pub mod fuzz;
pub mod ha_demo;
pub mod knight;
pub mod netns;
pub mod ports;
pub mod swtpm;
