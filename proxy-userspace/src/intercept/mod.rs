//! Interception: the eBPF programs that steer sockets to the proxy.
