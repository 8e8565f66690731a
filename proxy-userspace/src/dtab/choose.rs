//! Picking one destination from a bound tree: a weighted random choice at
//! each union per request, or a sticky one derived from a caller's key (the
//! same key takes the same branches while the tree stays the same), and the
//! share of requests each leaf receives.
//!
//! A union's branches are chosen in proportion to their weights; when the
//! weights sum to zero every branch is equally likely. An alternation (bound
//! trees have none, but a tree may be built by hand) takes its first branch
//! that does not come out neg.

use rand::Rng;

use super::tree::{Eval, NameTree, Weighted};

/// The part of the traffic one of `count` siblings gets: its weight over
/// their `total`, or an even part when the weights add up to nothing.
pub fn weight_share(weight: f64, total: f64, count: usize) -> f64 {
    if total > 0.0 {
        weight / total
    } else {
        1.0 / count as f64
    }
}

/// The outcome of choosing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice<'a, T> {
    Leaf(&'a T),
    /// The chosen branch exists but has no members (`$`).
    Empty,
    Neg,
    Fail,
}

impl<T> NameTree<T> {
    /// A weighted random choice.
    pub fn choose<R: Rng + ?Sized>(&self, rng: &mut R) -> Choice<'_, T> {
        self.choose_by(&mut || rng.random::<f64>())
    }

    /// A choice that depends only on `key` and the tree.
    pub fn choose_sticky(&self, key: &[u8]) -> Choice<'_, T> {
        let mut state = stable_hash(key);
        self.choose_by(&mut || {
            // 53 random bits as a number in [0, 1).
            (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64
        })
    }

    fn choose_by(&self, unit: &mut impl FnMut() -> f64) -> Choice<'_, T> {
        match self {
            NameTree::Leaf(t) => Choice::Leaf(t),
            NameTree::Neg => Choice::Neg,
            NameTree::Fail => Choice::Fail,
            NameTree::Empty => Choice::Empty,
            NameTree::Alt(ts) => {
                for t in ts {
                    match t.choose_by(unit) {
                        Choice::Neg => continue,
                        c => return c,
                    }
                }
                Choice::Neg
            }
            NameTree::Union(ws) if ws.is_empty() => Choice::Neg,
            NameTree::Union(ws) => ws[pick(ws, unit())].tree.choose_by(unit),
        }
    }

    /// Every leaf with the share of choices that reach it: the product, down
    /// its branch, of each union branch's weight over the sum of its
    /// siblings' weights. Shares of a bound tree sum to 1 unless some union
    /// branch is empty (`$`), whose share no leaf receives.
    pub fn leaf_shares(&self) -> Vec<(&T, f64)> {
        let mut out = Vec::new();
        self.shares(1.0, &mut out);
        out
    }

    fn shares<'a>(&'a self, share: f64, out: &mut Vec<(&'a T, f64)>) {
        match self {
            NameTree::Leaf(t) => out.push((t, share)),
            NameTree::Neg | NameTree::Fail | NameTree::Empty => {}
            NameTree::Alt(ts) => {
                if let Some(t) = ts.iter().find(|t| !matches!(t.eval(), Eval::Neg)) {
                    t.shares(share, out);
                }
            }
            NameTree::Union(ws) => {
                let total: f64 = ws.iter().map(|w| w.weight).sum();
                for w in ws {
                    w.tree
                        .shares(share * weight_share(w.weight, total, ws.len()), out);
                }
            }
        }
    }
}

/// The branch at `u` (in [0, 1)) of the cumulative weights.
fn pick<T>(ws: &[Weighted<T>], u: f64) -> usize {
    let total: f64 = ws.iter().map(|w| w.weight).sum();
    if total <= 0.0 || !total.is_finite() {
        return ((u * ws.len() as f64) as usize).min(ws.len() - 1);
    }
    let mut target = u * total;
    for (i, w) in ws.iter().enumerate() {
        if target < w.weight {
            return i;
        }
        target -= w.weight;
    }
    // Rounding can leave a sliver past the end: it belongs to the last
    // branch with any weight.
    ws.iter()
        .rposition(|w| w.weight > 0.0)
        .unwrap_or(ws.len() - 1)
}

/// FNV-1a: stable across processes and machines, so a key sticks to the
/// same branch on every proxy.
pub(crate) fn stable_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
