//! The base dtab compiled once into a trie over path labels, so that finding
//! the dentries matching a path costs what the path touches, not the size of
//! the dtab.
//!
//! Each trie node stands for a prefix; it lists the (indices of the) dentries
//! whose prefix ends there, and has children by label plus at most one `*`
//! child. Matching a path walks every branch the path can take (a label edge
//! and a `*` edge at each step) and gathers the dentries on the way; sorting
//! them by descending index gives exactly the last-to-first order of the
//! plain scan.
//!
//! Label edges of all nodes live in one open-addressing hash table keyed by
//! (parent node, label), with the label bytes in one arena: a few bytes per
//! edge and no allocation per node.

use super::entry::{Dentry, Dtab};
use super::path::{Path, PrefixElem};

const NONE: u32 = u32::MAX;

/// A base dtab compiled for lookups. Build it once (at start-up or reload)
/// and share it; it is immutable.
pub struct CompiledDtab {
    dtab: Dtab,
    nodes: Vec<Node>,
    /// Dentry indices ending at each node, node after node, ascending.
    terminals: Vec<u32>,
    edges: EdgeTable,
}

#[derive(Clone, Copy)]
struct Node {
    any: u32,
    terms_start: u32,
    terms_end: u32,
}

impl CompiledDtab {
    pub fn new(dtab: &Dtab) -> CompiledDtab {
        assert!(
            dtab.len() < NONE as usize,
            "a dtab has fewer than 2^32 - 1 entries"
        );
        let mut anys: Vec<u32> = vec![NONE];
        let mut terms: Vec<Vec<u32>> = vec![Vec::new()];
        let mut edges = EdgeTable::new();
        for (i, d) in dtab.dentries().iter().enumerate() {
            let mut node = 0u32;
            for elem in d.prefix.elems() {
                let next = anys.len() as u32;
                node = match elem {
                    PrefixElem::Any => {
                        if anys[node as usize] == NONE {
                            anys[node as usize] = next;
                        }
                        anys[node as usize]
                    }
                    PrefixElem::Label(l) => edges.get_or_insert(node, l, next),
                };
                if node == next {
                    anys.push(NONE);
                    terms.push(Vec::new());
                }
            }
            terms[node as usize].push(i as u32);
        }

        let mut terminals = Vec::with_capacity(dtab.len());
        let nodes = anys
            .iter()
            .zip(&terms)
            .map(|(&any, ts)| {
                let terms_start = terminals.len() as u32;
                terminals.extend_from_slice(ts);
                Node {
                    any,
                    terms_start,
                    terms_end: terminals.len() as u32,
                }
            })
            .collect();
        edges.shrink();
        CompiledDtab {
            dtab: dtab.clone(),
            nodes,
            terminals,
            edges,
        }
    }

    /// The dtab this was compiled from.
    pub fn dtab(&self) -> &Dtab {
        &self.dtab
    }

    pub fn dentry(&self, i: usize) -> &Dentry {
        &self.dtab.dentries()[i]
    }

    /// Appends the indices of the dentries matching `path`, in no particular
    /// order. (Binding sorts them together with the local dtab's matches.)
    pub(crate) fn collect_matches(&self, path: &Path, out: &mut Vec<u32>) {
        self.walk(0, path.elems(), out);
    }

    fn walk(&self, node: u32, mut rest: super::path::Elems<'_>, out: &mut Vec<u32>) {
        let n = self.nodes[node as usize];
        out.extend_from_slice(&self.terminals[n.terms_start as usize..n.terms_end as usize]);
        let Some(label) = rest.next() else { return };
        if let Some(child) = self.edges.get(node, label) {
            self.walk(child, rest.clone(), out);
        }
        if n.any != NONE {
            self.walk(n.any, rest, out);
        }
    }

    /// Indices of the dentries of base ++ `local` matching `path`, in the
    /// order their rewrites are tried (last to first). Local dentries are
    /// numbered after the base ones.
    pub fn matching_indices(&self, local: &Dtab, path: &Path) -> Vec<usize> {
        let mut out = Vec::new();
        super::lookup::Layered::new(self, local).matches(path, &mut out);
        out.into_iter().map(|i| i as usize).collect()
    }

    /// One step of delegation through base ++ `local`; the same tree as
    /// `self.dtab().concat(local).lookup(path)`.
    pub fn lookup(&self, local: &Dtab, path: &Path) -> NameTree<Path> {
        let layered = super::lookup::Layered::new(self, local);
        let mut idx = Vec::new();
        layered.matches(path, &mut idx);
        super::entry::rewrites(idx.iter().map(|&i| layered.dentry(i)), path)
    }

    /// Bytes of the trie structure alone (nodes, terminal lists, edge table
    /// and label arena), by an explicit walk of what it allocated.
    pub fn trie_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.terminals.capacity() * 4
            + self.edges.heap_bytes()
    }

    /// Bytes of the trie plus the dentries it keeps (prefixes and trees).
    pub fn total_bytes(&self) -> usize {
        self.trie_bytes() + self.dtab.heap_bytes()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

use super::lookup::DtabLookup as _;
use super::tree::NameTree;

/// (parent, label) -> child, open addressing with linear probing.
struct EdgeTable {
    /// Edge index + 1, or 0 for an empty slot. Length is a power of two.
    slots: Vec<u32>,
    edges: Vec<Edge>,
    labels: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Edge {
    parent: u32,
    child: u32,
    start: u32,
    len: u32,
}

impl EdgeTable {
    fn new() -> EdgeTable {
        EdgeTable {
            slots: vec![0; 16],
            edges: Vec::new(),
            labels: Vec::new(),
        }
    }

    fn label(&self, e: &Edge) -> &[u8] {
        &self.labels[e.start as usize..(e.start + e.len) as usize]
    }

    #[inline]
    fn slot_of(&self, parent: u32, label: &[u8]) -> usize {
        (hash(parent, label) as usize) & (self.slots.len() - 1)
    }

    #[inline]
    fn get(&self, parent: u32, label: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut s = self.slot_of(parent, label);
        loop {
            let e = self.slots[s];
            if e == 0 {
                return None;
            }
            let edge = &self.edges[(e - 1) as usize];
            if edge.parent == parent && self.label(edge) == label {
                return Some(edge.child);
            }
            s = (s + 1) & mask;
        }
    }

    /// The child of `parent` by `label`, added as `new` if missing.
    fn get_or_insert(&mut self, parent: u32, label: &[u8], new: u32) -> u32 {
        if let Some(child) = self.get(parent, label) {
            return child;
        }
        if (self.edges.len() + 1) * 2 > self.slots.len() {
            self.rehash(self.slots.len() * 2);
        }
        let start = u32::try_from(self.labels.len()).expect("label arena under 4 GiB");
        self.labels.extend_from_slice(label);
        self.edges.push(Edge {
            parent,
            child: new,
            start,
            len: label.len() as u32,
        });
        self.place(self.edges.len() - 1);
        new
    }

    fn place(&mut self, edge: usize) {
        let e = self.edges[edge];
        let mask = self.slots.len() - 1;
        let mut s = self.slot_of(e.parent, self.label(&e));
        while self.slots[s] != 0 {
            s = (s + 1) & mask;
        }
        self.slots[s] = edge as u32 + 1;
    }

    fn rehash(&mut self, size: usize) {
        self.slots = vec![0; size];
        for i in 0..self.edges.len() {
            self.place(i);
        }
    }

    fn shrink(&mut self) {
        self.edges.shrink_to_fit();
        self.labels.shrink_to_fit();
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 4
            + self.edges.capacity() * std::mem::size_of::<Edge>()
            + self.labels.capacity()
    }
}

/// FxHash-style mixing of the parent and the label, finished so that the low
/// bits (the slot) depend on every input bit. The table holds only the
/// operator's base dtab, so a request cannot choose what collides.
#[inline]
fn hash(parent: u32, label: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = (u64::from(parent) ^ ((label.len() as u64) << 32)).wrapping_mul(K);
    let mut chunks = label.chunks_exact(8);
    for c in &mut chunks {
        h = (h.rotate_left(26) ^ u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .wrapping_mul(K);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut buf = [0u8; 8];
        buf[..tail.len()].copy_from_slice(tail);
        h = (h.rotate_left(26) ^ u64::from_le_bytes(buf)).wrapping_mul(K);
    }
    h ^ (h >> 29) ^ (h >> 47)
}
