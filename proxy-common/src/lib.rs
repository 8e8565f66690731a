//! The contract between Sidetrack's eBPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]` plain data with no padding surprises, so the
//! kernel side (built for `bpfel-unknown-none`) and the userspace side agree on
//! every byte. Map names are constants so that neither side spells them twice.
#![no_std]

/// The version of this contract: the maps' names, key and value layouts
/// and what their values mean. A proxy hands its maps over on a restart
/// only to a successor built with the same version (see the handover in
/// docs/ARCHITECTURE.md); bump it with any change a running program and a
/// new userspace (or the reverse) could read differently.
pub const ABI: u32 = 3;

/// Name of the SOCKHASH that holds sockets eligible for `sk_msg` redirection,
/// keyed by [`SockKey`].
pub const MAP_SOCKHASH: &str = "SOCKHASH";
/// Name of the per-CPU array of `u64` counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Name of the one-slot array holding the [`InterceptConfig`].
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the LPM trie of intercepted IPv4 destinations: key
/// `(prefix_len, address in network byte order)`, value 1.
pub const MAP_CIDRS: &str = "CIDRS";
/// Name of the hash of port policies: key a port in host byte order, value a
/// [`PortPolicy`].
pub const MAP_PORTS: &str = "PORTS";
/// Name of the LRU hash from socket cookie to [`OrigDst`], written at
/// connect and moved to [`MAP_ORIG_DST`] at ESTABLISHED.
pub const MAP_COOKIE_DST: &str = "COOKIE_DST";
/// Name of the hash of destinations never intercepted, whatever the CIDRs
/// and ports say (a Service port marked so): key an [`OrigDst`], value 1.
pub const MAP_SKIP: &str = "SKIP";
/// Name of the LRU hash from the client socket's [`SockKey`] (client end
/// first) to its [`OrigDst`]; the proxy reads it at accept.
pub const MAP_ORIG_DST: &str = "ORIG_DST";
/// Name of the LRU hash from a [`SockKey`] in the SOCKHASH to that
/// socket's kernel address, which sk_msg reads its peer's queue through
/// (see [`QueueBound`]).
pub const MAP_SOCKETS: &str = "SOCKETS";

/// Capacity of the SOCKHASH: two entries per proxied connection.
pub const SOCKHASH_CAPACITY: u32 = 65_536;
/// Capacity of the original-destination maps (LRU: the oldest go first).
pub const ORIG_DST_CAPACITY: u32 = 65_536;
/// Capacity of the CIDR trie and of the port policy hash.
pub const CIDRS_CAPACITY: u32 = 1024;
pub const PORTS_CAPACITY: u32 = 1024;
/// Capacity of the hash of skipped destinations.
pub const SKIP_CAPACITY: u32 = 4096;

/// Program names as they appear in the object file.
pub const PROG_SOCKOPS: &str = "sidetrack_sockops";
pub const PROG_SK_MSG: &str = "sidetrack_sk_msg";
pub const PROG_CONNECT4: &str = "sidetrack_connect4";
pub const PROG_CONNECT6: &str = "sidetrack_connect6";

/// [`InterceptConfig::flags`]: interception is on. Without it, connect4
/// rewrites nothing and sockops files every IPv4 socket it sees.
pub const FLAG_ENABLED: u32 = 1;
/// [`InterceptConfig::flags`]: every port of an intercepted CIDR is
/// intercepted unless excluded; without it only ports marked
/// [`PortPolicy::Intercept`] are.
pub const FLAG_ALL_PORTS: u32 = 2;
/// [`InterceptConfig::flags`]: the proxy is shutting down. connect4
/// rewrites nothing more, while sockops goes on as with [`FLAG_ENABLED`]
/// (only the proxy's connections, and the original destinations of
/// connects rewritten before): clearing `FLAG_ENABLED` instead would put
/// every socket of the cgroup in the SOCKHASH for the rest of the drain.
pub const FLAG_NO_NEW: u32 = 4;

/// What userspace tells the programs; one slot of [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterceptConfig {
    /// The proxy's listener, where intercepted connects go: address in
    /// network byte order, port in host byte order. Sockets with this
    /// address at either end are the ones sockops files.
    pub proxy_ip4: u32,
    pub proxy_port: u32,
    /// The proxy marks its own sockets (SO_MARK) with this; connect4 leaves
    /// marked sockets alone, so the proxy's connects are never rewritten.
    pub mark: u32,
    pub flags: u32,
    /// How much sk_msg may queue on a receiver.
    pub queue: QueueBound,
    /// The host's network namespace (its cookie): connects made there
    /// (the node's own processes and host-network pods in the attach
    /// cgroup) are left alone. 0: no such check.
    pub host_netns: u64,
}

/// The bound on what `sk_msg` queues on a receiver.
///
/// A redirect puts a sender's bytes on the receiver's psock ingress queue
/// and never blocks the sender: the kernel checks neither the receiver's
/// `sk_rcvbuf` nor anything else per socket, so a receiver that does not
/// read would queue all a sender sends. Before each redirect `sk_msg`
/// reads how much the receiver holds there (`struct sk_psock`'s
/// `msg_tot_len`, through `struct sock`'s `sk_user_data`); from the larger
/// of its `sk_rcvbuf` and [`QueueBound::min_bytes`] on, messages go the
/// normal TCP way, where the receiver's window holds the sender back.
///
/// Order: the receiver reads its ingress queue before its TCP queue, so a
/// redirect must not overtake bytes sent the normal way and not yet read.
/// A message is redirected only when the receiver has read every byte the
/// sender put on the TCP path (the receiver's `copied_seq` equals the
/// sender's `write_seq`); until then it goes the normal way too.
///
/// A check that lets a message go leaves its sender a credit (socket
/// storage of the sk_msg program's own, not part of this contract): the
/// room left under `min_bytes`, which later messages use up without a
/// check until a message passes, which voids it.
///
/// The offsets differ between kernels; userspace finds them in the
/// kernel's BTF. All zero (the default): no bound.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueBound {
    /// Bytes a receiver may hold before messages to it pass, when its
    /// `sk_rcvbuf` is smaller; 0 turns the bound off.
    pub min_bytes: u32,
    /// Offsets in `struct sock` of `sk_rcvbuf` (an int) and `sk_user_data`
    /// (the psock, its low bits flags), in `struct sk_psock` of
    /// `msg_tot_len`, and in `struct tcp_sock` of `write_seq` and
    /// `copied_seq` (u32s).
    pub sk_rcvbuf: u32,
    pub sk_user_data: u32,
    pub psock_msg_tot_len: u32,
    pub tcp_write_seq: u32,
    pub tcp_copied_seq: u32,
}

/// Values of [`MAP_PORTS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPolicy {
    Intercept = 1,
    Exclude = 2,
}

/// Where an intercepted connect was going: address in network byte order,
/// port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDst {
    pub ip4: u32,
    pub port: u32,
}

/// `AF_INET`, as `bpf_sock_ops.family` reports it.
pub const AF_INET: u32 = 2;
/// `AF_INET6`: a dual-stack socket, whose connections to v4-mapped
/// addresses are IPv4 on the wire and handled as such.
pub const AF_INET6: u32 = 10;

/// One TCP socket's 4-tuple, as seen from that socket: `src` is its local end.
///
/// Addresses are kept in network byte order exactly as the kernel hands them
/// out in `bpf_sock_ops` and `sk_msg_md`; ports are in host byte order (the
/// kernel gives the local port in host order and the remote port in network
/// order, and both programs normalise to host order). The peer of a socket is
/// found under [`SockKey::peer`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub src_ip4: u32,
    pub dst_ip4: u32,
    pub src_port: u32,
    pub dst_port: u32,
}

impl SockKey {
    /// The key under which the other end of this connection is filed.
    #[inline(always)]
    pub const fn peer(&self) -> SockKey {
        SockKey {
            src_ip4: self.dst_ip4,
            dst_ip4: self.src_ip4,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Indices into the per-CPU counter array. Userspace sums the CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An active (connecting) IPv4 socket reached ESTABLISHED.
    EstablishedActive = 0,
    /// A passive (accepted) IPv4 socket reached ESTABLISHED.
    EstablishedPassive = 1,
    /// A socket was added to the SOCKHASH.
    SockhashAdded = 2,
    /// Adding a socket to the SOCKHASH failed (map full, or socket unsuitable).
    SockhashAddFailed = 3,
    /// An `sk_msg` was redirected into its peer's receive queue.
    MsgRedirected = 4,
    /// Bytes carried by redirected messages.
    BytesRedirected = 5,
    /// An `sk_msg` whose peer was not in the SOCKHASH went the normal way.
    MsgPassed = 6,
    /// Bytes carried by passed messages.
    BytesPassed = 7,
    /// A connect was rewritten to the proxy.
    ConnectIntercepted = 8,
    /// A connect by the proxy itself (marked) was left alone.
    ConnectOwn = 9,
    /// An original destination was filed under a 4-tuple for the proxy.
    OrigDstFiled = 10,
    /// A message went the normal way because its receiver's queue was full
    /// ([`QueueBound`]).
    PassedQueueFull = 11,
    /// A message went the normal way because bytes its sender had sent that
    /// way were not all read yet ([`QueueBound`]: it must not overtake
    /// them).
    PassedInOrder = 12,
    /// A connect from the host's network namespace (a host-network pod)
    /// was left alone.
    ConnectHostNetwork = 13,
    /// A connect to a destination in [`MAP_SKIP`] was left alone.
    ConnectSkipped = 14,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 15] = [
        Counter::EstablishedActive,
        Counter::EstablishedPassive,
        Counter::SockhashAdded,
        Counter::SockhashAddFailed,
        Counter::MsgRedirected,
        Counter::BytesRedirected,
        Counter::MsgPassed,
        Counter::BytesPassed,
        Counter::ConnectIntercepted,
        Counter::ConnectOwn,
        Counter::OrigDstFiled,
        Counter::PassedQueueFull,
        Counter::PassedInOrder,
        Counter::ConnectHostNetwork,
        Counter::ConnectSkipped,
    ];

    /// The metric this counter is exported as (`sidetrack_` and `_total`
    /// are added by the exporter).
    pub const fn metric_name(self) -> &'static str {
        match self {
            Counter::EstablishedActive => "ebpf_established_active",
            Counter::EstablishedPassive => "ebpf_established_passive",
            Counter::SockhashAdded => "ebpf_sockhash_added",
            Counter::SockhashAddFailed => "ebpf_sockhash_add_failed",
            Counter::MsgRedirected => "ebpf_msg_redirected",
            Counter::BytesRedirected => "ebpf_bytes_redirected",
            Counter::MsgPassed => "ebpf_msg_passed",
            Counter::BytesPassed => "ebpf_bytes_passed",
            Counter::ConnectIntercepted => "ebpf_connect_intercepted",
            Counter::ConnectOwn => "ebpf_connect_own",
            Counter::OrigDstFiled => "ebpf_orig_dst_filed",
            Counter::PassedQueueFull => "ebpf_msg_passed_queue_full",
            Counter::PassedInOrder => "ebpf_msg_passed_in_order",
            Counter::ConnectHostNetwork => "ebpf_connect_host_network",
            Counter::ConnectSkipped => "ebpf_connect_skipped",
        }
    }

    /// A stable snake_case name, used for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::EstablishedActive => "established_active",
            Counter::EstablishedPassive => "established_passive",
            Counter::SockhashAdded => "sockhash_added",
            Counter::SockhashAddFailed => "sockhash_add_failed",
            Counter::MsgRedirected => "msg_redirected",
            Counter::BytesRedirected => "bytes_redirected",
            Counter::MsgPassed => "msg_passed",
            Counter::BytesPassed => "bytes_passed",
            Counter::ConnectIntercepted => "connect_intercepted",
            Counter::ConnectOwn => "connect_own",
            Counter::OrigDstFiled => "orig_dst_filed",
            Counter::PassedQueueFull => "msg_passed_queue_full",
            Counter::PassedInOrder => "msg_passed_in_order",
            Counter::ConnectHostNetwork => "connect_host_network",
            Counter::ConnectSkipped => "connect_skipped",
        }
    }
}

/// Number of slots in the counter array.
pub const COUNTER_SLOTS: u32 = Counter::ALL.len() as u32;

#[cfg(feature = "user")]
mod user {
    // SAFETY: `SockKey` is `repr(C)`, `Copy`, made only of `u32`s, so every bit
    // pattern is valid and it has no padding.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above, `repr(C)` plain `u32`s.
    unsafe impl aya::Pod for super::InterceptConfig {}
    // SAFETY: as above, `repr(C)` plain `u32`s.
    unsafe impl aya::Pod for super::OrigDst {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_is_an_involution() {
        let k = SockKey {
            src_ip4: 1,
            dst_ip4: 2,
            src_port: 3,
            dst_port: 4,
        };
        assert_eq!(
            k.peer(),
            SockKey {
                src_ip4: 2,
                dst_ip4: 1,
                src_port: 4,
                dst_port: 3
            }
        );
        assert_eq!(k.peer().peer(), k);
    }

    #[test]
    fn counter_indices_are_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
