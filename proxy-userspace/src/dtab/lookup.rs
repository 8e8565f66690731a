//! Finding the dentries that match a path in the routing dtab, base ++ local,
//! two ways: through the compiled trie plus a scan of the few local entries
//! (what the proxy uses), and by a plain last-to-first scan of both (the
//! reference that defines the answer, used by tests and the benchmark).
//!
//! Dentries are numbered across the routing dtab: base entries first, then
//! local ones. Matches come out in descending number, which is the order
//! their rewrites are tried.

use super::entry::{Dentry, Dtab};
use super::path::Path;
use super::trie::CompiledDtab;

/// The dentries of a routing dtab, and which of them match a path.
pub(crate) trait DtabLookup {
    /// Appends the numbers of the dentries matching `path`, last first.
    fn matches(&self, path: &Path, out: &mut Vec<u32>);
    fn dentry(&self, i: u32) -> &Dentry;
}

/// The compiled base dtab with a per-request local dtab on top.
pub(crate) struct Layered<'a> {
    base: &'a CompiledDtab,
    local: &'a Dtab,
    base_len: u32,
}

impl<'a> Layered<'a> {
    pub(crate) fn new(base: &'a CompiledDtab, local: &'a Dtab) -> Layered<'a> {
        Layered {
            base,
            local,
            base_len: base.dtab().len() as u32,
        }
    }
}

impl DtabLookup for Layered<'_> {
    fn matches(&self, path: &Path, out: &mut Vec<u32>) {
        // Local entries come later in the routing dtab, so they come first.
        let local = self.local.dentries();
        for i in (0..local.len()).rev() {
            if local[i].prefix.matches(path) {
                out.push(self.base_len + i as u32);
            }
        }
        let from = out.len();
        self.base.collect_matches(path, out);
        out[from..].sort_unstable_by(|a, b| b.cmp(a));
    }

    fn dentry(&self, i: u32) -> &Dentry {
        match i.checked_sub(self.base_len) {
            Some(j) => &self.local.dentries()[j as usize],
            None => self.base.dentry(i as usize),
        }
    }
}

/// The reference: a last-to-first scan of base ++ local.
pub(crate) struct Scan<'a> {
    base: &'a [Dentry],
    local: &'a [Dentry],
}

impl<'a> Scan<'a> {
    pub(crate) fn new(base: &'a Dtab, local: &'a Dtab) -> Scan<'a> {
        Scan {
            base: base.dentries(),
            local: local.dentries(),
        }
    }
}

impl DtabLookup for Scan<'_> {
    fn matches(&self, path: &Path, out: &mut Vec<u32>) {
        let n = self.base.len() + self.local.len();
        for i in (0..n).rev() {
            if self.dentry(i as u32).prefix.matches(path) {
                out.push(i as u32);
            }
        }
    }

    fn dentry(&self, i: u32) -> &Dentry {
        let i = i as usize;
        match i.checked_sub(self.base.len()) {
            Some(j) => &self.local[j],
            None => &self.base[i],
        }
    }
}
