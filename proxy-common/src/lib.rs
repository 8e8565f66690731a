//! The contract between Sidetrack's eBPF programs and its userspace.
//!
//! Everything here is `#[repr(C)]` plain data with no padding surprises, so the
//! kernel side (built for `bpfel-unknown-none`) and the userspace side agree on
//! every byte. Map names are constants so that neither side spells them twice.
#![no_std]

/// Name of the SOCKHASH that holds sockets eligible for `sk_msg` redirection,
/// keyed by [`SockKey`].
pub const MAP_SOCKHASH: &str = "SOCKHASH";
/// Name of the per-CPU array of `u64` counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Capacity of the SOCKHASH: two entries per proxied connection.
pub const SOCKHASH_CAPACITY: u32 = 65_536;

/// Program names as they appear in the object file.
pub const PROG_SOCKOPS: &str = "sidetrack_sockops";
pub const PROG_SK_MSG: &str = "sidetrack_sk_msg";

/// `AF_INET`, as `bpf_sock_ops.family` reports it.
pub const AF_INET: u32 = 2;

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
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 8] = [
        Counter::EstablishedActive,
        Counter::EstablishedPassive,
        Counter::SockhashAdded,
        Counter::SockhashAddFailed,
        Counter::MsgRedirected,
        Counter::BytesRedirected,
        Counter::MsgPassed,
        Counter::BytesPassed,
    ];

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
