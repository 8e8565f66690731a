//! cgroup v2: where the hierarchy is mounted, and how a path is checked.
//!
//! Hosts differ: a unified layout mounts cgroup v2 at /sys/fs/cgroup, a hybrid
//! one (this project's CI machines) at /sys/fs/cgroup/unified. The mount
//! table is the only reliable answer.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
pub fn v2_root() -> io::Result<PathBuf> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    parse_v2_root(&table).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (cgroup v2 is required; mount it with \
             `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with \
             systemd.unified_cgroup_hierarchy=1)",
        )
    })
}

/// Finds the first `cgroup2` mount point in a mountinfo table.
fn parse_v2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options... - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where interception attaches by default: the kubelet's pods cgroup
/// (`kubepods.slice` with the systemd driver, `kubepods` with cgroupfs)
/// when there is one, else the root of the hierarchy.
pub fn default_attach_point() -> io::Result<PathBuf> {
    let root = v2_root()?;
    Ok(["kubepods.slice", "kubepods"]
        .iter()
        .map(|name| root.join(name))
        .find(|p| p.join("cgroup.procs").is_file())
        .unwrap_or(root))
}

/// Checks that `path` is a directory inside a cgroup v2 hierarchy.
pub fn check_v2_dir(path: &Path) -> io::Result<()> {
    if !path.join("cgroup.procs").is_file() || !path.join("cgroup.controllers").is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a cgroup v2 directory", path.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hybrid_mount() {
        let table = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            parse_v2_root(table),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_none_without_cgroup2() {
        let table = "33 25 0:28 / /sys/fs/cgroup rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_v2_root(table), None);
    }

    #[test]
    fn unescapes_spaces() {
        let table = "34 33 0:29 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(parse_v2_root(table), Some(PathBuf::from("/mnt/cg two")));
    }
}
