//! Binding: following a path through the routing dtab (base ++ local) until
//! it reaches bound names, with Finagle's rules.
//!
//! - A lookup gathers the matching dentries last to first; their rewrites
//!   (the dentry's tree with the unmatched rest of the path appended to every
//!   leaf) form an alternation, and each leaf is bound again the same way.
//! - When nothing matches (or the one match rewrites to `~`), the namers
//!   decide: `/$/...` built-ins, `/#/...` configured namers, else neg.
//! - Alternation binds its branches lazily, in order: neg falls through to
//!   the next, fail stops everything, anything else (empty included) is the
//!   result. A later branch is not bound at all once one has answered.
//! - Union binds every branch; neg and fail branches drop out, all dropped is
//!   neg; a branch that errs drops out when another succeeds.
//! - Every lookup goes one level deeper; a tree reached below depth 100 is an
//!   error naming the limit. Errors propagate through alternations.
//!
//! The result holds no alternations: only leaves, unions of two or more
//! branches, and (alone) neg, fail or empty.

use std::fmt;

use super::entry::Dtab;
use super::lookup::{DtabLookup, Layered, Scan};
use super::namer::{Bound, NamerError, NamerSet, lookup_system};
use super::path::Path;
use super::tree::{NameTree, Weighted};
use super::trie::CompiledDtab;

/// The depth limit, Finagle's: a tree reached after more lookups is an error.
pub const MAX_DEPTH: usize = 100;

/// A guard Finagle lacks: the most lookups one binding may make. Unions
/// multiply work (`/a=>/b&/b;/b=>/c&/c;...` doubles it at every step), and a
/// request's own `l5d-dtab` must not be able to stall the proxy with that.
pub const MAX_LOOKUPS: usize = 1_000;

/// The other guard: how deeply binding may recurse, counting each lookup and
/// each alternation or union entered. A plain chain of 100 rewrites uses 200;
/// the bound keeps the stack of a worker thread safe from nested trees.
pub const MAX_NESTED_STEPS: usize = 400;

/// Why a path could not be bound.
#[derive(Clone, Debug, PartialEq)]
pub enum BindError {
    /// Delegation went deeper than `MAX_DEPTH` (a loop, usually).
    DepthExceeded { path: Path },
    /// Binding made more than `MAX_LOOKUPS` lookups or more than
    /// `MAX_NESTED_STEPS` nested steps.
    TooComplex { path: Path },
    /// A namer failed, or a `/$/...` name was malformed. `pending`: the
    /// namer does not know yet (see [`NamerError`]); binding again later
    /// may succeed.
    Namer {
        path: Path,
        message: String,
        pending: bool,
    },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::DepthExceeded { path } => write!(
                f,
                "delegation exceeded the maximum depth of {MAX_DEPTH} while binding {path} (is there a loop?)"
            ),
            BindError::TooComplex { path } => write!(
                f,
                "binding went past the limits of {MAX_LOOKUPS} lookups or {MAX_NESTED_STEPS} nested steps (reached {path})"
            ),
            BindError::Namer { path, message, .. } => {
                write!(f, "error binding {path}: {message}")
            }
        }
    }
}

impl std::error::Error for BindError {}

impl BindError {
    /// Whether a namer has not synced yet, rather than failed.
    pub fn is_pending(&self) -> bool {
        matches!(self, BindError::Namer { pending: true, .. })
    }
}

pub type BindResult = Result<NameTree<Bound>, BindError>;

/// Binds `path` through `base` ++ `local`. This is the routing entry point:
/// the base dtab is compiled once, the local one (a request's override) is
/// consulted on top without rebuilding anything.
pub fn bind(base: &CompiledDtab, local: &Dtab, path: &Path, namers: &dyn NamerSet) -> BindResult {
    Binder::new(&Layered::new(base, local), namers).path(path.clone(), 0)
}

/// The same as [`bind`] by a plain last-to-first scan of `base` ++ `local`:
/// the reference the trie is tested and measured against.
pub fn bind_reference(base: &Dtab, local: &Dtab, path: &Path, namers: &dyn NamerSet) -> BindResult {
    Binder::new(&Scan::new(base, local), namers).path(path.clone(), 0)
}

/// A lookup in the namers: built-ins for `/$/...`, configured ones else.
pub(crate) fn lookup_namers(
    path: &Path,
    namers: &dyn NamerSet,
) -> Result<NameTree<Bound>, NamerError> {
    if path.get(0) == Some(b"$") {
        lookup_system(path)
    } else {
        namers.lookup(path)
    }
}

/// Whether a lookup's matches leave the path to the namers: none at all, or
/// a single dentry rewriting to `~` (Finagle compares the lookup's result
/// with neg, and that is what such a lookup yields).
pub(crate) fn goes_to_namers(lookup: &impl DtabLookup, matches: &[u32]) -> bool {
    match matches {
        [] => true,
        [only] => lookup.dentry(*only).dst == NameTree::Neg,
        _ => false,
    }
}

/// What one binding (or explanation) may spend: the depth limit is
/// Finagle's, the lookup and nesting limits are ours (a request's own
/// `l5d-dtab` must not be able to stall the proxy). Binding and `delegate`
/// count the same way, so they agree on what is too deep or too complex.
#[derive(Default)]
pub(crate) struct Budget {
    lookups: usize,
    nested: usize,
}

impl Budget {
    /// Before looking `path` up at `depth`: one lookup more, one level of
    /// nesting more (until [`Budget::leave`]).
    pub(crate) fn enter_lookup(&mut self, path: &Path, depth: usize) -> Result<(), BindError> {
        if depth > MAX_DEPTH {
            return Err(BindError::DepthExceeded { path: path.clone() });
        }
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS || self.nested >= MAX_NESTED_STEPS {
            return Err(BindError::TooComplex { path: path.clone() });
        }
        self.nested += 1;
        Ok(())
    }

    /// Before a step into a rewrite's tree, reached from `at`: one level of
    /// nesting more (until [`Budget::leave`]).
    pub(crate) fn enter_step(&mut self, at: &Path) -> Result<(), BindError> {
        if self.nested >= MAX_NESTED_STEPS {
            return Err(BindError::TooComplex { path: at.clone() });
        }
        self.nested += 1;
        Ok(())
    }

    /// Ends what the matching `enter_*` began.
    pub(crate) fn leave(&mut self) {
        self.nested -= 1;
    }
}

struct Binder<'a, L> {
    lookup: &'a L,
    namers: &'a dyn NamerSet,
    /// A stack of match lists: each lookup pushes its matches and pops them
    /// when done, so one buffer serves the whole recursion.
    matches: Vec<u32>,
    budget: Budget,
}

impl<'a, L: DtabLookup> Binder<'a, L> {
    fn new(lookup: &'a L, namers: &'a dyn NamerSet) -> Binder<'a, L> {
        Binder {
            lookup,
            namers,
            matches: Vec::new(),
            budget: Budget::default(),
        }
    }

    /// Binds the leaf `path` found at `depth`: look it up, bind the result
    /// one level deeper.
    fn path(&mut self, path: Path, depth: usize) -> BindResult {
        self.budget.enter_lookup(&path, depth)?;
        let result = self.lookup_and_bind(path, depth);
        self.budget.leave();
        result
    }

    fn lookup_and_bind(&mut self, path: Path, depth: usize) -> BindResult {
        let lookup = self.lookup;
        let start = self.matches.len();
        lookup.matches(&path, &mut self.matches);
        let end = self.matches.len();

        if goes_to_namers(lookup, &self.matches[start..end]) {
            self.matches.truncate(start);
            let tree = lookup_namers(&path, self.namers).map_err(|e| BindError::Namer {
                path: path.clone(),
                message: e.message,
                pending: e.pending,
            })?;
            if depth + 1 > MAX_DEPTH {
                return Err(BindError::DepthExceeded { path });
            }
            return Ok(settle(tree));
        }

        let result = self.rewrites(&path, start, end, depth + 1);
        self.matches.truncate(start);
        result
    }

    /// The alternation of the rewrites by matches `start..end`, bound lazily.
    fn rewrites(&mut self, path: &Path, start: usize, end: usize, depth: usize) -> BindResult {
        if depth > MAX_DEPTH {
            return Err(BindError::DepthExceeded { path: path.clone() });
        }
        let lookup = self.lookup;
        for k in start..end {
            let dentry = lookup.dentry(self.matches[k]);
            let suffix = path.skip(dentry.prefix.len());
            match self.tree(&dentry.dst, path, &suffix, depth)? {
                NameTree::Neg => continue,
                result => return Ok(result),
            }
        }
        Ok(NameTree::Neg)
    }

    /// Binds a rewrite of `at` whose leaves are to be followed by `suffix`.
    fn tree(
        &mut self,
        tree: &NameTree<Path>,
        at: &Path,
        suffix: &Path,
        depth: usize,
    ) -> BindResult {
        self.budget.enter_step(at)?;
        let result = self.tree_inner(tree, at, suffix, depth);
        self.budget.leave();
        result
    }

    fn tree_inner(
        &mut self,
        tree: &NameTree<Path>,
        at: &Path,
        suffix: &Path,
        depth: usize,
    ) -> BindResult {
        match tree {
            NameTree::Leaf(p) => self.path(p.concat(suffix), depth),
            NameTree::Neg => Ok(NameTree::Neg),
            NameTree::Fail => Ok(NameTree::Fail),
            NameTree::Empty => Ok(NameTree::Empty),
            NameTree::Alt(ts) => {
                for t in ts {
                    match self.tree(t, at, suffix, depth)? {
                        NameTree::Neg => continue,
                        result => return Ok(result),
                    }
                }
                Ok(NameTree::Neg)
            }
            NameTree::Union(ws) if ws.len() == 1 => self.tree(&ws[0].tree, at, suffix, depth),
            NameTree::Union(ws) => {
                let mut oks = Vec::with_capacity(ws.len());
                let mut first_err = None;
                for w in ws {
                    match self.tree(&w.tree, at, suffix, depth) {
                        Ok(t) => oks.push(Weighted::new(w.weight, t)),
                        Err(e @ BindError::TooComplex { .. }) => return Err(e),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                match first_err {
                    Some(e) if oks.is_empty() => Err(e),
                    _ => Ok(NameTree::Union(oks).simplified()),
                }
            }
        }
    }
}

/// Applies binding's rules to a tree a namer returned, whose leaves are
/// already bound: alternations take their first answer, unions drop neg and
/// fail branches.
fn settle(tree: NameTree<Bound>) -> NameTree<Bound> {
    match tree {
        NameTree::Alt(ts) => {
            for t in ts {
                match settle(t) {
                    NameTree::Neg => continue,
                    result => return result,
                }
            }
            NameTree::Neg
        }
        NameTree::Union(mut ws) if ws.len() == 1 => {
            ws.pop().map_or(NameTree::Neg, |w| settle(w.tree))
        }
        NameTree::Union(ws) => NameTree::Union(
            ws.into_iter()
                .map(|w| Weighted::new(w.weight, settle(w.tree)))
                .collect(),
        )
        .simplified(),
        other => other,
    }
}
