//! What decides a request's routing besides the dtab, as the operator
//! states it: the override policy (who may send `l5d-dtab` and what it may
//! say), signed overrides, the routing rules, and which requests are copied to
//! which other versions (shadowing). Pure: the settings types
//! and their parsed, checked forms, with no I/O but reading a key
//! directory when asked; the router applies them.

pub mod mirror;
pub mod overrides;
pub mod rules;
pub mod signing;

pub use mirror::Mirrors;
pub use overrides::{OnRefusal, OverridePolicy, Refusal, SourceVerdict};
pub use rules::Rules;
