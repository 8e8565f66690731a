//! A node: the root network namespace, a cgroup v2 subtree for its pods, an
//! address on `lo` for the proxy and, when asked for, CPU cgroups in the v1
//! cpu hierarchy. Pods are added one by one; everything made is recorded
//! first and undone by `teardown`, which `Drop` and the signal handler call.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    addr, cgroup, cleanup::cleanup_stale, lock::BedLock, names, names::NodeId, netns, pod::Pod,
    run::ip, sysctl,
};

/// The next node number of this process.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

/// Every node of this process that is not torn down yet, for the signal handler.
static LIVE: Mutex<Vec<Weak<Mutex<Made>>>> = Mutex::new(Vec::new());

/// The next hop every pod's default route points to. Nothing owns it: the
/// pod's neighbour entry maps it to the host-side veth's MAC, as Calico does.
const GATEWAY: &str = "169.254.1.1";

/// What one node has made so far. Entries are recorded before the thing is
/// made, so a failure half-way is undone too; undoing something absent is fine.
#[derive(Default)]
pub(crate) struct Made {
    cgroup: Option<PathBuf>,
    /// The node's directory in the v1 cpu hierarchy (see `Node::cpu_cgroup`).
    cpu_v1: Option<PathBuf>,
    links: Vec<(String, String)>, // (network namespace, host-side veth) per pod
    lo: Option<(Ipv4Addr, String)>,
}

impl Made {
    /// Kills the pods' processes, removes the cgroups, veths and namespaces,
    /// the `lo` address and, with the last live node on the machine, restores
    /// the sysctls. Tries every step; reports all failures.
    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(cg) = self.cgroup.take() {
            errors.extend(cgroup::kill_and_remove(&cg).err());
        }
        if let Some(cg) = self.cpu_v1.take() {
            errors.extend(cgroup::kill_and_remove(&cg).err());
        }
        for (ns, veth) in self.links.drain(..).rev() {
            // The veth goes with its namespace, unless something (a Command
            // holding the namespace's descriptor, a thread inside it) keeps
            // the namespace alive: so it is deleted first, explicitly.
            errors.extend(netns::delete_link(&veth).err());
            errors.extend(netns::delete(&ns).err());
        }
        if let Some((node_ip, label)) = self.lo.take() {
            let released = BedLock::take().and_then(|_lock| {
                if addr::lo_addresses()?.contains(&(node_ip, label)) {
                    ip(&["addr", "del", &format!("{node_ip}/32"), "dev", "lo"])?;
                }
                // Other live nodes (of any process) still need the sysctls.
                if addr::live_node_owners()?.is_empty() {
                    sysctl::restore()?;
                }
                Ok(())
            });
            errors.extend(released.err());
        }
        match errors.len() {
            0 => Ok(()),
            _ => bail!(
                "test bed teardown: {}",
                errors
                    .iter()
                    .map(|e| format!("{e:#}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

/// Tears down every live node of this process (for the signal handler).
pub(crate) fn teardown_all() {
    let live: Vec<_> = lock(&LIVE).drain(..).filter_map(|w| w.upgrade()).collect();
    for made in live {
        if let Err(e) = lock(&made).teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A test node. Dropping it tears everything down (see `teardown`).
pub struct Node {
    id: NodeId,
    ip: Ipv4Addr,
    block: u8,
    cgroup: PathBuf,
    pods: Vec<Pod>,
    made: Arc<Mutex<Made>>,
}

impl Node {
    /// Makes a node: first removes leftovers of dead runs (`cleanup_stale`),
    /// then the cgroup `<cgroup2 root>/sidetrack-bed-<tag>-<pid>-<seq>`, then
    /// claims a free /24 of 198.18.0.0/16, puts its `.1` on `lo` as a /32 and
    /// turns on IPv4 forwarding. Needs root.
    pub fn new(tag: &str) -> Result<Node> {
        names::check_label("node tag", tag)?;
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "the netns test bed makes namespaces, veths and cgroups: run it as root"
        );
        cleanup_stale().context("remove the leftovers of earlier test bed runs")?;
        let id = NodeId {
            pid: std::process::id(),
            seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
        };
        let made = Arc::new(Mutex::new(Made::default()));
        lock(&LIVE).push(Arc::downgrade(&made));
        let mut node = Node {
            id,
            ip: Ipv4Addr::UNSPECIFIED,
            block: 0,
            cgroup: cgroup::cgroup2_root()?.join(id.cgroup(tag)),
            pods: Vec::new(),
            made,
        };
        // From here on, an early return drops `node`, which undoes what is recorded.
        lock(&node.made).cgroup = Some(node.cgroup.clone());
        cgroup::create(&node.cgroup)?;

        let label = id.lo_label()?;
        {
            let _lock = BedLock::take()?;
            node.block = addr::free_block(id)?;
            node.ip = addr::node_ip(node.block);
            lock(&node.made).lo = Some((node.ip, label.clone()));
            let cidr = format!("{}/32", node.ip);
            ip(&["addr", "add", &cidr, "dev", "lo", "label", &label])?;
            sysctl::claim()?;
        }
        super::run::log(format_args!(
            "node {} ({}) is up, cgroup {}",
            node.ip,
            label,
            node.cgroup.display()
        ));
        Ok(node)
    }

    /// Adds a pod: a network namespace `stb<pid>n<seq>-<name>` whose `eth0` is
    /// one end of a veth pair (the other end, in the root namespace, is named
    /// `st<pid>n<seq>p<index>` in hex), with the next address of the node's
    /// /24 as a /32, `lo` up, a default route to the node, and a cgroup
    /// `<node cgroup>/<name>`.
    pub fn add_pod(&mut self, name: &str) -> Result<Pod> {
        names::check_label("pod name", name)?;
        ensure!(
            self.pods.iter().all(|p| p.name() != name),
            "node already has a pod named {name}"
        );
        let index = self.pods.len();
        ensure!(
            index < addr::MAX_PODS,
            "a node has room for {} pods",
            addr::MAX_PODS
        );
        let pod = Pod::new(
            name,
            addr::pod_ip(self.block, index),
            self.id.netns(name),
            self.id.host_veth(index)?,
            self.cgroup.join(name),
        );
        let (ns, veth, pod_ip) = (pod.netns_name(), pod.host_veth(), pod.ip().to_string());
        lock(&self.made)
            .links
            .push((ns.to_owned(), veth.to_owned()));

        cgroup::create(pod.cgroup_path())?;
        netns::add(ns)?;
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["link", "set", veth, "up"])?;
        let mac = netns::mac(veth)?;
        ip(&[
            "-n",
            ns,
            "neigh",
            "replace",
            GATEWAY,
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n", ns, "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink",
        ])?;
        let node_ip = self.ip.to_string();
        ip(&[
            "route",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            veth,
            "src",
            &node_ip,
        ])?;
        super::run::log(format_args!("pod {name} {pod_ip} is up in {ns}"));
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// A CPU cgroup of its own for `name` (a pod, or the proxy), as
    /// Kubernetes gives every pod one: `<v1 cpu hierarchy>/<the node's
    /// cgroup name>/<name>`, which goes with the node. Processes join it by
    /// pid, beside their cgroup v2 one (a hybrid host keeps the two apart).
    /// Only where the cpu controller has a v1 hierarchy, as on these VMs.
    pub fn cpu_cgroup(&self, name: &str) -> Result<PathBuf> {
        names::check_label("cpu cgroup", name)?;
        let root = cgroup::cpu_v1_root()
            .context("no v1 cpu hierarchy at /sys/fs/cgroup/cpu (a pure cgroup v2 host)")?;
        let dir = root.join(self.cgroup.file_name().context("the node's cgroup name")?);
        {
            let mut made = lock(&self.made);
            if made.cpu_v1.is_none() {
                made.cpu_v1 = Some(dir.clone());
                cgroup::create(&dir)?;
            }
        }
        let path = dir.join(name);
        cgroup::create(&path)?;
        Ok(path)
    }

    /// The node's address (on `lo`): where the proxy listens and where pods
    /// reach the node.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The node's cgroup: the parent of every pod's cgroup, so the place to
    /// attach programs that must see all pods.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Finds a pod by name.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name() == name)
    }

    /// Tears the node down now and reports what failed; also done by `Drop`
    /// (which can only print the failures). Doing it twice is harmless.
    pub fn teardown(&self) -> Result<()> {
        lock(&self.made).teardown()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
        lock(&LIVE).retain(|w| w.strong_count() > 0 && !w.ptr_eq(&Arc::downgrade(&self.made)));
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("ip", &self.ip)
            .field("cgroup", &self.cgroup)
            .field("pods", &self.pods)
            .finish()
    }
}
