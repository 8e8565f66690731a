//! The proxy's pure modules, compiled once for every fuzz target.
//!
//! Each is the proxy's own source file, included with `#[path]`: the fuzz
//! targets test exactly what the proxy runs, without building the rest of
//! it (tokio, hyper, aya, the eBPF object). They must keep depending on
//! nothing of ours but each other; `cargo xtask test` builds this crate, so
//! a module that starts to is noticed at once, and gets its dependency
//! included here when that is pure too.

#[allow(dead_code, unused_imports)]
#[path = "../../src/dtab/mod.rs"]
pub mod dtab;

#[allow(dead_code, unused_imports)]
#[path = "../../src/http/mod.rs"]
pub mod http;

#[allow(dead_code, unused_imports)]
#[path = "../../src/config.rs"]
pub mod config;

#[allow(dead_code, unused_imports)]
#[path = "../../src/policy/mod.rs"]
pub mod policy;

#[allow(dead_code, unused_imports)]
#[path = "../../src/diff/mod.rs"]
pub mod diff;
