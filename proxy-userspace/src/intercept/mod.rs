//! Interception: the eBPF programs that steer sockets to the proxy and let
//! same-node hops skip the TCP/IP stack.
//!
//! `ebpf` loads and attaches the programs (aya) and reads their maps;
//! `cgroup` finds and handles cgroup v2 directories; `bpf_log` forwards the
//! programs' aya-log lines to `tracing`; `btf` finds the kernel struct
//! offsets the programs read; `nft` is the iptables-mode
//! fallback. [`OrigDst`] is the one question the proxy asks of either mode:
//! where was this accepted connection going?

mod bpf_log;
mod btf;
pub mod cgroup;
pub mod ebpf;
pub mod nft;

use std::net::{SocketAddr, SocketAddrV4};

use tokio::net::TcpStream;

/// Where the proxy learns an intercepted connection's original destination.
pub enum OrigDst {
    /// The eBPF programs' map, keyed by the client's 4-tuple.
    Ebpf(ebpf::OrigDstMap),
    /// Conntrack, through getsockopt(SO_ORIGINAL_DST) (iptables mode).
    Conntrack,
}

impl OrigDst {
    /// The original destination of the accepted `stream` from `peer`
    /// (asked once per connection: in eBPF mode the answer is taken out of
    /// the map).
    ///
    /// `local` is the connection's own address when the caller knows it
    /// (a listener bound to one address accepts only on it), which saves a
    /// `getsockname` per connection; `None` asks the socket.
    pub fn lookup(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<SocketAddrV4> {
        let local = || local.or_else(|| stream.local_addr().ok());
        match self {
            OrigDst::Ebpf(map) => {
                let (SocketAddr::V4(peer), Some(SocketAddr::V4(local))) = (peer, local()) else {
                    return None;
                };
                map.take(peer, local)
            }
            // A connection made to the proxy itself was not redirected:
            // conntrack then names the proxy's own address, and treating
            // that as a destination would loop (a non-HTTP one tunnelled
            // back in, again and again).
            OrigDst::Conntrack => {
                nft::so_original_dst(stream).filter(|dst| local() != Some(SocketAddr::V4(*dst)))
            }
        }
    }
}

pub use ebpf::{Counters, EbpfDataPath, EbpfOptions, InterceptError, InterceptSpec, OrigDstMap};

/// Whether the process runs with effective uid 0, as both modes need.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
