//! Interception: the eBPF programs that steer sockets to the proxy and let
//! same-node hops skip the TCP/IP stack.
//!
//! `ebpf` loads and attaches the programs (aya) and reads their maps;
//! `cgroup` finds and handles cgroup v2 directories; `bpf_log` forwards the
//! programs' aya-log lines to `tracing`.

mod bpf_log;
pub mod cgroup;
pub mod ebpf;

pub use ebpf::{Counters, EbpfDataPath, EbpfOptions, InterceptError};
