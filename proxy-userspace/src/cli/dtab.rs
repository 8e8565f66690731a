//! `sidetrack dtab ...`: the dtab engine offline, for people and tools.
//!
//! JSON goes to stdout; any error goes to stderr with exit status 2. Offline,
//! only the built-in names bind (`/$/inet`, `/$/fixedinet`, `/$/nil`,
//! `/$/fail`); `/#/...` paths are neg, there being no configured namers.
//!
//! In `resolve` output, each bound address carries the share of requests it
//! receives: `weight` is the product, down the leaf's branch, of each union
//! branch's weight divided by the sum of the weights of the branches that
//! bound (neg and fail ones having dropped out), times the address's share
//! of its bound name. Shares sum to 1 unless an empty branch takes some.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use crate::dtab::{self, CompiledDtab, Dtab, Eval, NameTree, Namers, Path};

#[derive(Debug, Subcommand)]
pub enum DtabCommand {
    /// Print a dtab in canonical form.
    Show { dtab: String },
    /// Evaluate one name tree without a dtab: its set of leaf paths, or neg, or fail.
    Eval { tree: String },
    /// Bind PATH through DTAB and print the bound addresses.
    Resolve {
        /// The dtab to bind through.
        #[arg(long, default_value = "")]
        dtab: String,
        path: String,
    },
    /// Explain how PATH delegates through DTAB (the shape of Linkerd's /delegator.json).
    Delegate {
        /// The dtab to delegate through.
        #[arg(long, default_value = "")]
        dtab: String,
        path: String,
    },
}

impl DtabCommand {
    pub fn run(self) -> ExitCode {
        match self.execute() {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        }
    }

    /// What the command prints on stdout (`Ok`), or the error it reports on
    /// stderr with exit status 2 (`Err`).
    pub fn execute(self) -> Result<String, String> {
        match self {
            DtabCommand::Show { dtab } => parse_dtab(&dtab).map(|d| d.to_string()),
            DtabCommand::Eval { tree } => eval(&tree),
            DtabCommand::Resolve { dtab, path } => resolve(&dtab, &path),
            DtabCommand::Delegate { dtab, path } => explain(&dtab, &path),
        }
    }
}

fn parse_dtab(s: &str) -> Result<Dtab, String> {
    Dtab::parse(s).map_err(|e| format!("invalid dtab: {e}"))
}

fn parse_path(s: &str) -> Result<Path, String> {
    Path::read(s).map_err(|e| format!("invalid path: {e}"))
}

fn json(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

#[derive(Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum EvalOut {
    Neg,
    Fail,
    Leaves { paths: Vec<String> },
}

fn eval(tree: &str) -> Result<String, String> {
    let tree = NameTree::read(tree).map_err(|e| format!("invalid name tree: {e}"))?;
    let out = match tree.eval() {
        Eval::Neg => EvalOut::Neg,
        Eval::Fail => EvalOut::Fail,
        Eval::Leaves(paths) => {
            let mut paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            paths.sort();
            paths.dedup();
            EvalOut::Leaves { paths }
        }
    };
    json(&out)
}

#[derive(Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum ResolveOut {
    Bound { leaves: Vec<LeafOut> },
    Neg,
    Fail,
    Empty,
}

#[derive(Serialize)]
struct LeafOut {
    id: String,
    addr: String,
    residual: String,
    weight: f64,
}

fn resolve(dtab: &str, path: &str) -> Result<String, String> {
    let base = CompiledDtab::new(&parse_dtab(dtab)?);
    let path = parse_path(path)?;
    let bound =
        dtab::bind(&base, &Dtab::empty(), &path, &Namers::default()).map_err(|e| e.to_string())?;
    let out = match bound {
        NameTree::Neg => ResolveOut::Neg,
        NameTree::Fail => ResolveOut::Fail,
        tree => {
            let mut leaves = Vec::new();
            for (b, share) in tree.leaf_shares() {
                let endpoints = b.endpoints.as_slice();
                let total: f64 = endpoints.iter().map(|e| e.weight).sum();
                for e in endpoints {
                    let part = crate::dtab::weight_share(e.weight, total, endpoints.len());
                    leaves.push(LeafOut {
                        id: b.id.to_string(),
                        addr: e.addr.to_string(),
                        residual: b.residual.to_string(),
                        weight: share * part,
                    });
                }
            }
            if leaves.is_empty() {
                ResolveOut::Empty
            } else {
                ResolveOut::Bound { leaves }
            }
        }
    };
    json(&out)
}

fn explain(dtab: &str, path: &str) -> Result<String, String> {
    let base = CompiledDtab::new(&parse_dtab(dtab)?);
    let path = parse_path(path)?;
    json(&dtab::delegate(
        &base,
        &Dtab::empty(),
        &path,
        &Namers::default(),
    ))
}
