//! Sidetrack: a node-level transparent HTTP proxy that routes each request with
//! Linkerd-1-style delegation tables and takes its traffic from eBPF programs.
//!
//! The modules follow the path of a request (see docs/ARCHITECTURE.md):
//! `intercept` loads the eBPF programs that steer sockets; `proxy` accepts
//! and runs the HTTP/1.1 connection loop over `http` (pure framing);
//! `route` names a request and binds it with `dtab` (the pure routing
//! language) and `namer` (file namer, balancer); `observe` holds the
//! metrics they count into; `diff` compares a primary's responses with a
//! candidate's (pure); `admin` serves them and the delegator; `config` holds the settings; `cli` is the command line;
//! `logging` sets up `tracing`.

// Every `unsafe` block says, in a SAFETY comment, why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod diff;
pub mod dtab;
pub mod handover;
pub mod http;
pub mod intercept;
pub mod logging;
pub mod namer;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod route;
