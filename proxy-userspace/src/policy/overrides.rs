//! Override policy: who may send a dtab with a request (`l5d-dtab`,
//! `l5d-ctx-dtab`), and what it may say.
//!
//! - **Who** ([`Mode`]): anyone (`any`, Linkerd 1's behaviour), clients
//!   from listed source networks (`trusted`), whoever signed the override
//!   with a key the proxy holds (`signed`, see [`super::signing`]), or
//!   nobody (`off`).
//! - **What**: each entry's prefix must lie under one of
//!   `rewritable_prefixes` (empty: any), and every name its tree binds to
//!   must lie under one of `allowed_destinations` (empty: any) and under
//!   none of `denied_destinations`. The default denies `/$`, the literal
//!   addresses (`/$/inet/127.0.0.1/9990`), so that an override reaches only
//!   names the operator's dtab and namers define, never the admin port,
//!   loopback or the node's own addresses.
//! - **At the edge** (`edge: true`), every `l5d-` header a client sends is
//!   removed before routing and forwarding (Linkerd 1's `clearContext`).
//!
//! A refused override is answered 403 with `l5d-err` naming the entry and
//! the reason, or, with `on_refusal: drop`, routed as if it were not there;
//! either way it is counted and never forwarded. Pure: no I/O.

use std::net::IpAddr;

use serde::Deserialize;

use super::signing::{Keys, Signature, SignatureError};
use crate::dtab::{Dentry, Dtab, Path, Prefix, PrefixElem};

/// Who may send an override.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Overrides are dropped (and counted) from everyone.
    Off,
    /// Overrides are honoured from `trusted_sources` only.
    Trusted,
    /// Overrides are honoured when signed with a key in `keys_dir`.
    Signed,
    /// Overrides are honoured from anyone (what they may say still holds).
    #[default]
    Any,
}

/// What happens to an override the policy refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRefusal {
    /// 403 with `l5d-err`.
    #[default]
    Reject,
    /// Routed as if the request carried no override.
    Drop,
}

/// The policy as the settings file states it (`overrides:`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OverrideSettings {
    pub mode: Mode,
    /// Source networks (`10.0.0.0/8`, `::1/128`) whose overrides `trusted`
    /// mode honours.
    pub trusted_sources: Vec<String>,
    /// Kubernetes namespaces whose pods' overrides `trusted` mode honours
    /// (on a node whose namer watches its pods).
    pub trusted_namespaces: Vec<String>,
    /// Prefixes an override's entries may rewrite (`/host`, `/svc/*`);
    /// empty: any.
    pub rewritable_prefixes: Vec<String>,
    /// Names an override may bind to (`/srv`); empty: any not denied.
    pub allowed_destinations: Vec<String>,
    /// Names an override may never bind to.
    pub denied_destinations: Vec<String>,
    pub on_refusal: OnRefusal,
    /// Remove every `l5d-` header clients send (an edge proxy); with
    /// `mode: signed`, a signed override stays.
    pub edge: bool,
    /// The keys of `mode: signed`: one file per key, named by its id (a
    /// Kubernetes Secret volume), re-read when the directory changes.
    pub keys_dir: Option<std::path::PathBuf>,
}

impl Default for OverrideSettings {
    fn default() -> Self {
        OverrideSettings {
            mode: Mode::Any,
            trusted_sources: Vec::new(),
            trusted_namespaces: Vec::new(),
            rewritable_prefixes: Vec::new(),
            allowed_destinations: Vec::new(),
            denied_destinations: vec!["/$".into()],
            on_refusal: OnRefusal::Reject,
            edge: false,
            keys_dir: None,
        }
    }
}

/// The policy, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct OverridePolicy {
    pub mode: Mode,
    trusted: Vec<Network>,
    trusted_namespaces: Vec<String>,
    prefixes: Vec<Prefix>,
    allowed: Vec<Path>,
    denied: Vec<Path>,
    pub on_refusal: OnRefusal,
    pub edge: bool,
    /// What signed overrides may be signed with.
    pub keys: Keys,
}

impl Default for OverridePolicy {
    fn default() -> Self {
        OverridePolicy::new(&OverrideSettings::default()).expect("the default policy parses")
    }
}

/// A source network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Network {
    addr: IpAddr,
    len: u8,
}

impl Network {
    pub(crate) fn parse(s: &str) -> Result<Network, String> {
        let (addr, len) = s.split_once('/').map_or((s, None), |(a, l)| (a, Some(l)));
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
        };
        Ok(Network { addr, len })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether a source may send overrides at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceVerdict {
    Honoured,
    /// Dropped whatever `on_refusal` says (`off`).
    Dropped,
    /// Not a trusted source: refused as `on_refusal` says.
    Refused,
}

/// Why an override was refused: the entry and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("overrides are not accepted from {0} (overrides.trusted_sources, trusted_namespaces)")]
    Source(IpAddr),
    #[error("{0}")]
    Signature(SignatureError),
    #[error(
        "override entry {index} ({entry}) rewrites a prefix overrides may not (overrides.rewritable_prefixes)"
    )]
    Prefix { index: usize, entry: String },
    #[error(
        "override entry {index} ({entry}) binds to {name}, which overrides may not (overrides.{rule})"
    )]
    Destination {
        index: usize,
        entry: String,
        name: String,
        rule: &'static str,
    },
    #[error("a copy may not go to {name} (overrides.{rule})")]
    MirrorDestination { name: String, rule: &'static str },
    #[error("per-request mirrors are not accepted in overrides.mode: {0}")]
    MirrorMode(&'static str),
}

impl OverridePolicy {
    pub fn new(s: &OverrideSettings) -> Result<OverridePolicy, String> {
        let paths = |key: &str, list: &[String]| {
            list.iter()
                .map(|p| {
                    Path::read(p.trim_end_matches("/*"))
                        .map_err(|e| format!("overrides.{key}: {p:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(OverridePolicy {
            mode: s.mode,
            trusted: s
                .trusted_sources
                .iter()
                .map(|n| Network::parse(n).map_err(|e| format!("overrides.trusted_sources: {e}")))
                .collect::<Result<_, _>>()?,
            trusted_namespaces: s.trusted_namespaces.clone(),
            prefixes: s
                .rewritable_prefixes
                .iter()
                .map(|p| {
                    Prefix::read(p.trim_end_matches("/*"))
                        .map_err(|e| format!("overrides.rewritable_prefixes: {p:?}: {e}"))
                })
                .collect::<Result<_, _>>()?,
            allowed: paths("allowed_destinations", &s.allowed_destinations)?,
            denied: paths("denied_destinations", &s.denied_destinations)?,
            on_refusal: s.on_refusal,
            edge: s.edge,
            keys: Keys::default(),
        })
    }

    /// The policy with these keys for signed overrides.
    pub fn with_keys(mut self, keys: Keys) -> OverridePolicy {
        self.keys = keys;
        self
    }

    /// Whether overrides from `source` are considered at all.
    pub fn source(&self, source: IpAddr) -> SourceVerdict {
        self.source_in(source, None)
    }

    /// [`OverridePolicy::source`] for a client known to be a pod of
    /// `namespace`: `trusted_namespaces` count too.
    pub fn source_in(&self, source: IpAddr, namespace: Option<&str>) -> SourceVerdict {
        let trusted = || {
            self.trusted.iter().any(|n| n.contains(source))
                || namespace.is_some_and(|ns| self.trusted_namespaces.iter().any(|t| t == ns))
        };
        match self.mode {
            // The signature decides, wherever it came from.
            Mode::Any | Mode::Signed => SourceVerdict::Honoured,
            Mode::Off => SourceVerdict::Dropped,
            Mode::Trusted if trusted() => SourceVerdict::Honoured,
            Mode::Trusted => SourceVerdict::Refused,
        }
    }

    /// Checks every entry of a request's dtab (`l5d-ctx-dtab` then
    /// `l5d-dtab`, combined): the first that breaks a rule is the refusal.
    pub fn check(&self, dtab: &Dtab) -> Result<(), Refusal> {
        for (index, dentry) in dtab.dentries().iter().enumerate() {
            self.check_entry(index, dentry)?;
        }
        Ok(())
    }

    /// In `signed` mode, the signature of a request's combined override
    /// (`sig`, the `l5d-dtab-sig` value) at `now` (unix seconds): until
    /// when it holds. Other modes need none (`None`).
    pub fn check_signature(
        &self,
        dtab: &Dtab,
        sig: Option<&[u8]>,
        now: u64,
    ) -> Result<Option<u64>, Refusal> {
        if self.mode != Mode::Signed || dtab.is_empty() {
            return Ok(None);
        }
        let sig = Signature::parse(sig.ok_or(Refusal::Signature(SignatureError::Missing))?)
            .map_err(Refusal::Signature)?;
        sig.verify(dtab, &self.keys, now)
            .map_err(Refusal::Signature)?;
        Ok(Some(sig.expires))
    }

    /// Checks where a request asks its copy to go (`l5d-mirror`): the
    /// destination rules as for an override's entries. In `signed` mode a
    /// mirror is refused (its header is not signed), and in `off` mode it
    /// never gets here.
    pub fn check_destination(&self, to: &Path) -> Result<(), Refusal> {
        if self.mode == Mode::Signed {
            return Err(Refusal::MirrorMode("signed"));
        }
        match self.destination_rule(to) {
            Some(rule) => Err(Refusal::MirrorDestination {
                name: to.to_string(),
                rule,
            }),
            None => Ok(()),
        }
    }

    /// The destination rule `name` breaks, if any.
    fn destination_rule(&self, name: &Path) -> Option<&'static str> {
        if self.denied.iter().any(|p| name.starts_with(p)) {
            Some("denied_destinations")
        } else if !self.allowed.is_empty() && !self.allowed.iter().any(|p| name.starts_with(p)) {
            Some("allowed_destinations")
        } else {
            None
        }
    }

    fn check_entry(&self, index: usize, d: &Dentry) -> Result<(), Refusal> {
        let entry = || d.to_string();
        if !self.prefixes.is_empty() && !self.prefixes.iter().any(|p| covers(p, &d.prefix)) {
            return Err(Refusal::Prefix {
                index,
                entry: entry(),
            });
        }
        let mut refused = None;
        d.dst.for_each_leaf(&mut |name: &Path| {
            if refused.is_some() {
                return;
            }
            refused = self
                .destination_rule(name)
                .map(|rule| (name.to_string(), rule));
        });
        match refused {
            Some((name, rule)) => Err(Refusal::Destination {
                index,
                entry: entry(),
                name,
                rule,
            }),
            None => Ok(()),
        }
    }
}

/// Whether every path `entry` matches lies under `allowed`: `allowed` is
/// no longer, and each of its elements is `*` or the same label (an entry
/// `*` where `allowed` has a label would reach beyond it).
fn covers(allowed: &Prefix, entry: &Prefix) -> bool {
    allowed.len() <= entry.len()
        && allowed
            .elems()
            .iter()
            .zip(entry.elems())
            .all(|(a, e)| match (a, e) {
                (PrefixElem::Any, _) => true,
                (PrefixElem::Label(a), PrefixElem::Label(e)) => a == e,
                (PrefixElem::Label(_), PrefixElem::Any) => false,
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> OverridePolicy {
        let s: OverrideSettings = serde_yaml_ng::from_str(yaml).unwrap();
        OverridePolicy::new(&s).unwrap()
    }

    fn check(p: &OverridePolicy, dtab: &str) -> Result<(), Refusal> {
        p.check(&Dtab::parse(dtab).unwrap())
    }

    #[test]
    fn by_default_overrides_may_bind_any_name_but_no_literal_address() {
        let p = OverridePolicy::default();
        assert_eq!(check(&p, "/host/world => /srv/world-v2"), Ok(()));
        assert_eq!(check(&p, "/svc/a => /#/io.l5d.fs/a | /srv/b"), Ok(()));
        for ssrf in [
            "/svc/world => /$/inet/127.0.0.1/9990",
            "/svc/x => /srv/a & /$/inet/198.18.0.1/4140",
            "/srv => /$/inet/10.0.0.1/22",
            "/host/a => /srv/a; /svc/b => /srv/b | /$/inet/169.254.169.254/80",
        ] {
            let err = check(&p, ssrf).unwrap_err();
            assert!(
                matches!(&err, Refusal::Destination { rule: "denied_destinations", name, .. } if name.starts_with("/$/inet")),
                "{ssrf}: {err:?}"
            );
        }
        let err = check(&p, "/a => /b; /svc/x => /$/inet/127.0.0.1/1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "override entry 1 (/svc/x=>/$/inet/127.0.0.1/1) binds to /$/inet/127.0.0.1/1, \
             which overrides may not (overrides.denied_destinations)"
        );
    }

    #[test]
    fn prefixes_and_allowed_destinations_narrow_what_an_override_may_say() {
        let p =
            policy("rewritable_prefixes: [/host/*, /svc/world]\nallowed_destinations: [/srv]\n");
        assert_eq!(check(&p, "/host/world => /srv/world-v2"), Ok(()));
        assert_eq!(check(&p, "/host/*/x => /srv/y"), Ok(()));
        assert_eq!(check(&p, "/svc/world/v => /srv/w"), Ok(()));
        for (dtab, want_prefix) in [
            ("/svc => /srv/w", true),
            ("/*/world => /srv/w", true),
            ("/srv/a => /srv/b", true),
            ("/host/a => /#/io.l5d.fs/a", false),
            ("/host/a => /srvx", false),
        ] {
            let err = check(&p, dtab).unwrap_err();
            assert_eq!(
                matches!(err, Refusal::Prefix { .. }),
                want_prefix,
                "{dtab}: {err:?}"
            );
        }
        // Neg, fail and empty bind to nothing: allowed anywhere allowed.
        assert_eq!(check(&p, "/host/a => ~ | ! | $"), Ok(()));
    }

    #[test]
    fn sources_are_honoured_by_mode() {
        let trusted = policy("mode: trusted\ntrusted_sources: [198.18.0.0/15, '::1']\n");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(trusted.source(ip("198.19.2.3")), SourceVerdict::Honoured);
        assert_eq!(
            trusted.source(ip("::ffff:198.18.0.9")),
            SourceVerdict::Honoured
        );
        assert_eq!(trusted.source(ip("::1")), SourceVerdict::Honoured);
        assert_eq!(trusted.source(ip("198.20.0.1")), SourceVerdict::Refused);
        assert_eq!(trusted.source(ip("127.0.0.1")), SourceVerdict::Refused);
        let off = policy("mode: off\n");
        assert_eq!(off.source(ip("198.18.0.1")), SourceVerdict::Dropped);
        assert_eq!(
            OverridePolicy::default().source(ip("203.0.113.9")),
            SourceVerdict::Honoured
        );
    }

    #[test]
    fn bad_settings_are_errors() {
        for yaml in [
            "trusted_sources: [10.0.0.0/33]\n",
            "trusted_sources: [nonsense]\n",
            "rewritable_prefixes: ['no-slash']\n",
            "denied_destinations: ['/a b']\n",
        ] {
            let s: OverrideSettings = serde_yaml_ng::from_str(yaml).unwrap();
            assert!(OverridePolicy::new(&s).is_err(), "{yaml}");
        }
    }

    #[test]
    fn a_requested_mirror_is_held_to_the_destination_rules() {
        let p = policy("{denied_destinations: [/$, /srv/secret]}");
        let path = |s: &str| Path::read(s).unwrap();
        assert!(p.check_destination(&path("/srv/world-v2")).is_ok());
        assert!(matches!(
            p.check_destination(&path("/srv/secret/x")),
            Err(Refusal::MirrorDestination {
                rule: "denied_destinations",
                ..
            })
        ));
        assert!(
            p.check_destination(&path("/$/inet/127.0.0.1/9990"))
                .is_err()
        );
        let p = policy("{allowed_destinations: [/srv/world-v2]}");
        assert!(p.check_destination(&path("/srv/world-v2")).is_ok());
        assert!(matches!(
            p.check_destination(&path("/srv/other")),
            Err(Refusal::MirrorDestination {
                rule: "allowed_destinations",
                ..
            })
        ));
        let p = policy("{mode: signed}");
        assert_eq!(
            p.check_destination(&path("/srv/world-v2")),
            Err(Refusal::MirrorMode("signed"))
        );
    }

    #[test]
    fn trusted_namespaces_are_trusted_sources_too() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = policy(
            "mode: trusted\ntrusted_sources: [10.0.0.0/8]\ntrusted_namespaces: [platform]\n",
        );
        let pod = ip("10.244.1.5");
        assert_eq!(p.source_in(ip("10.1.2.3"), None), SourceVerdict::Honoured);
        assert_eq!(p.source_in(pod, Some("platform")), SourceVerdict::Honoured);
        assert_eq!(p.source_in(pod, Some("shop")), SourceVerdict::Honoured);
        let p = policy("mode: trusted\ntrusted_namespaces: [platform]\n");
        assert_eq!(p.source_in(pod, Some("platform")), SourceVerdict::Honoured);
        assert_eq!(p.source_in(pod, Some("shop")), SourceVerdict::Refused);
        assert_eq!(p.source_in(pod, None), SourceVerdict::Refused);
        assert_eq!(p.source(pod), SourceVerdict::Refused);
    }
}
