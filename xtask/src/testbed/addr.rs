//! Node and pod addresses.
//!
//! Each node owns one /24 of 198.18.0.0/16: the node is `198.18.<b>.1` (a /32
//! on `lo`, labelled with the node's name) and its pods are `.2` to `.254`.
//! The label on `lo` is the claim: a block is free when no address or route
//! of the root namespace falls in it, and it is chosen and claimed under the
//! bed lock, so parallel nodes and processes never share one.
//! 198.19.0.0/16, the other half of the benchmark block, is left to addresses
//! that nothing owns (services the proxy intercepts).

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

use super::{cleanup::alive, names, names::NodeId, run::ip};

/// The /16 nodes and pods are numbered from.
pub const POD_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 16);
/// A /16 the bed never assigns: for addresses nothing owns (services).
pub const SERVICE_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);

/// Pods per node: `.2` to `.254` of the node's /24.
pub(crate) const MAX_PODS: usize = 253;

pub(crate) fn node_ip(block: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, block, 1)
}

pub(crate) fn pod_ip(block: u8, index: usize) -> Ipv4Addr {
    assert!(index < MAX_PODS);
    Ipv4Addr::new(198, 18, block, 2 + index as u8)
}

fn block_of(ip: Ipv4Addr) -> Option<u8> {
    let [a, b, c, _] = ip.octets();
    (a == 198 && b == 18).then_some(c)
}

/// Every IPv4 address or prefix mentioned in `text` (`a.b.c.d` or `a.b.c.d/n`).
fn mentioned(text: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
    text.split(|c: char| c.is_whitespace() || c == '\\')
        .filter_map(|t| t.split('/').next()?.parse().ok())
}

/// A /24 of 198.18.0.0/16 that nothing in the root namespace uses yet. The
/// search starts at a place derived from the node's id, so parallel nodes
/// rarely probe the same blocks. Call with the bed lock held.
pub(crate) fn free_block(id: NodeId) -> Result<u8> {
    let addrs = ip(&["-o", "-4", "addr", "show"])?;
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    let mut used = [false; 256];
    for ip in mentioned(&addrs).chain(mentioned(&routes)) {
        if let Some(b) = block_of(ip) {
            used[usize::from(b)] = true;
        }
    }
    let start = (id.pid as usize).wrapping_mul(7) + (id.seq as usize).wrapping_mul(31);
    match (0..256).map(|i| (start + i) % 256).find(|&b| !used[b]) {
        Some(b) => Ok(b as u8),
        None => bail!("every /24 of 198.18.0.0/16 is in use in the root namespace"),
    }
}

/// The IPv4 addresses on `lo` with their labels (`lo` itself when unlabelled).
pub(crate) fn lo_addresses() -> Result<Vec<(Ipv4Addr, String)>> {
    let out = ip(&["-o", "-4", "addr", "show", "dev", "lo"])?;
    Ok(out
        .lines()
        .filter_map(|line| {
            // `1: lo    inet 198.18.3.1/32 scope global lo:st1092n0\       valid_lft ...`
            let fields: Vec<&str> = line.split('\\').next()?.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "inet")?;
            let ip = fields.get(at + 1)?.split('/').next()?.parse().ok()?;
            Some((ip, fields.last()?.to_string()))
        })
        .collect())
}

/// The pids of the processes that have a live test bed node on this machine
/// (each node's address on `lo` is labelled with its owner).
pub fn live_node_owners() -> Result<Vec<u32>> {
    let mut pids: Vec<u32> = lo_addresses()?
        .iter()
        .filter_map(|(_, label)| names::lo_label_owner(label))
        .filter(|&pid| alive(pid))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_ip_output() {
        let text = "1: lo    inet 198.18.3.1/32 scope global lo:st1n0\\       valid_lft forever\n\
                    198.18.7.0/24 dev x\nlocal 127.0.0.1 dev lo table local";
        let found: Vec<Ipv4Addr> = mentioned(text).collect();
        assert_eq!(
            found,
            [
                Ipv4Addr::new(198, 18, 3, 1),
                Ipv4Addr::new(198, 18, 7, 0),
                Ipv4Addr::new(127, 0, 0, 1)
            ]
        );
        assert_eq!(block_of(found[1]), Some(7));
        assert_eq!(block_of(found[2]), None);
    }

    #[test]
    fn pods_follow_the_node_in_its_block() {
        assert_eq!(node_ip(9), Ipv4Addr::new(198, 18, 9, 1));
        assert_eq!(pod_ip(9, 0), Ipv4Addr::new(198, 18, 9, 2));
        assert_eq!(pod_ip(9, MAX_PODS - 1), Ipv4Addr::new(198, 18, 9, 254));
    }
}
