//! Boxes on a test network, cut the way a cable is. Each box is a network
//! namespace joined by a veth pair to a bridge in this (the root)
//! namespace, whose address the root's servers (etcd) and clients (agents,
//! consoles) use. A cut drops a box's frames on the bridge with nftables,
//! both ways: no RST, no FIN, no ICMP, exactly as a pulled cable or a dead
//! switch port. Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `nft`
//! (nftables); `.ci/run` installs them. Everything is removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NETS: AtomicU32 = AtomicU32::new(0);

/// One box: its namespace, the root side of its veth, its address.
pub struct NetBox {
    pub ns: String,
    veth: String,
    pub ip: String,
}

pub struct Net {
    id: String,
    bridge: String,
    /// The bridge's address: the root namespace on this network.
    pub host_ip: String,
    pub boxes: Vec<NetBox>,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let (program, rest) = args.split_first().ok_or_else(|| anyhow::anyhow!("empty command"))?;
    let out = Command::new(program).args(rest).output().map_err(|e| {
        anyhow::anyhow!("{program}: {e} (the network tests need iproute2 and nftables: .ci/run installs them)")
    })?;
    anyhow::ensure!(
        out.status.success(),
        "`{}` failed: {} (the network tests run as root, with CAP_NET_ADMIN)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Net {
    /// A bridge and `boxes` namespaces on a /24 of their own.
    pub fn create(boxes: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(boxes < 200, "at most 199 boxes");
        // Interface names are at most 15 bytes: "lsb" + 5 hex digits.
        let n = (std::process::id() & 0xfff) << 8 | (NETS.fetch_add(1, Ordering::SeqCst) & 0xff);
        let id = format!("{n:05x}");
        let (a, b) = (200 + (n >> 8) % 50, n & 0xff);
        let mut net = Self {
            bridge: format!("lsb{id}"),
            host_ip: format!("10.{a}.{b}.1"),
            boxes: Vec::new(),
            id,
        };
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("{}/24", net.host_ip), "dev", &net.bridge])?;
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        for i in 0..boxes {
            let ns = format!("ls{}n{i}", net.id);
            let veth = format!("lsv{}{i:x}", net.id);
            let ip = format!("10.{a}.{b}.{}", 11 + i);
            run(&["ip", "netns", "add", &ns])?;
            net.boxes.push(NetBox {
                ns: ns.clone(),
                veth: veth.clone(),
                ip: ip.clone(),
            });
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &net.bridge, "up"])?;
            run(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Filters on the bridge: every frame to or from a box passes one.
        run(&["nft", "add", "table", "bridge", &net.table()])?;
        run(&[
            "nft",
            "add",
            "chain",
            "bridge",
            &net.table(),
            "pre",
            "{ type filter hook prerouting priority 0; }",
        ])?;
        run(&[
            "nft",
            "add",
            "chain",
            "bridge",
            &net.table(),
            "post",
            "{ type filter hook postrouting priority 0; }",
        ])?;
        Ok(net)
    }

    fn table(&self) -> String {
        format!("lockstep_{}", self.id)
    }

    /// `program` run inside box `i` (`ip netns exec` execs it: the child's
    /// pid is the program's, so signals reach it).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.boxes[i].ns]).arg(program);
        c
    }

    /// Box `i` is cut off from the network: every frame to or from it is
    /// dropped on the bridge.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        let veth = &self.boxes[i].veth;
        self.rule("pre", &format!("iifname {veth} drop"))?;
        self.rule("post", &format!("oifname {veth} drop"))
    }

    /// Box `i` can no longer reach the root's `ports` (etcd), nor they it;
    /// everything else still flows (agents and consoles reach it).
    pub fn cut_from(&self, i: usize, ports: &[u16]) -> anyhow::Result<()> {
        let veth = &self.boxes[i].veth;
        let set = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let host = &self.host_ip;
        self.rule(
            "pre",
            &format!("iifname {veth} ip daddr {host} tcp dport {{ {set} }} drop"),
        )?;
        self.rule(
            "post",
            &format!("oifname {veth} ip saddr {host} tcp sport {{ {set} }} drop"),
        )
    }

    /// Every cut mended.
    pub fn mend(&self) -> anyhow::Result<()> {
        run(&["nft", "flush", "chain", "bridge", &self.table(), "pre"])?;
        run(&["nft", "flush", "chain", "bridge", &self.table(), "post"])
    }

    fn rule(&self, chain: &str, rule: &str) -> anyhow::Result<()> {
        let mut args = vec!["nft", "add", "rule", "bridge"];
        let table = self.table();
        args.push(&table);
        args.push(chain);
        args.extend(rule.split(' '));
        run(&args)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new(args[0]).args(&args[1..]).output();
        };
        quiet(&["nft", "delete", "table", "bridge", &self.table()]);
        for b in &self.boxes {
            quiet(&["ip", "netns", "del", &b.ns]);
        }
        quiet(&["ip", "link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the cuts do, with plain TCP: a cut box is unreachable and
    /// reaches nothing; a box cut from some ports still reaches the rest.
    #[test]
    fn a_cut_drops_a_box_s_traffic_and_a_port_cut_only_those_ports() {
        let net = Net::create(2).unwrap();
        let root_a = std::net::TcpListener::bind((net.host_ip.as_str(), 0)).unwrap();
        let root_b = std::net::TcpListener::bind((net.host_ip.as_str(), 0)).unwrap();
        let (a, b) = (root_a.local_addr().unwrap(), root_b.local_addr().unwrap());
        // bash's /dev/tcp, bounded by timeout(1): a dropped SYN never answers.
        let bash = std::path::Path::new("/bin/bash");
        let reach = |i: usize, addr: std::net::SocketAddr| {
            net.command(i, std::path::Path::new("timeout"))
                .args(["1", bash.to_str().unwrap(), "-c"])
                .arg(format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()))
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        assert!(reach(0, a) && reach(0, b) && reach(1, a));
        net.cut_from(0, &[a.port()]).unwrap();
        assert!(!reach(0, a), "box 0 is cut from port {}", a.port());
        assert!(reach(0, b), "box 0 still reaches port {}", b.port());
        assert!(reach(1, a), "box 1 is not cut");
        net.mend().unwrap();
        net.cut(0).unwrap();
        assert!(!reach(0, b), "box 0 is cut off");
        assert!(reach(1, b), "box 1 is not cut");
        net.mend().unwrap();
        assert!(reach(0, a), "mended");
    }
}
