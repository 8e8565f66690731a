//! Dentries (`prefix => tree`) and dtabs (ordered lists of them), with the
//! plain last-to-first lookup that defines what a dtab means.
//!
//! That scan is the reference: the compiled trie in `trie.rs` must give the
//! same matches in the same order, and the tests hold it to that.

use std::sync::Arc;

use super::path::{Path, Prefix};
use super::tree::NameTree;

/// One delegation rule: paths starting with `prefix` are rewritten to `dst`,
/// with the rest of the path appended to every leaf of `dst`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dentry {
    pub prefix: Prefix,
    pub dst: NameTree<Path>,
}

impl Dentry {
    pub fn new(prefix: Prefix, dst: NameTree<Path>) -> Dentry {
        Dentry { prefix, dst }
    }

    /// Parses one dentry (`/a/*/b => /c | /d`).
    pub fn read(s: &str) -> Result<Dentry, super::ParseError> {
        super::parse::parse_dentry(s)
    }

    /// The rewrite of `path`, which this dentry's prefix must match.
    pub fn rewrite(&self, path: &Path) -> NameTree<Path> {
        let suffix = path.skip(self.prefix.len());
        self.dst.map(&mut |leaf: &Path| leaf.concat(&suffix))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.prefix.heap_bytes() + self.dst.heap_bytes(&|p: &Path| p.heap_bytes())
    }
}

/// A delegation table. Cheap to clone: the dentries are shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dtab {
    dentries: Arc<[Dentry]>,
}

impl Default for Dtab {
    fn default() -> Dtab {
        Dtab::empty()
    }
}

impl Dtab {
    pub fn new(dentries: Vec<Dentry>) -> Dtab {
        Dtab {
            dentries: dentries.into(),
        }
    }

    pub fn empty() -> Dtab {
        Dtab::new(Vec::new())
    }

    /// Parses a dtab: dentries separated by `;`, a trailing `;` allowed.
    pub fn parse(s: &str) -> Result<Dtab, super::ParseError> {
        super::parse::parse_dtab(s)
    }

    pub fn dentries(&self) -> &[Dentry] {
        &self.dentries
    }

    pub fn len(&self) -> usize {
        self.dentries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dentries.is_empty()
    }

    /// This dtab followed by `other` (whose entries then take precedence).
    pub fn concat(&self, other: &Dtab) -> Dtab {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        Dtab {
            dentries: self
                .dentries
                .iter()
                .chain(other.dentries.iter())
                .cloned()
                .collect(),
        }
    }

    /// Indices of the dentries whose prefix matches `path`, last to first:
    /// the order in which their rewrites are tried.
    pub fn matching_indices(&self, path: &Path) -> Vec<usize> {
        (0..self.dentries.len())
            .rev()
            .filter(|&i| self.dentries[i].prefix.matches(path))
            .collect()
    }

    /// One step of delegation: the alternation of the rewrites of every
    /// matching dentry, last match first; neg when nothing matches.
    pub fn lookup(&self, path: &Path) -> NameTree<Path> {
        rewrites(
            self.matching_indices(path)
                .into_iter()
                .map(|i| &self.dentries[i]),
            path,
        )
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.dentries.len() * std::mem::size_of::<Dentry>()
            + self.dentries.iter().map(Dentry::heap_bytes).sum::<usize>()
    }
}

/// The alternation of the rewrites of `path` by `matches`, in order.
pub(crate) fn rewrites<'a>(
    matches: impl Iterator<Item = &'a Dentry>,
    path: &Path,
) -> NameTree<Path> {
    let mut alts: Vec<_> = matches.map(|d| d.rewrite(path)).collect();
    match alts.len() {
        0 => NameTree::Neg,
        1 => alts.pop().unwrap_or(NameTree::Neg),
        _ => NameTree::Alt(alts),
    }
}
