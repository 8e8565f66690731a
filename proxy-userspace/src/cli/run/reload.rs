//! Hot reload: the config file and the dtab file, polled for changes. The
//! dtab, the namers, the override policy, the routing rules, the mirrors
//! and the diff settings apply at once; other settings at the next restart.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use super::{RunArgs, namers, override_policy, parse_base};
use crate::{
    config::{Settings, ms},
    namer::fs::FsNamer,
    route::{Mirrors, Router, Rules},
};

/// What a directory holds, to notice a change: each entry's name,
/// modification time and size (a Secret volume swaps a symlink, an editor
/// rewrites a file in place).
fn dir_stamp(dir: &Option<PathBuf>) -> Option<Vec<(std::ffi::OsString, SystemTime, u64)>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir.as_ref()?)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = std::fs::metadata(e.path()).ok()?;
            Some((e.file_name(), m.modified().ok()?, m.len()))
        })
        .collect();
    entries.sort();
    Some(entries)
}

/// Watches the config file and the dtab file; applies what changed.
/// The router holds the namers, so replacing them there stops the old file
/// namer's watcher.
/// What the watched files looked like when they were read: taken before
/// reading them, so that a change made while the proxy starts is seen.
pub(super) struct Watched {
    config: Option<(SystemTime, u64)>,
    dtab: Option<(SystemTime, u64)>,
    keys: Option<Vec<(std::ffi::OsString, SystemTime, u64)>>,
}

impl Watched {
    /// The config file's stamp, before the settings are read from it.
    pub(super) fn config(path: &Option<PathBuf>) -> Option<(SystemTime, u64)> {
        stamp(path)
    }

    /// With the stamps of the files the settings name, before those are read.
    pub(super) fn with(config: Option<(SystemTime, u64)>, s: &Settings) -> Watched {
        Watched {
            config,
            dtab: stamp(&s.dtab_file),
            keys: dir_stamp(&s.overrides.keys_dir),
        }
    }
}

fn stamp(p: &Option<PathBuf>) -> Option<(SystemTime, u64)> {
    p.as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

pub(super) fn spawn_reloader(
    args: RunArgs,
    mut current: Settings,
    router: Arc<Router>,
    diff: Arc<crate::diff::Engine>,
    watched: Watched,
    k8s: Option<Arc<crate::namer::k8s::K8sNamer>>,
) {
    let interval = ms(current.watch_interval_ms);
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let Watched {
                config: mut config_stamp,
                dtab: mut dtab_stamp,
                keys: mut keys_stamp,
            } = watched;
            loop {
                std::thread::sleep(interval);
                let (c, d) = (stamp(&args.config), stamp(&current.dtab_file));
                let k = dir_stamp(&current.overrides.keys_dir);
                if k != keys_stamp && c == config_stamp {
                    // Keys rotated (a Secret volume updated): the same
                    // policy with the keys now there.
                    keys_stamp = k;
                    match override_policy(&current) {
                        Ok(policy) => {
                            tracing::info!(keys = ?policy.keys, "override signing keys reloaded");
                            router.set_policy(policy);
                        }
                        Err(e) => tracing::error!("override keys reload refused, keeping the running keys: {e}"),
                    }
                }
                if c == config_stamp && d == dtab_stamp {
                    continue;
                }
                config_stamp = c;
                dtab_stamp = d;
                // An empty file is a write caught half-way (truncated, not
                // yet filled), not a wish for the defaults; the write that
                // fills it changes the stamp and is read then.
                if args.config.as_ref().is_some_and(|p| {
                    std::fs::read_to_string(p).is_ok_and(|t| t.trim().is_empty())
                }) {
                    tracing::error!("config reload refused, keeping the running settings: the config file is empty");
                    continue;
                }
                let next = match args.settings() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("config reload refused, keeping the running settings: {e}");
                        continue;
                    }
                };
                let base = match parse_base(&next) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!("dtab reload refused, keeping the running dtab: {e}");
                        continue;
                    }
                };
                if next.fs_dir != current.fs_dir || next.watch_interval_ms != current.watch_interval_ms {
                    let fs_namer = next.fs_dir.clone().map(|dir| FsNamer::start(dir, ms(next.watch_interval_ms), router.generation().clone()));
                    router.set_namers(namers(&fs_namer, &k8s));
                    tracing::info!(fs_dir = ?next.fs_dir, "namers reloaded");
                }
                if next.overrides != current.overrides {
                    keys_stamp = dir_stamp(&next.overrides.keys_dir);
                    match override_policy(&next) {
                        Ok(policy) => {
                            tracing::info!(policy = ?next.overrides, "override policy reloaded");
                            router.set_policy(policy);
                        }
                        Err(e) => tracing::error!("override policy reload refused, keeping the running policy: {e}"),
                    }
                }
                if next.rules != current.rules {
                    // Validated with the rest of the settings.
                    if let Ok(rules) = Rules::new(&next.rules) {
                        tracing::info!(rules = next.rules.len(), "routing rules reloaded");
                        router.set_rules(rules);
                    }
                }
                if next.mirrors != current.mirrors {
                    // Validated with the rest of the settings.
                    if let Ok(mirrors) = Mirrors::new(&next.mirrors) {
                        tracing::info!(mirrors = next.mirrors.len(), "mirrors reloaded");
                        router.set_mirrors(mirrors);
                    }
                }
                if next.diff != current.diff {
                    let reset = diff.set_settings(next.diff.clone());
                    tracing::info!(reset, "diff settings reloaded");
                }
                if base.to_string() != router.base().dtab.to_string() {
                    tracing::info!(dtab = %base, "base dtab reloaded");
                    router.set_base(base);
                }
                let restart_only = Settings { dtab: next.dtab.clone(), dtab_file: next.dtab_file.clone(), fs_dir: next.fs_dir.clone(), watch_interval_ms: next.watch_interval_ms, overrides: next.overrides.clone(), rules: next.rules.clone(), mirrors: next.mirrors.clone(), diff: next.diff.clone(), ..current.clone() };
                if restart_only != next {
                    tracing::warn!("settings other than the dtab and namers changed; they apply at the next restart");
                }
                dtab_stamp = stamp(&next.dtab_file);
                current = next;
            }
        })
        .expect("spawn the reload thread");
}
