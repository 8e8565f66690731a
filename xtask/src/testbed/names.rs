//! The names of everything a node makes, and reading the owning process's pid
//! back out of them (for `cleanup_stale`).
//!
//! Every name carries the owner's pid and a per-process node sequence number,
//! so parallel processes, parallel nodes in one process and leftovers of dead
//! runs never collide:
//!
//! | what              | form                               | example              |
//! |-------------------|------------------------------------|----------------------|
//! | cgroup (node)     | `sidetrack-bed-<tag>-<pid>-<seq>`  | `sidetrack-bed-demo-4242-0` |
//! | cgroup (pod)      | `<node cgroup>/<pod>`              | `.../hello`          |
//! | network namespace | `stb<pid>n<seq>-<pod>`             | `stb4242n0-hello`    |
//! | host-side veth    | `st<pid hex>n<seq hex>p<index hex>`| `st1092n0p0`         |
//! | `lo` address label| `lo:st<pid hex>n<seq hex>`         | `lo:st1092n0`        |
//!
//! Interface names and address labels are limited to 15 bytes, hence hex there.

use anyhow::{Result, bail, ensure};

/// Longest interface name or address label the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The identity of one node: the owning process and its node number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeId {
    pub pid: u32,
    pub seq: u32,
}

impl NodeId {
    pub fn cgroup(&self, tag: &str) -> String {
        format!("sidetrack-bed-{tag}-{}-{}", self.pid, self.seq)
    }

    pub fn netns(&self, pod: &str) -> String {
        format!("stb{}n{}-{pod}", self.pid, self.seq)
    }

    pub fn host_veth(&self, index: usize) -> Result<String> {
        let name = format!("st{:x}n{:x}p{index:x}", self.pid, self.seq);
        ensure!(
            name.len() <= IFNAME_MAX,
            "veth name {name} is longer than {IFNAME_MAX} bytes (too many nodes or pods)"
        );
        Ok(name)
    }

    pub fn lo_label(&self) -> Result<String> {
        let label = format!("lo:st{:x}n{:x}", self.pid, self.seq);
        ensure!(
            label.len() <= IFNAME_MAX,
            "address label {label} is longer than {IFNAME_MAX} bytes (too many nodes)"
        );
        Ok(label)
    }
}

/// A tag or pod name: short, lower-case letters, digits and `-`, so that it is
/// safe in a path, a namespace name and a command line.
pub(crate) fn check_label(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("{what} {s:?} must be 1 to 32 of [a-z0-9-], not starting with '-'");
    }
    Ok(())
}

/// Splits `s` into a leading run of digits in `radix` and the rest.
fn number(s: &str, radix: u32) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_digit(radix)).unwrap_or(s.len());
    let n = u32::from_str_radix(&s[..end], radix).ok()?;
    Some((n, &s[end..]))
}

/// The pid in `sidetrack-bed-<tag>-<pid>-<seq>`.
pub(crate) fn cgroup_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sidetrack-bed-")?;
    let mut parts = rest.rsplitn(3, '-');
    let seq = parts.next()?;
    let pid = parts.next()?;
    let tag = parts.next()?;
    (!tag.is_empty() && seq.parse::<u32>().is_ok())
        .then(|| pid.parse().ok())
        .flatten()
}

/// The pid in `sidetrack-test-<pid>-<rest>`: a cgroup a test made (under
/// the v2 root, or the v1 pids hierarchy).
pub(crate) fn test_cgroup_owner(name: &str) -> Option<u32> {
    let (pid, rest) = number(name.strip_prefix("sidetrack-test-")?, 10)?;
    (rest.len() > 1 && rest.starts_with('-')).then_some(pid)
}

/// The pid in `stb<pid>n<seq>-<pod>`.
pub(crate) fn netns_owner(name: &str) -> Option<u32> {
    let (pid, rest) = number(name.strip_prefix("stb")?, 10)?;
    let (_, rest) = number(rest.strip_prefix('n')?, 10)?;
    let pod = rest.strip_prefix('-')?;
    (!pod.is_empty()).then_some(pid)
}

/// The pid in `st<pid hex>n<seq hex>p<index hex>`.
pub(crate) fn veth_owner(name: &str) -> Option<u32> {
    let (pid, rest) = number(name.strip_prefix("st")?, 16)?;
    let (_, rest) = number(rest.strip_prefix('n')?, 16)?;
    let (_, rest) = number(rest.strip_prefix('p')?, 16)?;
    rest.is_empty().then_some(pid)
}

/// The pid in `lo:st<pid hex>n<seq hex>`.
pub(crate) fn lo_label_owner(label: &str) -> Option<u32> {
    let (pid, rest) = number(label.strip_prefix("lo:st")?, 16)?;
    let (_, rest) = number(rest.strip_prefix('n')?, 16)?;
    rest.is_empty().then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: NodeId = NodeId {
        pid: 4_194_303,
        seq: 17,
    };

    #[test]
    fn names_round_trip_to_the_owner() {
        assert_eq!(cgroup_owner(&ID.cgroup("my-tag")), Some(ID.pid));
        assert_eq!(netns_owner(&ID.netns("world-v1")), Some(ID.pid));
        assert_eq!(veth_owner(&ID.host_veth(200).unwrap()), Some(ID.pid));
        assert_eq!(lo_label_owner(&ID.lo_label().unwrap()), Some(ID.pid));
        // The shapes tests give their own cgroups.
        assert_eq!(test_cgroup_owner("sidetrack-test-4242-3-ebpf"), Some(4242));
        assert_eq!(
            test_cgroup_owner("sidetrack-test-4242-worker-dies"),
            Some(4242)
        );
    }

    #[test]
    fn the_largest_pid_fits_the_interface_name_limit() {
        assert_eq!(ID.host_veth(255).unwrap(), "st3fffffn11pff");
        assert_eq!(ID.lo_label().unwrap(), "lo:st3fffffn11");
        let many = NodeId {
            pid: ID.pid,
            seq: 0xfffff,
        };
        assert!(many.host_veth(0).is_err());
    }

    #[test]
    fn foreign_names_have_no_owner() {
        for name in [
            "eth0",
            "lo",
            "stuff",
            "st12n3",
            "st12n3p",
            "st12n3p4x",
            "veth1",
        ] {
            assert_eq!(veth_owner(name), None, "{name}");
        }
        for name in ["stb12n3", "stb12n3-", "stbxn3-a", "cni-1234"] {
            assert_eq!(netns_owner(name), None, "{name}");
        }
        for name in [
            "sidetrack-test-12-0-x",
            "sidetrack-bed-12-0",
            "sidetrack-bed-a-b-0",
        ] {
            assert_eq!(cgroup_owner(name), None, "{name}");
        }
        for name in [
            "sidetrack-test-",
            "sidetrack-test-12",
            "sidetrack-test-12-",
            "sidetrack-test-x-1",
            "sidetrack-bed-a-12-0",
        ] {
            assert_eq!(test_cgroup_owner(name), None, "{name}");
        }
        assert_eq!(lo_label_owner("lo"), None);
        assert_eq!(lo_label_owner("lo:other"), None);
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_label("pod", "world-v1").is_ok());
        for bad in ["", "-a", "A", "a b", "a/b", &"x".repeat(33)] {
            assert!(check_label("pod", bad).is_err(), "{bad:?}");
        }
    }
}
