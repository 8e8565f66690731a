//! Delegation tables (dtabs): the routing language of Finagle and Linkerd 1,
//! with their semantics exactly, and the machinery to use them per request.
//!
//! Pure: no I/O, no async. A request's logical name (`/svc/<host>`) is bound
//! against the routing dtab, base ++ `l5d-ctx-dtab` ++ `l5d-dtab`:
//!
//! ```
//! use sidetrack::dtab::{bind, CompiledDtab, Dtab, Namers, NameTree, Path};
//!
//! let base = CompiledDtab::new(&Dtab::parse("/svc => /$/inet/127.0.0.1/8080").unwrap());
//! let local = Dtab::parse("/svc/web => /$/inet/127.0.0.1/9090").unwrap();
//! let bound = bind(&base, &local, &Path::read("/svc/web/x").unwrap(), &Namers::default()).unwrap();
//! let NameTree::Leaf(b) = bound else { panic!() };
//! assert_eq!(b.endpoints.as_slice()[0].addr.port(), 9090);
//! assert_eq!(b.residual.to_string(), "/x");
//! ```
//!
//! The files follow the pipeline: `path` (names), `tree` (name trees),
//! `entry` (dentries, dtabs, the reference lookup), `parse` and `show` (the
//! text form), `trie` (the compiled base dtab), `lookup` (base ++ local),
//! `namer` (bound names, `/$/...`, the `Namer` trait), `bind`, `choose`
//! (picking a destination), `delegate` (explanation trees) and `cache`.
//! docs/dtab.md describes the whole.

mod bind;
mod cache;
mod choose;
mod delegate;
mod entry;
mod lookup;
mod namer;
mod parse;
mod path;
#[cfg(test)]
mod proptests;
mod show;
mod tree;
mod trie;

pub use bind::{
    BindError, BindResult, MAX_DEPTH, MAX_LOOKUPS, MAX_NESTED_STEPS, bind, bind_reference,
};
pub use cache::{BindCache, CacheStats, ClockCache};
pub use choose::{Choice, weight_share};
pub(crate) use choose::{splitmix, stable_hash};
pub use delegate::{
    AddrJson, AddressJson, BoundJson, DelegateTree, DentryJson, WeightedJson, delegate,
    delegate_reference,
};
pub use entry::{Dentry, Dtab};
pub use namer::{Bound, Endpoint, Endpoints, Namer, NamerBound, NamerError, NamerSet, Namers};
pub use parse::{MAX_NESTING, ParseError};
pub use path::{Elems, Path, Prefix, PrefixElem, is_label_byte};
pub use show::format_weight;
pub use tree::{DEFAULT_WEIGHT, Eval, NameTree, Weighted};
pub use trie::CompiledDtab;
