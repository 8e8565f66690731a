//! The parts of the proxy's router that the settings read: the override
//! policy (`overrides:`) and its signing keys. Pure like the rest; the
//! router itself (caches, namers) is not needed.

#[allow(dead_code, unused_imports)]
#[path = "../../../src/route/overrides.rs"]
pub mod overrides;

#[allow(dead_code, unused_imports)]
#[path = "../../../src/route/signing.rs"]
pub mod signing;

pub use overrides::OverridePolicy;
