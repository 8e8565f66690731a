//! Removing what earlier runs left behind when they died before their
//! teardown (SIGKILL, a crash, a power cut of the test runner): everything
//! whose name carries the pid of a process that is gone.

use std::fs;

use anyhow::{Context, Result, bail};

use super::{
    addr, cgroup,
    lock::BedLock,
    names, netns,
    run::{ip, log, run},
    sysctl,
};

/// Whether a process with this pid exists (a reused pid counts as alive: its
/// leftovers are kept, never someone else's live node removed).
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return true; // kill(0 or -1, ..) would mean a group: never ours to judge
    }
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the cgroups (killing what is left in them), veths, namespaces and
/// `lo` addresses of dead runs, and restores the sysctls when no live node
/// remains. Returns how many things it removed. `Node::new` calls it.
pub fn cleanup_stale() -> Result<usize> {
    let _lock = BedLock::take()?;
    let dead = |owner: Option<u32>| owner.is_some_and(|pid| !alive(pid));
    let mut removed = 0;
    let mut errors = Vec::new();
    let mut tally = |what: &str, name: &str, r: Result<()>| match r {
        Ok(()) => {
            log(format_args!("removed stale {what} {name}"));
            removed += 1;
        }
        Err(e) => errors.push(format!("{e:#}")),
    };

    // Processes first, so that nothing keeps a namespace alive: the test
    // beds' cgroups (under the v2 root, and their CPU cgroups in the v1 cpu
    // hierarchy), and those tests make for themselves (under the v2 root,
    // or in the v1 pids hierarchy where the machine mounts one).
    let root = cgroup::cgroup2_root()?;
    let entries = fs::read_dir(&root).with_context(|| format!("list {}", root.display()))?;
    let v1 = [cgroup::pids_v1_root(), cgroup::cpu_v1_root()]
        .into_iter()
        .flatten()
        .filter_map(|root| fs::read_dir(root).ok());
    for entry in entries.chain(v1.flatten()).flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(names::cgroup_owner(&name)) || dead(names::test_cgroup_owner(&name)) {
            tally("cgroup", &name, cgroup::kill_and_remove(&entry.path()));
        }
    }
    for link in netns::links() {
        if dead(names::veth_owner(&link)) {
            tally("veth", &link, netns::delete_link(&link));
        }
    }
    for ns in netns::list() {
        if dead(names::netns_owner(&ns)) {
            tally("network namespace", &ns, netns::delete(&ns));
        }
    }
    for (addr, label) in addr::lo_addresses()? {
        if dead(names::lo_label_owner(&label)) {
            let cidr = format!("{addr}/32");
            let r = ip(&["addr", "del", &cidr, "dev", "lo"]).map(drop);
            tally("lo address", &format!("{cidr} ({label})"), r);
        }
    }
    // iptables-mode proxies name their nftables table for the node address
    // they listen on. A table whose node address is gone from `lo` (above)
    // belongs to a dead run, and would send a new node on the same block to
    // a proxy that is no more.
    let live: Vec<std::net::Ipv4Addr> = addr::lo_addresses()?.into_iter().map(|(a, _)| a).collect();
    for table in nft_tables() {
        if let Some(node) = bed_table_node(&table)
            && !live.contains(&node)
        {
            let r = run(std::process::Command::new("nft").args(["delete", "table", "ip", &table]))
                .map(drop);
            tally("nftables table", &table, r);
        }
    }
    // Proxies listening on a node address (the benchmark's) offer their
    // sockets to a successor on a Unix socket named for that address under
    // /run/sidetrack; one killed leaves the file behind. A new proxy would
    // find nobody there and carry on, but the files would pile up.
    for file in fs::read_dir(HANDOVER_DIR).into_iter().flatten().flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        if let Some(node) = bed_handover_node(&name)
            && !live.contains(&node)
        {
            tally(
                "handover socket",
                &name,
                fs::remove_file(file.path()).map_err(Into::into),
            );
        }
    }
    if addr::live_node_owners()?.is_empty() {
        sysctl::restore()?;
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(removed)
}

/// The `ip` family tables nftables has (none when `nft` is missing).
fn nft_tables() -> Vec<String> {
    run(std::process::Command::new("nft").args(["list", "tables", "ip"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("table ip ").map(str::to_owned))
        .collect()
}

/// Where proxies put their handover sockets by default.
const HANDOVER_DIR: &str = "/run/sidetrack";

/// The node address a proxy's handover socket is named for, if it is a
/// test bed one: `handover-198_18_<b>_1-<port>.sock` is 198.18.b.1.
fn bed_handover_node(name: &str) -> Option<std::net::Ipv4Addr> {
    let rest = name
        .strip_prefix("handover-198_18_")?
        .strip_suffix(".sock")?;
    let (ip, port) = rest.split_once('-')?;
    let (block, one) = ip.split_once('_')?;
    let block: u8 = block.parse().ok()?;
    (one == "1" && port.parse::<u16>().is_ok()).then(|| addr::node_ip(block))
}

/// The node address a proxy's table is named for, if it is a test bed one:
/// `sidetrack_198_18_<b>_1_<port>` is 198.18.b.1.
fn bed_table_node(table: &str) -> Option<std::net::Ipv4Addr> {
    let rest = table.strip_prefix("sidetrack_198_18_")?;
    let mut parts = rest.split('_');
    let block: u8 = parts.next()?.parse().ok()?;
    (parts.next()? == "1" && parts.next()?.parse::<u16>().is_ok() && parts.next().is_none())
        .then(|| addr::node_ip(block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bed_node_handover_sockets_are_named_for_a_node() {
        assert_eq!(
            bed_handover_node("handover-198_18_7_1-4140.sock"),
            Some(addr::node_ip(7))
        );
        assert_eq!(bed_handover_node("handover-10_0_0_1-4140.sock"), None);
        assert_eq!(bed_handover_node("handover-198_18_7_2-4140.sock"), None);
        assert_eq!(bed_handover_node("handover-198_18_7_1-4140.sock.123"), None);
    }

    #[test]
    fn only_bed_node_tables_are_named_for_a_node() {
        assert_eq!(
            bed_table_node("sidetrack_198_18_7_1_4140"),
            Some(addr::node_ip(7))
        );
        assert_eq!(bed_table_node("sidetrack_10_0_0_1_4140"), None);
        assert_eq!(bed_table_node("sidetrack_198_18_7_2_4140"), None);
        assert_eq!(bed_table_node("sidetrack_198_18_7_1_x"), None);
        assert_eq!(bed_table_node("filter"), None);
    }
}
