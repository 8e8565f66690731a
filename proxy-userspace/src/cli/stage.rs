//! `sidetrack stage`: the override a developer sends, built, signed and
//! checked, instead of written by hand.
//!
//! `sidetrack stage world=world-v2 --key keys/2026-12 --ttl 1h` prints the
//! headers and a `curl` line that uses them. A short form `NAME=VERSION`
//! becomes `/host/NAME => /srv/VERSION` (the prefixes are flags); a full
//! dentry (`/host/world => /srv/world-v2`) is taken as it is. With
//! `--proxy URL` (a running proxy's admin address) it asks `/delegator.json`
//! what each staged name would bind to with the override, so a typo shows
//! as `neg` before any request is sent.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use serde::Serialize;

use crate::{
    dtab::{Dentry, Dtab},
    policy::signing::{SIGNATURE_HEADER, sign},
};

#[derive(Debug, Args)]
pub struct StageArgs {
    /// What to stage: `NAME=VERSION` short forms, or full dentries
    /// (`/host/world => /srv/world-v2`).
    #[arg(required = true)]
    pub overrides: Vec<String>,
    /// The prefix a short form's name goes under.
    #[arg(long, default_value = "/host")]
    pub from_prefix: String,
    /// The prefix a short form's version goes under.
    #[arg(long, default_value = "/srv")]
    pub to_prefix: String,
    /// A key file to sign with (its file name is the key id, as in the
    /// proxy's `overrides.keys_dir`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The key id, when it is not the key file's name.
    #[arg(long)]
    pub kid: Option<String>,
    /// How long the signature holds: `90s`, `30m`, `1h`, `2d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// A running proxy's admin address (`http://127.0.0.1:9990`): show
    /// what each staged name binds to with the override.
    #[arg(long)]
    pub proxy: Option<String>,
    /// The logical-name prefix the proxy routes by (for `--proxy`).
    #[arg(long, default_value = "/svc")]
    pub dst_prefix: String,
    /// The URL of the `curl` line [default: http://NAME/ of the first name].
    #[arg(long)]
    pub url: Option<String>,
    /// An explicit proxy for the `curl` line (`127.0.0.1:4140`): `curl -x`.
    #[arg(long)]
    pub via: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What `stage` prints, as JSON with `--json`.
#[derive(Debug, Serialize)]
struct Staged {
    dtab: String,
    headers: Vec<(String, String)>,
    curl: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    binds: Vec<Binding>,
}

/// What one staged name binds to on a running proxy.
#[derive(Debug, Serialize)]
struct Binding {
    name: String,
    /// What a request for the name is routed to with the override: bound
    /// names (`/#/io.l5d.fs/world-v2`), or `neg`, `fail`, `empty`, or the
    /// error.
    to: Vec<String>,
    /// What the entry's own destination binds to: `neg` for a version
    /// nobody serves (a typo), in which case requests fall back to what
    /// the base dtab says.
    staged: Vec<String>,
}

impl StageArgs {
    pub fn run(self) -> ExitCode {
        match self.stage() {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sidetrack stage: {e}");
                ExitCode::from(2)
            }
        }
    }

    fn stage(&self) -> Result<String, String> {
        let dentries = self
            .overrides
            .iter()
            .map(|o| self.dentry(o))
            .collect::<Result<Vec<_>, _>>()?;
        let dtab = Dtab::new(dentries);
        let text = dtab.to_string();
        let mut headers = vec![("l5d-dtab".to_owned(), text.clone())];
        if let Some(key_file) = &self.key {
            let key = read_key(key_file)?;
            let kid = match &self.kid {
                Some(k) => k.clone(),
                None => key_file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or("--key names no file; give --kid")?,
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| e.to_string())?;
            let expires = (now + self.ttl).as_secs();
            headers.push((
                SIGNATURE_HEADER.to_owned(),
                sign(&dtab, &kid, &key, expires),
            ));
        }
        let url = match &self.url {
            Some(u) => u.clone(),
            None => format!("http://{}/", self.first_name(&dtab)),
        };
        let mut curl = String::from("curl");
        if let Some(via) = &self.via {
            curl.push_str(&format!(" -x {}", shell_quote(&format!("http://{via}"))));
        }
        for (k, v) in &headers {
            curl.push_str(&format!(" -H {}", shell_quote(&format!("{k}: {v}"))));
        }
        curl.push(' ');
        curl.push_str(&shell_quote(&url));
        let binds = match &self.proxy {
            Some(admin) => self.binds(admin, &dtab)?,
            None => Vec::new(),
        };
        let staged = Staged {
            dtab: text,
            headers,
            curl,
            binds,
        };
        if self.json {
            return serde_json::to_string_pretty(&staged)
                .map(|j| j + "\n")
                .map_err(|e| e.to_string());
        }
        let mut out = String::new();
        for (k, v) in &staged.headers {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out.push('\n');
        out.push_str(&staged.curl);
        out.push('\n');
        for b in &staged.binds {
            out.push_str(&format!("{} -> {}", b.name, b.to.join(" | ")));
            if b.staged.iter().any(|s| s == "neg") {
                out.push_str(" (the staged version binds to nothing: neg)");
            }
            out.push('\n');
        }
        Ok(out)
    }

    /// A short form `NAME=VERSION`, or a full dentry.
    fn dentry(&self, o: &str) -> Result<Dentry, String> {
        let text = if o.contains("=>") {
            o.to_owned()
        } else {
            let (name, version) = o
                .split_once('=')
                .filter(|(n, v)| !n.is_empty() && !v.is_empty())
                .ok_or_else(|| format!("{o:?}: expected NAME=VERSION or a dentry (a => b)"))?;
            let trim = |p: &str| p.trim_end_matches('/').to_owned();
            format!(
                "{}/{name} => {}/{version}",
                trim(&self.from_prefix),
                trim(&self.to_prefix)
            )
        };
        Dentry::read(&text).map_err(|e| format!("{o:?}: {e}"))
    }

    /// The name the first entry stages (its prefix's last label).
    fn first_name(&self, dtab: &Dtab) -> String {
        dtab.dentries()
            .first()
            .and_then(|d| d.prefix.to_string().rsplit('/').next().map(str::to_owned))
            .filter(|n| !n.is_empty() && n != "*")
            .unwrap_or_else(|| "localhost".into())
    }

    /// Asks the proxy at `admin` what each staged name binds to.
    fn binds(&self, admin: &str, dtab: &Dtab) -> Result<Vec<Binding>, String> {
        let mut out = Vec::new();
        for d in dtab.dentries() {
            let name = d
                .prefix
                .to_string()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let path = format!("{}/{name}", self.dst_prefix.trim_end_matches('/'));
            let to = delegate(admin, dtab, &path)?;
            let mut dsts = Vec::new();
            d.dst.for_each_leaf(&mut |p| dsts.push(p.to_string()));
            let mut staged = Vec::new();
            for dst in dsts {
                staged.extend(delegate(admin, dtab, &dst)?);
            }
            out.push(Binding {
                name: path,
                to,
                staged,
            });
        }
        Ok(out)
    }
}

/// What `path` binds to with `dtab` on the proxy at `admin`.
fn delegate(admin: &str, dtab: &Dtab, path: &str) -> Result<Vec<String>, String> {
    let body = serde_json::json!({ "dtab": dtab.to_string(), "path": path }).to_string();
    let tree = post_json(admin, "/delegator.json", &body)?;
    let mut to = Vec::new();
    outcomes(&tree, &mut to);
    Ok(to)
}

/// What a delegation tree (as `/delegator.json` writes it) binds to, as
/// routing would take it: bound ids, the first branch of a fail-over that
/// is not `neg`, every branch of a union; or what ended it.
fn outcomes(tree: &serde_json::Value, out: &mut Vec<String>) {
    let branches = |key: &str| tree[key].as_array().cloned().unwrap_or_default();
    match tree["type"].as_str().unwrap_or_default() {
        "leaf" => out.push(tree["bound"]["id"].as_str().unwrap_or("?").to_owned()),
        "delegate" => outcomes(&tree["delegate"], out),
        "alt" => {
            let mut chosen = vec!["neg".to_owned()];
            for branch in branches("alt") {
                let mut got = Vec::new();
                outcomes(&branch, &mut got);
                if got != ["neg"] {
                    chosen = got;
                    break;
                }
            }
            out.extend(chosen);
        }
        "union" => {
            for w in branches("union") {
                outcomes(&w["tree"], out);
            }
        }
        "exception" => out.push(format!(
            "error: {}",
            tree["message"].as_str().unwrap_or_default()
        )),
        other => out.push(other.to_owned()),
    }
}

/// A key file's bytes, as the proxy reads its keys (a trailing newline is
/// not part of the key).
fn read_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut key = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.is_empty() {
        return Err(format!("{}: the key is empty", path.display()));
    }
    Ok(key)
}

/// `90s`, `30m`, `1h`, `2d`.
pub(crate) fn parse_ttl(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s, m, h or d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// POSTs `body` as JSON to `path` on the admin server at `base`
/// (`http://host:port`) and parses the JSON answer.
fn post_json(base: &str, path: &str, body: &str) -> Result<serde_json::Value, String> {
    if !base.starts_with("http://") {
        return Err(format!("--proxy {base:?}: expected http://host:port"));
    }
    let authority = super::admin_http::authority(base);
    let answer = super::admin_http::request(authority, "POST", path, Some(body))?;
    serde_json::from_slice(&answer).map_err(|e| format!("{authority}{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(overrides: &[&str]) -> StageArgs {
        StageArgs {
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            from_prefix: "/host".into(),
            to_prefix: "/srv".into(),
            key: None,
            kid: None,
            ttl: Duration::from_secs(3600),
            proxy: None,
            dst_prefix: "/svc".into(),
            url: None,
            via: None,
            json: false,
        }
    }

    #[test]
    fn short_forms_and_dentries_make_the_override() {
        let out = args(&["world=world-v2", "/host/hello => /srv/hello-v3"])
            .stage()
            .unwrap();
        assert_eq!(
            out,
            "l5d-dtab: /host/world=>/srv/world-v2;/host/hello=>/srv/hello-v3\n\n\
             curl -H 'l5d-dtab: /host/world=>/srv/world-v2;/host/hello=>/srv/hello-v3' 'http://world/'\n"
        );
        assert!(args(&["world"]).stage().is_err());
        assert!(args(&["=v2"]).stage().is_err());
        assert!(args(&["/a => b"]).stage().is_err());
    }

    #[test]
    fn ttls_and_quoting() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("1w").is_err() && parse_ttl("h").is_err());
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
