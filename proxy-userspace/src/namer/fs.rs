//! The file namer, `io.l5d.fs`: `/#/io.l5d.fs/<name>` binds to the addresses
//! listed in the file `<dir>/<name>`, one `ip port [* weight]` per line.
//!
//! A missing file is neg, so an earlier dentry takes over (that is how a
//! dtab falls back). The directory is re-read by a watcher thread when a
//! file's modification time or size changes; lookups read the last snapshot
//! and never touch the disk. Each change bumps the shared routing
//! generation, so cached bindings are made again.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path as FsPath, PathBuf},
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::dtab::{Endpoint, Endpoints, NameTree, Namer, NamerBound, NamerError, Path};

/// The namer's kind, as dtabs name it: `/#/io.l5d.fs/...`.
pub const KIND: &str = "io.l5d.fs";

/// A file's modification time and length: when either changes, it is read again.
type Stamp = (SystemTime, u64);

#[derive(Default)]
struct Snapshot {
    /// File name -> (its stamp when read, its endpoints).
    files: HashMap<String, (Stamp, Arc<[Endpoint]>)>,
}

pub struct FsNamer {
    dir: PathBuf,
    state: RwLock<Snapshot>,
    generation: Arc<AtomicU64>,
}

impl FsNamer {
    /// Reads `dir` now and starts a thread that re-reads it every
    /// `interval`; the thread ends when the namer is dropped.
    pub fn start(dir: PathBuf, interval: Duration, generation: Arc<AtomicU64>) -> Arc<FsNamer> {
        let namer = Arc::new(FsNamer {
            dir,
            state: RwLock::default(),
            generation,
        });
        namer.refresh();
        let weak: Weak<FsNamer> = Arc::downgrade(&namer);
        std::thread::Builder::new()
            .name("fs-namer".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    match weak.upgrade() {
                        Some(n) => n.refresh(),
                        None => return,
                    }
                }
            })
            .expect("spawn the fs-namer thread");
        namer
    }

    pub fn dir(&self) -> &FsPath {
        &self.dir
    }

    /// Re-reads files whose mtime or size changed, drops removed ones, and
    /// bumps the generation when anything changed. Symbolic links are
    /// followed, so a Kubernetes ConfigMap volume (each name a link through
    /// `..data` into a hidden directory) reads like plain files. When the
    /// directory itself cannot be read, the last snapshot stays: a mount
    /// that comes and goes must not unroute every name.
    pub fn refresh(&self) {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "fs namer: directory unreadable, keeping the names read before");
                return;
            }
        };
        let mut seen: HashMap<String, Stamp> = HashMap::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // ConfigMap bookkeeping (`..data`, `..2026_11_22...`) and
            // editors' hidden temporaries are not names.
            if name.starts_with('.') {
                continue;
            }
            // The file a link leads to; a dangling link is no file.
            let Ok(meta) = fs::metadata(entry.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            seen.insert(name, stamp);
        }
        let changed: Vec<String> = {
            let state = self.state.read().expect("fs namer lock");
            let mut changed: Vec<String> = seen
                .iter()
                .filter(|(n, s)| state.files.get(*n).map(|(old, _)| old) != Some(s))
                .map(|(n, _)| n.clone())
                .collect();
            changed.extend(
                state
                    .files
                    .keys()
                    .filter(|n| !seen.contains_key(*n))
                    .cloned(),
            );
            changed
        };
        if changed.is_empty() {
            return;
        }
        let mut state = self.state.write().expect("fs namer lock");
        for name in changed {
            match seen.get(&name) {
                None => {
                    state.files.remove(&name);
                    tracing::info!(file = %self.dir.join(&name).display(), "fs namer: file removed");
                }
                Some(stamp) => match fs::read_to_string(self.dir.join(&name)) {
                    Ok(text) => {
                        let endpoints = parse_endpoints(&text, &name);
                        tracing::info!(file = %self.dir.join(&name).display(), endpoints = endpoints.len(), "fs namer: read");
                        state.files.insert(name, (*stamp, endpoints.into()));
                    }
                    Err(e) => {
                        tracing::warn!(file = %self.dir.join(&name).display(), error = %e, "fs namer: unreadable, treated as missing");
                        state.files.remove(&name);
                    }
                },
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}

impl Namer for FsNamer {
    fn lookup(&self, path: &Path) -> Result<NameTree<NamerBound>, NamerError> {
        let Some(name) = path.get(0) else {
            return Ok(NameTree::Neg);
        };
        let Ok(name) = std::str::from_utf8(name) else {
            return Ok(NameTree::Neg);
        };
        let state = self.state.read().expect("fs namer lock");
        Ok(match state.files.get(name) {
            None => NameTree::Neg,
            Some((_, endpoints)) => NameTree::Leaf(NamerBound {
                consumed: 1,
                endpoints: Endpoints::Set(endpoints.clone()),
            }),
        })
    }
}

/// Parses `ip port [* weight]` lines; blank lines and `#` comments are
/// skipped, a bad line is logged and skipped.
pub fn parse_endpoints(text: &str, file: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Some(e) => out.push(e),
            None => tracing::warn!(
                file,
                line = n + 1,
                text = raw,
                "fs namer: expected `ip port [* weight]`; line skipped"
            ),
        }
    }
    out
}

fn parse_line(line: &str) -> Option<Endpoint> {
    let mut words = line.split_whitespace();
    let ip: IpAddr = words.next()?.parse().ok()?;
    let port: u16 = words.next()?.parse().ok()?;
    let weight = match (words.next(), words.next()) {
        (None, _) => 1.0,
        (Some("*"), Some(w)) => w
            .parse::<f64>()
            .ok()
            .filter(|w| w.is_finite() && *w >= 0.0)?,
        _ => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(Endpoint {
        addr: SocketAddr::new(ip, port),
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_weights_and_comments() {
        let e = parse_endpoints(
            "127.0.0.1 8080\n# c\n\n10.0.0.2 80 * 0.5  # half\nbad line\n::1 9 * 2\n1.2.3.4 99999\n",
            "f",
        );
        let got: Vec<(String, f64)> = e.iter().map(|e| (e.addr.to_string(), e.weight)).collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:8080".into(), 1.0),
                ("10.0.0.2:80".into(), 0.5),
                ("[::1]:9".into(), 2.0)
            ]
        );
    }

    #[test]
    fn missing_files_are_neg_and_changes_are_seen() {
        let dir = std::env::temp_dir().join(format!("sidetrack-fs-namer-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let namer = FsNamer::start(dir.clone(), Duration::from_secs(3600), generation.clone());
        let web = Path::read("/web/extra").unwrap();
        assert_eq!(namer.lookup(&web).unwrap(), NameTree::Neg);

        fs::write(dir.join("web"), "127.0.0.1 8080\n").unwrap();
        namer.refresh();
        let g1 = generation.load(Ordering::Acquire);
        assert!(g1 >= 1);
        match namer.lookup(&web).unwrap() {
            NameTree::Leaf(b) => {
                assert_eq!(b.consumed, 1);
                assert_eq!(b.endpoints.as_slice()[0].addr.to_string(), "127.0.0.1:8080");
            }
            other => panic!("{other:?}"),
        }
        namer.refresh();
        assert_eq!(
            generation.load(Ordering::Acquire),
            g1,
            "no change, no new generation"
        );

        fs::remove_file(dir.join("web")).unwrap();
        namer.refresh();
        assert_eq!(namer.lookup(&web).unwrap(), NameTree::Neg);
        assert!(generation.load(Ordering::Acquire) > g1);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The layout a Kubernetes ConfigMap volume has: each name a link to
    /// `..data/NAME`, `..data` a link to a hidden timestamped directory, and
    /// an update that swaps `..data` to a new directory.
    #[test]
    fn a_configmap_volume_is_read_through_its_links_and_swaps() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("sidetrack-fs-cm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("..v1")).unwrap();
        fs::write(dir.join("..v1/web"), "127.0.0.1 8080\n").unwrap();
        symlink("..v1", dir.join("..data")).unwrap();
        symlink("..data/web", dir.join("web")).unwrap();
        // A dangling link and a hidden file are not names.
        symlink("..data/gone", dir.join("gone")).unwrap();
        fs::write(dir.join(".hidden"), "127.0.0.1 1\n").unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let namer = FsNamer::start(dir.clone(), Duration::from_secs(3600), generation.clone());
        let first_addr = |name: &str| match namer.lookup(&Path::read(name).unwrap()).unwrap() {
            NameTree::Leaf(b) => Some(b.endpoints.as_slice()[0].addr.to_string()),
            _ => None,
        };
        assert_eq!(first_addr("/web").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(first_addr("/gone"), None);
        assert_eq!(first_addr("/.hidden"), None);
        assert_eq!(first_addr("/..data"), None);

        // The update: a new directory, then `..data` swapped by rename.
        fs::create_dir_all(dir.join("..v2")).unwrap();
        fs::write(dir.join("..v2/web"), "127.0.0.2 9090\n").unwrap();
        symlink("..v2", dir.join("..data_tmp")).unwrap();
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        fs::remove_dir_all(dir.join("..v1")).unwrap();
        namer.refresh();
        assert_eq!(first_addr("/web").as_deref(), Some("127.0.0.2:9090"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_directory_keeps_the_names_read_before() {
        let dir = std::env::temp_dir().join(format!("sidetrack-fs-gone-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("web"), "127.0.0.1 8080\n").unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let namer = FsNamer::start(dir.clone(), Duration::from_secs(3600), generation.clone());
        let web = Path::read("/web").unwrap();
        assert!(matches!(namer.lookup(&web).unwrap(), NameTree::Leaf(_)));
        let g = generation.load(Ordering::Acquire);
        fs::remove_dir_all(&dir).unwrap();
        namer.refresh();
        assert!(matches!(namer.lookup(&web).unwrap(), NameTree::Leaf(_)));
        assert_eq!(generation.load(Ordering::Acquire), g);
    }
}
