//! Sidetrack: a node-level transparent HTTP proxy that routes each request with
//! Linkerd-1-style delegation tables and takes its traffic from eBPF programs.
//!
//! The modules follow the path of a request (see docs/ARCHITECTURE.md):
//! `dtab` is the pure routing language, `intercept` loads the eBPF programs
//! that steer sockets, `cli` is the command line, `logging` sets up `tracing`.

pub mod cli;
pub mod dtab;
pub mod intercept;
pub mod logging;
