//! The netns test bed: a Kubernetes node in miniature on this machine.
//!
//! A [`Node`] is the root network namespace plus a cgroup v2 subtree and an
//! address on `lo` (where the proxy listens). Each [`Pod`] is a network
//! namespace joined to the root namespace by a veth pair, with an address from
//! 198.18.0.0/16 and its own cgroup under the node's, so eBPF programs
//! attached to the node's cgroup see every pod's sockets.
//!
//! Routing is Calico's: the pod has its address as a /32 on `eth0` and
//! `default via 169.254.1.1 dev eth0 onlink`; the root namespace has a host
//! route `<pod>/32 dev <host veth> src <node>`. Pod to node, node to pod and
//! pod to pod (forwarded by the node) all work, and every pod's traffic
//! crosses the root namespace, as on a real node.
//!
//! Teardown always runs: `Drop` (also while unwinding from a panic), the
//! signal handler of [`teardown_on_signal`], and, for runs that were killed,
//! [`cleanup_stale`] (called by [`Node::new`]). Every name carries the pid of
//! the process that made it (see `names.rs`), which is how leftovers are told
//! from live nodes. Set `SIDETRACK_BED_VERBOSE=1` (or [`set_verbose`]) to see
//! every command.

mod addr;
mod cgroup;
mod cleanup;
mod lock;
mod names;
mod netns;
mod node;
mod pod;
mod run;
mod signals;
mod sysctl;

pub use addr::{POD_RANGE, SERVICE_RANGE, live_node_owners};
pub use cgroup::{cgroup2_root, cpu_v1_root, pids_v1_root};
pub use cleanup::cleanup_stale;
pub(crate) use lock::BedLock;
pub use node::Node;
pub use pod::Pod;
pub use run::set_verbose;
pub use signals::{at_signal, teardown_on_signal};
