//! Explanation trees: how a path delegates, with every branch shown (not
//! only the one binding takes), in the JSON shape of Linkerd 1's
//! `/delegator.json`, for the admin playground and `sidetrack dtab delegate`.
//!
//! Each node has a `type` (`delegate`, `alt`, `union`, `leaf`, `neg`,
//! `fail`, `empty`, `exception`), the `path` it concerns and the `dentry`
//! (`{prefix, dst}`) that led to it (absent at the root); leaves carry
//! `bound` (addresses, id and residual path), union branches a `weight`,
//! exceptions a `message`. Lookups are the ones binding makes (same matches,
//! same namers, same depth limit); unlike binding, every alternative is
//! explored, and a failure inside an alternation or union becomes an
//! `exception` node there instead of ending the whole explanation. The tree
//! is then simplified as Linkerd does: a delegation to a node for the same
//! path collapses into it, nested alternations of one path flatten.

use serde::Serialize;

use super::bind::{BindError, Budget, MAX_DEPTH, goes_to_namers, lookup_namers};
use super::entry::{Dentry, Dtab};
use super::lookup::{DtabLookup, Layered, Scan};
use super::namer::{Bound, NamerSet};
use super::path::Path;
use super::tree::NameTree;
use super::trie::CompiledDtab;

/// A node of an explanation tree, as serialized.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DelegateTree {
    Delegate {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
        delegate: Box<DelegateTree>,
    },
    Alt {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
        alt: Vec<DelegateTree>,
    },
    Union {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
        union: Vec<WeightedJson>,
    },
    Leaf {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
        bound: BoundJson,
    },
    Neg {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
    },
    Fail {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
    },
    Empty {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
    },
    Exception {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dentry: Option<DentryJson>,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DentryJson {
    pub prefix: String,
    pub dst: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightedJson {
    pub weight: f64,
    pub tree: DelegateTree,
}

/// A bound name: `addr` lists its addresses, `id` names it, `path` is the residual.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BoundJson {
    pub addr: AddrJson,
    pub id: String,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AddrJson {
    /// Always `bound`: this engine has no pending or failed address sets.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub addrs: Vec<AddressJson>,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AddressJson {
    pub ip: String,
    pub port: u16,
    /// `endpoint_addr_weight` when the address's weight is not 1.
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// Explains how `path` delegates through `base` ++ `local`.
pub fn delegate(
    base: &CompiledDtab,
    local: &Dtab,
    path: &Path,
    namers: &dyn NamerSet,
) -> DelegateTree {
    explain(&Layered::new(base, local), path, namers)
}

/// The same by a plain scan of `base` ++ `local` (for tests).
pub fn delegate_reference(
    base: &Dtab,
    local: &Dtab,
    path: &Path,
    namers: &dyn NamerSet,
) -> DelegateTree {
    explain(&Scan::new(base, local), path, namers)
}

fn explain<L: DtabLookup>(lookup: &L, path: &Path, namers: &dyn NamerSet) -> DelegateTree {
    let mut d = Delegator {
        lookup,
        namers,
        budget: Budget::default(),
    };
    let root = match d.leaf(path.clone(), None, 0) {
        Ok(node) => node,
        Err(e) => Node::new(path.clone(), None, Kind::Exception(e.to_string())),
    };
    root.simplified().into_json()
}

struct Node<'a> {
    path: Path,
    dentry: Option<&'a Dentry>,
    kind: Kind<'a>,
}

enum Kind<'a> {
    Delegate(Box<Node<'a>>),
    Alt(Vec<Node<'a>>),
    Union(Vec<(f64, Node<'a>)>),
    Leaf(Bound),
    Neg,
    Fail,
    Empty,
    Exception(String),
}

impl<'a> Node<'a> {
    fn new(path: Path, dentry: Option<&'a Dentry>, kind: Kind<'a>) -> Node<'a> {
        Node { path, dentry, kind }
    }

    fn exception(path: &Path, dentry: Option<&'a Dentry>, e: BindError) -> Node<'a> {
        Node::new(path.clone(), dentry, Kind::Exception(e.to_string()))
    }

    fn simplified(self) -> Node<'a> {
        let Node { path, dentry, kind } = self;
        match kind {
            Kind::Delegate(child) => {
                let child = child.simplified();
                let terminal = matches!(child.kind, Kind::Neg | Kind::Fail | Kind::Empty);
                if !terminal && child.path == path {
                    Node { dentry, ..child }
                } else {
                    Node::new(path, dentry, Kind::Delegate(Box::new(child)))
                }
            }
            Kind::Alt(children) if children.is_empty() => Node::new(path, dentry, Kind::Neg),
            Kind::Alt(mut children) if children.len() == 1 => {
                let only = children.pop().map(Box::new);
                only.map_or(Node::new(path.clone(), dentry, Kind::Neg), |c| {
                    Node::new(path, dentry, Kind::Delegate(c)).simplified()
                })
            }
            Kind::Alt(children) => {
                let mut flat = Vec::with_capacity(children.len());
                for child in children {
                    let child = child.simplified();
                    match child.kind {
                        Kind::Alt(grand) if child.path == path => flat.extend(grand),
                        kind => flat.push(Node { kind, ..child }),
                    }
                }
                Node::new(path, dentry, Kind::Alt(flat))
            }
            Kind::Union(branches) if branches.is_empty() => Node::new(path, dentry, Kind::Neg),
            Kind::Union(mut branches) if branches.len() == 1 => match branches.pop() {
                Some((_, only)) => {
                    Node::new(path, dentry, Kind::Delegate(Box::new(only))).simplified()
                }
                None => Node::new(path, dentry, Kind::Neg),
            },
            Kind::Union(branches) => Node::new(
                path,
                dentry,
                Kind::Union(
                    branches
                        .into_iter()
                        .map(|(w, n)| (w, n.simplified()))
                        .collect(),
                ),
            ),
            kind => Node { path, dentry, kind },
        }
    }

    fn into_json(self) -> DelegateTree {
        let dentry = self.dentry.map(|d| DentryJson {
            prefix: d.prefix.to_string(),
            dst: d.dst.to_string(),
        });
        let path = self.path;
        match self.kind {
            Kind::Delegate(child) => DelegateTree::Delegate {
                path: path.to_string(),
                dentry,
                delegate: Box::new(child.into_json()),
            },
            Kind::Alt(children) => DelegateTree::Alt {
                path: path.to_string(),
                dentry,
                alt: children.into_iter().map(Node::into_json).collect(),
            },
            Kind::Union(branches) => DelegateTree::Union {
                path: path.to_string(),
                dentry,
                union: branches
                    .into_iter()
                    .map(|(weight, n)| WeightedJson {
                        weight,
                        tree: n.into_json(),
                    })
                    .collect(),
            },
            Kind::Leaf(bound) => DelegateTree::Leaf {
                path: path.to_string(),
                dentry,
                bound: bound_json(&bound),
            },
            // Linkerd shows a neg reached through `~` as `~`, and a fail not
            // named `/$/fail/...` as `!`.
            Kind::Neg => DelegateTree::Neg {
                path: if path.is_empty() {
                    "~".into()
                } else {
                    path.to_string()
                },
                dentry,
            },
            Kind::Fail => DelegateTree::Fail {
                path: if path.elems().take(2).eq([&b"$"[..], b"fail"]) {
                    path.to_string()
                } else {
                    "!".into()
                },
                dentry,
            },
            Kind::Empty => DelegateTree::Empty {
                path: path.to_string(),
                dentry,
            },
            Kind::Exception(message) => DelegateTree::Exception {
                path: path.to_string(),
                dentry,
                message,
            },
        }
    }
}

fn bound_json(b: &Bound) -> BoundJson {
    BoundJson {
        addr: AddrJson {
            kind: "bound",
            addrs: b
                .endpoints
                .as_slice()
                .iter()
                .map(|e| {
                    let mut meta = serde_json::Map::new();
                    if e.weight != 1.0 {
                        meta.insert("endpoint_addr_weight".into(), e.weight.into());
                    }
                    AddressJson {
                        ip: e.addr.ip().to_string(),
                        port: e.addr.port(),
                        meta,
                    }
                })
                .collect(),
            meta: serde_json::Map::new(),
        },
        id: b.id.to_string(),
        path: b.residual.to_string(),
    }
}

struct Delegator<'a, L> {
    lookup: &'a L,
    namers: &'a dyn NamerSet,
    budget: Budget,
}

impl<'a, L: DtabLookup> Delegator<'a, L> {
    /// Explains the leaf `path`, reached through `dentry` at `depth`.
    fn leaf(
        &mut self,
        path: Path,
        dentry: Option<&'a Dentry>,
        depth: usize,
    ) -> Result<Node<'a>, BindError> {
        self.budget.enter_lookup(&path, depth)?;
        let result = self.lookup_leaf(path, dentry, depth);
        self.budget.leave();
        result
    }

    fn lookup_leaf(
        &mut self,
        path: Path,
        dentry: Option<&'a Dentry>,
        depth: usize,
    ) -> Result<Node<'a>, BindError> {
        let lookup = self.lookup;
        let mut matches = Vec::new();
        lookup.matches(&path, &mut matches);
        // What the lookup yields is explained one level deeper.
        if depth + 1 > MAX_DEPTH {
            return Err(BindError::DepthExceeded { path });
        }

        if goes_to_namers(lookup, &matches) {
            match lookup_namers(&path, self.namers) {
                Err(e) => return Ok(Node::new(path, dentry, Kind::Exception(e.message))),
                // A lone `~` rewrite that the namers do not override is
                // shown as the rewrite it is.
                Ok(NameTree::Neg) if !matches.is_empty() => {}
                Ok(NameTree::Neg) => return Ok(Node::new(path, dentry, Kind::Neg)),
                Ok(tree) => return Ok(bound_tree(&path, dentry, &tree)),
            }
        }

        let mut rewrites = Vec::with_capacity(matches.len());
        for &i in &matches {
            let d = lookup.dentry(i);
            let suffix = path.skip(d.prefix.len());
            let node = self.dst(&path, d, &d.dst, &suffix, depth + 1);
            if matches.len() == 1 {
                return Ok(Node::new(path, dentry, Kind::Delegate(Box::new(node?))));
            }
            rewrites.push(node.unwrap_or_else(|e| Node::exception(&path, dentry, e)));
        }
        Ok(Node::new(path, dentry, Kind::Alt(rewrites)))
    }

    /// Explains the rewrite of `path` by dentry `d`: its tree `tree`, each
    /// leaf followed by `suffix`.
    fn dst(
        &mut self,
        path: &Path,
        d: &'a Dentry,
        tree: &'a NameTree<Path>,
        suffix: &Path,
        depth: usize,
    ) -> Result<Node<'a>, BindError> {
        self.budget.enter_step(path)?;
        let result = self.dst_inner(path, d, tree, suffix, depth);
        self.budget.leave();
        result
    }

    fn dst_inner(
        &mut self,
        path: &Path,
        d: &'a Dentry,
        tree: &'a NameTree<Path>,
        suffix: &Path,
        depth: usize,
    ) -> Result<Node<'a>, BindError> {
        let node = |kind| Node::new(path.clone(), Some(d), kind);
        Ok(match tree {
            NameTree::Leaf(p) => return self.leaf(p.concat(suffix), Some(d), depth),
            NameTree::Neg => Node::new(Path::empty(), Some(d), Kind::Neg),
            NameTree::Fail => node(Kind::Fail),
            NameTree::Empty => node(Kind::Empty),
            NameTree::Alt(ts) if ts.len() == 1 => node(Kind::Delegate(Box::new(
                self.dst(path, d, &ts[0], suffix, depth)?,
            ))),
            NameTree::Alt(ts) => node(Kind::Alt(
                ts.iter()
                    .map(|t| {
                        self.dst(path, d, t, suffix, depth)
                            .unwrap_or_else(|e| Node::exception(path, Some(d), e))
                    })
                    .collect(),
            )),
            NameTree::Union(ws) if ws.len() == 1 => node(Kind::Delegate(Box::new(self.dst(
                path,
                d,
                &ws[0].tree,
                suffix,
                depth,
            )?))),
            NameTree::Union(ws) => node(Kind::Union(
                ws.iter()
                    .map(|w| {
                        let n = self
                            .dst(path, d, &w.tree, suffix, depth)
                            .unwrap_or_else(|e| Node::exception(path, Some(d), e));
                        (w.weight, n)
                    })
                    .collect(),
            )),
        })
    }
}

/// A namer's answer, shown as it came (every branch of it).
fn bound_tree<'a>(path: &Path, dentry: Option<&'a Dentry>, tree: &NameTree<Bound>) -> Node<'a> {
    let node = |kind| Node::new(path.clone(), dentry, kind);
    match tree {
        NameTree::Leaf(b) => node(Kind::Leaf(b.clone())),
        NameTree::Neg => Node::new(Path::empty(), dentry, Kind::Neg),
        NameTree::Fail => node(Kind::Fail),
        NameTree::Empty => node(Kind::Empty),
        NameTree::Alt(ts) => node(Kind::Alt(
            ts.iter().map(|t| bound_tree(path, dentry, t)).collect(),
        )),
        NameTree::Union(ws) => node(Kind::Union(
            ws.iter()
                .map(|w| (w.weight, bound_tree(path, dentry, &w.tree)))
                .collect(),
        )),
    }
}
