//! `--baseline REV`: Sidetrack's scenarios again, from another revision's
//! binary, in the same run, so that a change is measured against the code
//! it changes under the same conditions (the same rounds, load and drift).
//!
//! The revision is checked out in a git worktree at
//! `target/baseline/<full sha>/` and built as it builds itself: its own
//! `cargo xtask build-ebpf` (its userspace build embeds its own tree's
//! `target/bpf/sidetrack.bpf.o`; its `target/tools` links to this run's, for
//! bpf-linker), then its release `sidetrack`, with this run's cargo so that
//! only the code differs. A tree whose binary exists is
//! used as it is: a revision does not change.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{cmd, setup};

/// The revision the baseline scenarios run.
#[derive(Clone, Debug, Serialize)]
pub struct Rev {
    /// As given to `--baseline`.
    pub given: String,
    pub sha: String,
    pub short: String,
    pub subject: String,
}

fn git(args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(crate::workspace_root()).args(args);
    c
}

impl Rev {
    /// The commit `given` names in this repository; an error before anything
    /// is built when it names none.
    pub fn resolve(given: &str) -> Result<Rev> {
        let out = |args: &[&str]| cmd::output(&mut git(args)).map(|s| s.trim().to_owned());
        let sha = out(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{given}^{{commit}}"),
        ])
        .with_context(|| format!("--baseline {given}: no such commit in this repository"))?;
        let short = out(&["rev-parse", "--short", &sha]).unwrap_or_else(|| sha.clone());
        let subject = out(&["log", "-1", "--format=%s", &sha]).unwrap_or_default();
        Ok(Rev {
            given: given.to_owned(),
            sha,
            short,
            subject,
        })
    }

    /// `abc1234 subject`, the subject cut short.
    pub fn title(&self) -> String {
        let mut subject: String = self.subject.chars().take(72).collect();
        if subject.len() < self.subject.len() {
            subject.push('…');
        }
        format!("{} {subject}", self.short)
    }
}

/// Checks `rev` out and builds it, unless that is done; returns its
/// `sidetrack` binary.
pub fn build(rev: &Rev) -> Result<PathBuf> {
    let trees = crate::target_dir().join("baseline");
    let tree = trees.join(&rev.sha);
    let bin = tree.join("target/release/sidetrack");
    cmd::step(format!("baseline {}", rev.title()));
    if bin.is_file() {
        cmd::note(format!("{} is built: using it", tree.display()));
        return Ok(bin);
    }
    if !tree.join(".git").exists() {
        // A tree deleted by hand (`cargo clean`) is still registered.
        cmd::run(&mut git(&["worktree", "prune"]))?;
        fs::create_dir_all(&trees)?;
        let path = tree.to_string_lossy();
        cmd::run(&mut git(&["worktree", "add", "--detach", &path, &rev.sha]))?;
    }
    // Its build-ebpf looks for bpf-linker in its own target directory's
    // tools/, where `cargo xtask setup` builds it: this run's will do.
    let tools = tree.join("target/tools");
    if tools.symlink_metadata().is_err() {
        fs::create_dir_all(tree.join("target"))?;
        std::os::unix::fs::symlink(setup::tools_dir(), &tools)
            .with_context(|| format!("link {}", tools.display()))?;
    }
    let cargo = |args: &[&str]| {
        let mut c = cmd::cargo();
        c.args(args)
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", tree.join("target"))
            .env_remove("SIDETRACK_EBPF_OBJECT");
        c
    };
    cmd::run(&mut cargo(&["xtask", "build-ebpf"]))?;
    cmd::run(&mut cargo(&super::BUILD_SIDETRACK))?;
    Ok(bin)
}
