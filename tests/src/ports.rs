//! Ports for servers a test starts in another process (etcd, a controller,
//! chromedriver), which must be named before that process binds them.
//!
//! A port from `bind(":0")` is in the kernel's ephemeral range, the same
//! range every outgoing connection takes its source port from: between our
//! check and the child's bind, a parallel test's client connection can take
//! it ("Address already in use"). These come from below that range
//! (32768–60999 on Linux), each handed out once per process, starting at a
//! pid-derived offset so two test processes rarely probe the same ports.

use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback TCP port that nothing listened on a moment ago and that this
/// process has not handed out before.
pub fn free_port() -> anyhow::Result<u16> {
    free_ports(1)
}

/// Two adjacent ports, `p` and `p + 1`, as [`free_port`] hands them out:
/// what a server whose clients find its second port at `p + 1` needs
/// (swtpm's control channel, as libtss2's swtpm TCTI assumes it).
pub fn free_port_pair() -> anyhow::Result<u16> {
    free_ports(2)
}

fn free_ports(n: u32) -> anyhow::Result<u16> {
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(97)) % COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let first = NEXT.fetch_add(n, Ordering::SeqCst) % COUNT;
        if first + n > COUNT {
            continue;
        }
        let port = u16::try_from(FIRST + first)?;
        let free = (0..n).all(|i| {
            u16::try_from(FIRST + first + i).is_ok_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| super::free_port().unwrap()).collect();
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)), "{ports:?}");
        let pair = super::free_port_pair().unwrap();
        let next = super::free_port().unwrap();
        assert!(next != pair && next != pair + 1, "{pair} {next}");
    }
}
