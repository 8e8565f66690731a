//! The parts of the proxy's router that the settings read: the override
//! policy (`overrides:`), its signing keys and the routing rules
//! (`rules:`). Pure like the rest; the router itself (caches, namers) is
//! not needed. When config.rs reads another part of `route`, include it
//! here.

#[allow(dead_code, unused_imports)]
#[path = "../../../src/route/overrides.rs"]
pub mod overrides;

#[allow(dead_code, unused_imports)]
#[path = "../../../src/route/rules.rs"]
pub mod rules;

#[allow(dead_code, unused_imports)]
#[path = "../../../src/route/signing.rs"]
pub mod signing;

pub use overrides::OverridePolicy;
pub use rules::Rules;
