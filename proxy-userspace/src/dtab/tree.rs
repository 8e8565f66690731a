//! Name trees: the right-hand side of a dentry and the result of binding.
//!
//! `Alt` is fail-over (the first branch that is not neg wins; fail stops
//! everything; empty is a result), `Union` is a weighted load-balancing set
//! (neg and fail branches drop out). The same type holds unbound trees
//! (`NameTree<Path>`) and bound ones (`NameTree<Bound>`).

use std::hash::{Hash, Hasher};

/// The weight of a union branch written without one.
pub const DEFAULT_WEIGHT: f64 = 1.0;

/// A name tree over leaves of type `T`.
#[derive(Clone, Debug, PartialEq)]
pub enum NameTree<T> {
    /// A name.
    Leaf(T),
    /// Fail-over: `a | b`.
    Alt(Vec<NameTree<T>>),
    /// Weighted union: `a & 2 * b`.
    Union(Vec<Weighted<T>>),
    /// No such name here: `~`.
    Neg,
    /// A name that exists and must fail: `!`.
    Fail,
    /// A name that exists and has no members: `$`.
    Empty,
}

/// One branch of a union.
#[derive(Clone, Debug, PartialEq)]
pub struct Weighted<T> {
    pub weight: f64,
    pub tree: NameTree<T>,
}

impl<T> Weighted<T> {
    pub fn new(weight: f64, tree: NameTree<T>) -> Weighted<T> {
        Weighted { weight, tree }
    }
}

/// The outcome of evaluating a tree without binding: its set of leaves.
#[derive(Clone, Debug, PartialEq)]
pub enum Eval<T> {
    Neg,
    Fail,
    /// The leaves reached, in tree order (possibly none, for `$`).
    Leaves(Vec<T>),
}

impl<T> NameTree<T> {
    /// The same tree with every leaf replaced by `f(leaf)`.
    pub fn map<U>(&self, f: &mut impl FnMut(&T) -> U) -> NameTree<U> {
        match self {
            NameTree::Leaf(t) => NameTree::Leaf(f(t)),
            NameTree::Alt(ts) => NameTree::Alt(ts.iter().map(|t| t.map(f)).collect()),
            NameTree::Union(ws) => NameTree::Union(
                ws.iter()
                    .map(|w| Weighted::new(w.weight, w.tree.map(f)))
                    .collect(),
            ),
            NameTree::Neg => NameTree::Neg,
            NameTree::Fail => NameTree::Fail,
            NameTree::Empty => NameTree::Empty,
        }
    }

    /// Calls `f` on every leaf, in tree order.
    pub fn for_each_leaf<'a>(&'a self, f: &mut impl FnMut(&'a T)) {
        match self {
            NameTree::Leaf(t) => f(t),
            NameTree::Alt(ts) => ts.iter().for_each(|t| t.for_each_leaf(f)),
            NameTree::Union(ws) => ws.iter().for_each(|w| w.tree.for_each_leaf(f)),
            NameTree::Neg | NameTree::Fail | NameTree::Empty => {}
        }
    }

    /// Evaluates the tree as a set of leaves, ignoring weights: an alternation
    /// takes its first branch that is not neg (fail stops it), a union
    /// gathers the leaves of its branches that are neither neg nor fail (all
    /// such is neg), `$` is the empty set.
    pub fn eval(&self) -> Eval<&T> {
        match self {
            NameTree::Leaf(t) => Eval::Leaves(vec![t]),
            NameTree::Neg => Eval::Neg,
            NameTree::Fail => Eval::Fail,
            NameTree::Empty => Eval::Leaves(Vec::new()),
            NameTree::Alt(ts) => {
                for t in ts {
                    match t.eval() {
                        Eval::Neg => continue,
                        other => return other,
                    }
                }
                Eval::Neg
            }
            NameTree::Union(ws) => {
                let mut leaves = None::<Vec<&T>>;
                for w in ws {
                    if let Eval::Leaves(more) = w.tree.eval() {
                        leaves.get_or_insert_with(Vec::new).extend(more);
                    }
                }
                leaves.map_or(Eval::Neg, Eval::Leaves)
            }
        }
    }

    /// An evaluation-equivalent tree with neg branches of alternations and
    /// neg or fail branches of unions removed, branches after a fail cut off,
    /// and one-branch alternations and unions replaced by their branch (as
    /// Finagle does, a one-branch union is its branch even when that fails).
    pub fn simplified(self) -> NameTree<T> {
        match self {
            NameTree::Alt(ts) => {
                let mut kept = Vec::with_capacity(ts.len());
                for t in ts {
                    match t.simplified() {
                        NameTree::Neg => {}
                        NameTree::Fail => {
                            kept.push(NameTree::Fail);
                            break;
                        }
                        t => kept.push(t),
                    }
                }
                one_or(kept, NameTree::Alt)
            }
            NameTree::Union(mut ws) if ws.len() == 1 => {
                ws.pop().map_or(NameTree::Neg, |w| w.tree.simplified())
            }
            NameTree::Union(ws) => {
                let kept: Vec<_> = ws
                    .into_iter()
                    .filter_map(|w| match w.tree.simplified() {
                        NameTree::Neg | NameTree::Fail => None,
                        t => Some(Weighted::new(w.weight, t)),
                    })
                    .collect();
                match kept.len() {
                    0 => NameTree::Neg,
                    1 => kept.into_iter().next().map_or(NameTree::Neg, |w| w.tree),
                    _ => NameTree::Union(kept),
                }
            }
            other => other,
        }
    }

    /// Heap bytes owned by the tree's nodes, plus `leaf(t)` for each leaf.
    pub(crate) fn heap_bytes(&self, leaf: &impl Fn(&T) -> usize) -> usize {
        match self {
            NameTree::Leaf(t) => leaf(t),
            NameTree::Alt(ts) => {
                ts.capacity() * std::mem::size_of::<NameTree<T>>()
                    + ts.iter().map(|t| t.heap_bytes(leaf)).sum::<usize>()
            }
            NameTree::Union(ws) => {
                ws.capacity() * std::mem::size_of::<Weighted<T>>()
                    + ws.iter().map(|w| w.tree.heap_bytes(leaf)).sum::<usize>()
            }
            NameTree::Neg | NameTree::Fail | NameTree::Empty => 0,
        }
    }
}

fn one_or<T>(mut kept: Vec<NameTree<T>>, many: fn(Vec<NameTree<T>>) -> NameTree<T>) -> NameTree<T> {
    match kept.len() {
        0 => NameTree::Neg,
        1 => kept.pop().unwrap_or(NameTree::Neg),
        _ => many(kept),
    }
}

// Weights are finite (the parser rejects anything else), so equality on them
// is an equivalence and hashing their bits is consistent with it.
impl<T: Eq> Eq for NameTree<T> {}
impl<T: Eq> Eq for Weighted<T> {}

impl<T: Hash> Hash for NameTree<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            NameTree::Leaf(t) => t.hash(state),
            NameTree::Alt(ts) => ts.hash(state),
            NameTree::Union(ws) => ws.hash(state),
            NameTree::Neg | NameTree::Fail | NameTree::Empty => {}
        }
    }
}

impl<T: Hash> Hash for Weighted<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // +0.0 so that -0.0 and 0.0, which compare equal, hash alike.
        (self.weight + 0.0).to_bits().hash(state);
        self.tree.hash(state);
    }
}
