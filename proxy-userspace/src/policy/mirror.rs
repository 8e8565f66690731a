//! Shadowing: which requests are copied to which other versions.
//!
//! Each entry of the `mirrors:` setting names a prefix of logical names
//! (`/svc/world`), a target given as a dtab path (`/srv/world-v2`, bound
//! with the same base dtab, rule and override as the request itself), and
//! the share of the matching requests that is copied, exact to 0.01%
//! (a number of basis points). Every entry whose prefix covers a request's
//! name is considered, so several targets take copies of the same route.
//!
//! The share is decided per request, or, with `sticky_header`, by a stable
//! hash of that header's value: one customer's requests are all copied or
//! none. Methods that change state (anything but GET, HEAD, OPTIONS,
//! TRACE) are copied only when the entry says `allow_writes`.
//!
//! An entry with a `secondary` is a diff: each copied request also goes to
//! the secondary (a second instance of the live version), and the live
//! answer, the secondary's and the target's are compared (see `diff`).
//!
//! Pure: the decisions take the request's facts and a random number.

use serde::Deserialize;

use crate::dtab::{Path, splitmix, stable_hash};

/// The share of requests copied is counted in these units of 0.01%.
pub const BASIS: u32 = 10_000;

/// One `mirrors:` entry as the settings state it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorSettings {
    /// Requests whose logical name starts with this path (`/svc/world`).
    pub name: String,
    /// Where the copies go: a dtab path (`/srv/world-v2`).
    pub to: String,
    /// The share of matching requests copied, in percent (0 to 100, exact
    /// to 0.01).
    #[serde(default = "hundred")]
    pub percent: f64,
    /// A request header whose value decides the share: the same value is
    /// always copied or never (at a fixed percent).
    #[serde(default)]
    pub sticky_header: Option<String>,
    /// The copy's Host: `keep` (default), `suffix` (`-shadow` added to
    /// the host name, before any port) or `{set: "name"}`.
    #[serde(default)]
    pub host: HostSettings,
    /// Copy requests whose method changes state (POST, PUT, PATCH,
    /// DELETE, ...) too.
    #[serde(default)]
    pub allow_writes: bool,
    /// Diff mode: a second instance of the live version, whose answers
    /// tell the noise (timestamps, ids) from real differences.
    #[serde(default)]
    pub secondary: Option<String>,
}

fn hundred() -> f64 {
    100.0
}

/// The copy's Host header: `keep`, `suffix` or `{set: "name"}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(try_from = "HostForm")]
pub enum HostSettings {
    /// The request's own Host.
    #[default]
    Keep,
    /// Istio's convention: `-shadow` after the host name (`world-shadow`,
    /// `world-shadow:8080`: before the port, never after it).
    Suffix,
    /// A fixed value.
    Set(String),
}

/// `host:` as written: a word, or `{set: ...}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum HostForm {
    Word(String),
    Set { set: String },
}

impl TryFrom<HostForm> for HostSettings {
    type Error = String;
    fn try_from(f: HostForm) -> Result<HostSettings, String> {
        match f {
            HostForm::Word(w) if w == "keep" => Ok(HostSettings::Keep),
            HostForm::Word(w) if w == "suffix" => Ok(HostSettings::Suffix),
            HostForm::Word(w) => Err(format!(
                "host: {w:?} is none of keep, suffix, {{set: NAME}}"
            )),
            HostForm::Set { set } => Ok(HostSettings::Set(set)),
        }
    }
}

/// How the copies are made and carried; read at start except where noted.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowSettings {
    /// The header every copy carries (value `1`), so that services can
    /// tell a copy and avoid side effects.
    pub marker_header: String,
    /// The request header that asks for a copy of this one request to the
    /// dtab path it names (`l5d-mirror: /srv/world-v2`); who may send it
    /// is the override policy's decision, like `l5d-dtab`.
    pub request_header: String,
    /// Copies in flight at once per target, per worker.
    pub max_in_flight: usize,
    /// Copies waiting for a slot per target, per worker; past it a copy is
    /// dropped and counted.
    pub max_queued: usize,
    /// How long a copy may take, from its connect to the end of its
    /// answer.
    pub timeout_ms: u64,
    /// Request bodies up to this size are copied; a larger one is not (the
    /// request still goes to its version, streamed as ever). What a diff
    /// keeps of each answer's body is `diff.max_body_bytes`.
    pub max_body_bytes: usize,
}

impl Default for ShadowSettings {
    fn default() -> ShadowSettings {
        ShadowSettings {
            marker_header: "l5d-shadow".into(),
            request_header: "l5d-mirror".into(),
            max_in_flight: 32,
            max_queued: 128,
            timeout_ms: 5_000,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl ShadowSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (what, name) in [
            ("marker_header", &self.marker_header),
            ("request_header", &self.request_header),
        ] {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(format!("shadow.{what}: {name:?} is not a header name"));
            }
        }
        if self.max_in_flight == 0 {
            return Err("shadow.max_in_flight must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("shadow.timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One entry, checked.
#[derive(Clone, Debug)]
pub struct Mirror {
    pub name: Path,
    pub to: Path,
    /// The share copied, in basis points (0.01%).
    pub share: u32,
    /// Lower case.
    pub sticky_header: Option<String>,
    pub host: HostSettings,
    pub allow_writes: bool,
    pub secondary: Option<Path>,
}

/// The entries in force.
#[derive(Clone, Debug, Default)]
pub struct Mirrors {
    entries: Vec<Mirror>,
}

impl Mirrors {
    pub fn new(settings: &[MirrorSettings]) -> Result<Mirrors, String> {
        let entries = settings
            .iter()
            .enumerate()
            .map(|(i, s)| Mirror::new(s).map_err(|e| format!("mirrors[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Mirrors { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&Mirror> {
        self.entries.get(i)
    }

    /// The entries whose prefix covers `name`, with their index.
    pub fn for_name<'a>(&'a self, name: &'a Path) -> impl Iterator<Item = (usize, &'a Mirror)> {
        self.entries
            .iter()
            .enumerate()
            .filter(move |(_, m)| name.starts_with(&m.name))
    }
}

fn parse_path(what: &str, text: &str) -> Result<Path, String> {
    Path::read(text).map_err(|e| format!("{what} {text:?}: {e}"))
}

impl Mirror {
    fn new(s: &MirrorSettings) -> Result<Mirror, String> {
        if !(0.0..=100.0).contains(&s.percent) {
            return Err(format!("percent {} is not within 0..100", s.percent));
        }
        let share = (s.percent * 100.0).round() as u32;
        if ((share as f64) / 100.0 - s.percent).abs() > 1e-9 {
            return Err(format!(
                "percent {} is finer than 0.01 (the share is exact to 0.01%)",
                s.percent
            ));
        }
        if let HostSettings::Set(h) = &s.host
            && (h.is_empty() || h.bytes().any(|b| b.is_ascii_control() || b == b' '))
        {
            return Err(format!("host {h:?} is not a host"));
        }
        if let Some(h) = &s.sticky_header
            && (h.is_empty() || !h.bytes().all(is_token_byte))
        {
            return Err(format!("sticky_header {h:?} is not a header name"));
        }
        Ok(Mirror {
            name: parse_path("name", &s.name)?,
            to: parse_path("to", &s.to)?,
            share,
            sticky_header: s.sticky_header.as_ref().map(|h| h.to_ascii_lowercase()),
            host: s.host.clone(),
            allow_writes: s.allow_writes,
            secondary: s
                .secondary
                .as_deref()
                .map(|p| parse_path("secondary", p))
                .transpose()?,
        })
    }

    /// A mirror for one request, asked for by its own header: every copy,
    /// reads only, Host kept.
    pub fn per_request(name: Path, to: Path) -> Mirror {
        Mirror {
            name,
            to,
            share: BASIS,
            sticky_header: None,
            host: HostSettings::Keep,
            allow_writes: false,
            secondary: None,
        }
    }

    /// Whether a request is copied: `sticky` is the value of the entry's
    /// sticky header when the request has it, `random` a fresh random
    /// number for the others.
    pub fn takes(&self, method: &[u8], sticky: Option<&[u8]>, random: u64) -> Verdict {
        if !self.allow_writes && !is_safe(method) {
            return Verdict::Write;
        }
        if self.share >= BASIS {
            return Verdict::Copy;
        }
        let draw = match sticky {
            // Salted with the target, so that two targets at 10% do not
            // take the very same customers.
            Some(v) => {
                let mut state = stable_hash(v) ^ stable_hash(self.to.to_string().as_bytes());
                splitmix(&mut state)
            }
            None => random,
        };
        if (draw % u64::from(BASIS)) < u64::from(self.share) {
            Verdict::Copy
        } else {
            Verdict::Skip
        }
    }

    /// The Host a copy carries, written into `out`; `None`: the request's own.
    pub fn host<'a>(&'a self, host: &[u8], out: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        match &self.host {
            HostSettings::Keep => None,
            HostSettings::Set(h) => Some(h.as_bytes()),
            HostSettings::Suffix => {
                out.clear();
                // The port, if any, stays last: `[::1]:80` has colons
                // inside its brackets.
                let port_at = match host.iter().rposition(|&b| b == b':') {
                    Some(i) if !host[i..].contains(&b']') => i,
                    _ => host.len(),
                };
                out.extend_from_slice(&host[..port_at]);
                out.extend_from_slice(b"-shadow");
                out.extend_from_slice(&host[port_at..]);
                Some(out)
            }
        }
    }
}

/// What a mirror does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Copy,
    /// Not in the share.
    Skip,
    /// A method that changes state, on an entry that copies reads only.
    Write,
}

/// Methods that do not change state (RFC 9110 §9.2.1).
pub fn is_safe(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(yaml: &str) -> Result<Mirror, String> {
        let s: MirrorSettings = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        Mirror::new(&s)
    }

    #[test]
    fn settings_are_checked() {
        let m = entry("{name: /svc/world, to: /srv/world-v2, percent: 12.34}").unwrap();
        assert_eq!(m.share, 1234);
        assert_eq!(m.host, HostSettings::Keep);
        assert!(entry("{name: /svc/world, to: /srv/v2, percent: 0.001}").is_err());
        assert!(entry("{name: /svc/world, to: /srv/v2, percent: 101}").is_err());
        assert!(entry("{name: svc, to: /srv/v2}").is_err());
        assert!(entry("{name: /svc, to: /srv/v2, host: {set: ''}}").is_err());
        assert!(entry("{name: /svc, to: /srv/v2, host: shadow}").is_err());
        assert!(entry("{name: /svc, to: /srv/v2, sticky_header: 'a b'}").is_err());
        assert!(entry("{name: /svc, to: /srv/v2, colour: red}").is_err());
        let m = entry("{name: /svc, to: /srv/v2, host: suffix, secondary: /srv/v1b}").unwrap();
        assert_eq!(m.host, HostSettings::Suffix);
        assert_eq!(m.secondary.unwrap().to_string(), "/srv/v1b");
        let defaults = ShadowSettings::default();
        assert!(defaults.validate().is_ok());
        let bad = ShadowSettings {
            marker_header: "no good".into(),
            ..defaults
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn entries_apply_by_prefix() {
        let ms = Mirrors::new(&[
            serde_yaml_ng::from_str("{name: /svc/world, to: /srv/a}").unwrap(),
            serde_yaml_ng::from_str("{name: /svc, to: /srv/b}").unwrap(),
            serde_yaml_ng::from_str("{name: /svc/hello, to: /srv/c}").unwrap(),
        ])
        .unwrap();
        let name = Path::read("/svc/world").unwrap();
        let hit: Vec<usize> = ms.for_name(&name).map(|(i, _)| i).collect();
        assert_eq!(hit, [0, 1]);
        let other = Path::read("/svc/worldwide").unwrap();
        assert_eq!(ms.for_name(&other).count(), 1);
    }

    #[test]
    fn writes_are_copied_only_when_allowed() {
        let m = entry("{name: /svc, to: /srv/v2}").unwrap();
        assert_eq!(m.takes(b"GET", None, 0), Verdict::Copy);
        assert_eq!(m.takes(b"HEAD", None, 0), Verdict::Copy);
        for method in [&b"POST"[..], b"PUT", b"PATCH", b"DELETE", b"CONNECT"] {
            assert_eq!(m.takes(method, None, 0), Verdict::Write);
        }
        let m = entry("{name: /svc, to: /srv/v2, allow_writes: true}").unwrap();
        assert_eq!(m.takes(b"POST", None, 0), Verdict::Copy);
    }

    #[test]
    fn the_share_is_exact_to_a_basis_point() {
        let m = entry("{name: /svc, to: /srv/v2, percent: 0.01}").unwrap();
        // Exactly one draw in 10,000 is in the share.
        let taken = (0..u64::from(BASIS))
            .filter(|r| m.takes(b"GET", None, *r) == Verdict::Copy)
            .count();
        assert_eq!(taken, 1);
        let m = entry("{name: /svc, to: /srv/v2, percent: 37.5}").unwrap();
        let taken = (0..u64::from(BASIS))
            .filter(|r| m.takes(b"GET", None, *r) == Verdict::Copy)
            .count();
        assert_eq!(taken, 3750);
        let none = entry("{name: /svc, to: /srv/v2, percent: 0}").unwrap();
        assert!((0..1000).all(|r| none.takes(b"GET", None, r) == Verdict::Skip));
    }

    #[test]
    fn a_sticky_value_is_always_or_never_copied() {
        let m = entry("{name: /svc, to: /srv/v2, percent: 30, sticky_header: X-Customer}").unwrap();
        assert_eq!(m.sticky_header.as_deref(), Some("x-customer"));
        let mut taken = 0;
        for c in 0..2000 {
            let key = format!("customer-{c}");
            let first = m.takes(b"GET", Some(key.as_bytes()), 0);
            // Whatever the random number, the same answer.
            for r in [1, 77, u64::MAX] {
                assert_eq!(m.takes(b"GET", Some(key.as_bytes()), r), first);
            }
            taken += usize::from(first == Verdict::Copy);
        }
        // 30% of 2000 customers, within five standard deviations (~20.5).
        assert!(
            (497..=703).contains(&taken),
            "{taken} customers of 2000 copied"
        );
    }

    #[test]
    fn hosts_of_copies() {
        let mut out = Vec::new();
        let m = entry("{name: /svc, to: /srv/v2, host: suffix}").unwrap();
        assert_eq!(m.host(b"world", &mut out), Some(&b"world-shadow"[..]));
        assert_eq!(
            m.host(b"world:8080", &mut out),
            Some(&b"world-shadow:8080"[..])
        );
        assert_eq!(m.host(b"[::1]:80", &mut out), Some(&b"[::1]-shadow:80"[..]));
        assert_eq!(m.host(b"[::1]", &mut out), Some(&b"[::1]-shadow"[..]));
        let m = entry("{name: /svc, to: /srv/v2, host: {set: world-canary}}").unwrap();
        assert_eq!(m.host(b"world:8080", &mut out), Some(&b"world-canary"[..]));
        let m = entry("{name: /svc, to: /srv/v2}").unwrap();
        assert_eq!(m.host(b"world", &mut out), None);
    }
}
