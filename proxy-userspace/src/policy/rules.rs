//! Routing rules: facts about a request picking the version it gets.
//!
//! Each rule of the `rules:` setting is a match and a dtab. Per request the
//! rules are tried in order and the first that matches adds its dtab to the
//! request's routing, after the base dtab and before the request's own
//! override (`l5d-ctx-dtab`, then `l5d-dtab`), so a request's override
//! still has the last word. A match is every condition it lists (all of):
//!
//! - `headers`: a header's value is `exact`ly, starts with a `prefix`, or
//!   matches a `regex` (the regex crate's syntax, anchored by the author);
//! - `cookies`: the same for a cookie of the `Cookie` header;
//! - `query`: the same for a query parameter of the target;
//! - `name`: the same for the logical name (`/svc/builder`);
//! - `sources`: the client's address is in one of these networks;
//! - `namespaces`: the calling pod is in one of these Kubernetes
//!   namespaces (known on a node whose namer watches its pods; a caller
//!   of unknown namespace matches none);
//! - `pod_labels`: the calling pod's label of that name is exactly, starts
//!   with, or matches the value (known as namespaces are).
//!
//! A header, cookie or parameter the request lacks matches nothing. The
//! rule's dtab is not forwarded downstream: the next proxy applies its own
//! rules. Pure: the request's facts come in as a [`Facts`].

use std::net::IpAddr;

use serde::Deserialize;

use crate::dtab::Dtab;

use super::overrides::Network;

/// A rule as the settings state it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// The rule's name: in `/delegator`, and the `rule` label of the
    /// route metrics.
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchSettings,
    /// The entries added for a request the rule matches.
    pub dtab: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MatchSettings {
    pub headers: Vec<ValueMatchSettings>,
    pub cookies: Vec<ValueMatchSettings>,
    pub query: Vec<ValueMatchSettings>,
    pub name: Option<TextMatchSettings>,
    pub sources: Vec<String>,
    pub namespaces: Vec<String>,
    pub pod_labels: Vec<ValueMatchSettings>,
}

/// A named value (header, cookie, parameter) and how it must look.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSettings {
    pub name: String,
    #[serde(flatten)]
    pub how: TextMatchSettings,
}

/// One of `exact`, `prefix` or `regex`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TextMatchSettings {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// How a value must look.
#[derive(Clone, Debug)]
enum TextMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(regex::bytes::Regex),
}

impl TextMatch {
    fn new(s: &TextMatchSettings) -> Result<TextMatch, String> {
        Ok(match (&s.exact, &s.prefix, &s.regex) {
            (Some(v), None, None) => TextMatch::Exact(v.as_bytes().into()),
            (None, Some(v), None) => TextMatch::Prefix(v.as_bytes().into()),
            (None, None, Some(r)) => TextMatch::Regex(
                regex::bytes::Regex::new(r).map_err(|e| format!("regex {r:?}: {e}"))?,
            ),
            _ => return Err("a match takes one of exact, prefix and regex".into()),
        })
    }

    fn matches(&self, v: &[u8]) -> bool {
        match self {
            TextMatch::Exact(want) => v == &**want,
            TextMatch::Prefix(want) => v.starts_with(want),
            TextMatch::Regex(re) => re.is_match(v),
        }
    }
}

/// A named value's condition: the name lower-cased for headers.
#[derive(Clone, Debug)]
struct ValueMatch {
    name: Box<[u8]>,
    how: TextMatch,
}

/// One rule, parsed.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// The entries the rule adds.
    pub dtab: Dtab,
    headers: Vec<ValueMatch>,
    cookies: Vec<ValueMatch>,
    query: Vec<ValueMatch>,
    logical_name: Option<TextMatch>,
    sources: Vec<Network>,
    namespaces: Vec<String>,
    pod_labels: Vec<ValueMatch>,
}

/// What a rule may ask about a request: borrowed from its head.
pub trait Facts {
    /// Every value of the header `name` (lower-case).
    fn header_values(&self, name: &[u8], each: &mut dyn FnMut(&[u8]) -> bool) -> bool;
    /// The request target (`/path?query`).
    fn target(&self) -> &[u8];
    /// The logical name (`/svc/builder`).
    fn logical_name(&self) -> &[u8];
    /// The client's address.
    fn source(&self) -> IpAddr;
    /// The calling pod's namespace, when known.
    fn source_namespace(&self) -> Option<&str> {
        None
    }
    /// A label of the calling pod, when known.
    fn source_label(&self, _name: &str) -> Option<&str> {
        None
    }
}

impl Rule {
    pub fn new(s: &RuleSettings) -> Result<Rule, String> {
        let at = |e: String| format!("rules: {:?}: {e}", s.name);
        let values = |list: &[ValueMatchSettings], lower: bool| {
            list.iter()
                .map(|v| {
                    let name = if lower {
                        v.name.to_ascii_lowercase()
                    } else {
                        v.name.clone()
                    };
                    Ok(ValueMatch {
                        name: name.into_bytes().into(),
                        how: TextMatch::new(&v.how)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let m = &s.matches;
        Ok(Rule {
            name: s.name.clone(),
            dtab: Dtab::parse(&s.dtab).map_err(|e| at(format!("dtab: {e}")))?,
            headers: values(&m.headers, true).map_err(at)?,
            cookies: values(&m.cookies, false).map_err(at)?,
            query: values(&m.query, false).map_err(at)?,
            logical_name: m
                .name
                .as_ref()
                .map(TextMatch::new)
                .transpose()
                .map_err(at)?,
            sources: m
                .sources
                .iter()
                .map(|n| Network::parse(n))
                .collect::<Result<_, _>>()
                .map_err(at)?,
            namespaces: m.namespaces.clone(),
            pod_labels: values(&m.pod_labels, false).map_err(at)?,
        })
    }

    /// Whether every condition holds for the request.
    pub fn matches(&self, f: &dyn Facts) -> bool {
        (self.sources.is_empty() || self.sources.iter().any(|n| n.contains(f.source())))
            && (self.namespaces.is_empty()
                || f.source_namespace()
                    .is_some_and(|ns| self.namespaces.iter().any(|n| n == ns)))
            && self.pod_labels.iter().all(|l| {
                std::str::from_utf8(&l.name)
                    .ok()
                    .and_then(|name| f.source_label(name))
                    .is_some_and(|v| l.how.matches(v.as_bytes()))
            })
            && self
                .logical_name
                .as_ref()
                .is_none_or(|m| m.matches(f.logical_name()))
            && self
                .headers
                .iter()
                .all(|h| f.header_values(&h.name, &mut |v| h.how.matches(v.trim_ascii())))
            && self.cookies.iter().all(|c| {
                f.header_values(b"cookie", &mut |line| {
                    pairs(line, b';').any(|(k, v)| k == &*c.name && c.how.matches(v))
                })
            })
            && self.query.iter().all(|q| {
                let target = f.target();
                let query = target
                    .iter()
                    .position(|b| *b == b'?')
                    .map_or(&b""[..], |i| &target[i + 1..]);
                pairs(query, b'&').any(|(k, v)| k == &*q.name && q.how.matches(v))
            })
    }
}

/// `k=v` pairs separated by `sep` (white space around them trimmed).
fn pairs(text: &[u8], sep: u8) -> impl Iterator<Item = (&[u8], &[u8])> {
    text.split(move |b| *b == sep).filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        Some((&pair[..eq], &pair[eq + 1..]))
    })
}

/// The rules, in order.
#[derive(Clone, Debug, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn new(settings: &[RuleSettings]) -> Result<Rules, String> {
        settings
            .iter()
            .map(Rule::new)
            .collect::<Result<_, _>>()
            .map(Rules)
    }

    /// The first rule that matches, by index.
    pub fn first_match(&self, f: &dyn Facts) -> Option<usize> {
        self.0.iter().position(|r| r.matches(f))
    }

    pub fn get(&self, i: usize) -> Option<&Rule> {
        self.0.get(i)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        headers: Vec<(&'static str, &'static str)>,
        target: &'static str,
        name: &'static str,
        source: &'static str,
    }

    impl Facts for Req {
        fn header_values(&self, name: &[u8], each: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            self.headers
                .iter()
                .filter(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name))
                .any(|(_, v)| each(v.as_bytes()))
        }
        fn target(&self) -> &[u8] {
            self.target.as_bytes()
        }
        fn logical_name(&self) -> &[u8] {
            self.name.as_bytes()
        }
        fn source(&self) -> IpAddr {
            self.source.parse().unwrap()
        }
    }

    fn req(headers: &[(&'static str, &'static str)]) -> Req {
        Req {
            headers: headers.to_vec(),
            target: "/build?beta=1&x=y",
            name: "/svc/builder",
            source: "10.1.2.3",
        }
    }

    fn rules(yaml: &str) -> Rules {
        let s: Vec<RuleSettings> = serde_yaml_ng::from_str(yaml).unwrap();
        Rules::new(&s).unwrap()
    }

    const PLANS: &str = "
- name: acme-beta
  match:
    headers: [{name: X-Customer, exact: acme}]
  dtab: /host/builder => /srv/builder-beta
- name: staff
  match:
    headers: [{name: x-customer, regex: '^staff-[0-9]+$'}]
  dtab: /host/builder => /srv/builder-beta
- name: free-plan
  match:
    cookies: [{name: plan, prefix: free}]
    name: {exact: /svc/builder}
  dtab: /host/builder => /srv/builder-v23
";

    #[test]
    fn the_first_rule_that_matches_wins() {
        let r = rules(PLANS);
        let first = |h: &[(&'static str, &'static str)]| r.first_match(&req(h));
        assert_eq!(first(&[("x-customer", "acme")]), Some(0));
        // Earlier rules win over later ones that also match.
        assert_eq!(
            first(&[("x-customer", "acme"), ("cookie", "plan=free")]),
            Some(0)
        );
        assert_eq!(first(&[("x-customer", "staff-42")]), Some(1));
        assert_eq!(first(&[("x-customer", "staff-42x")]), None);
        assert_eq!(first(&[("cookie", "a=b; plan=free-2026")]), Some(2));
        assert_eq!(first(&[("cookie", "plan=paid")]), None);
        assert_eq!(first(&[]), None);
        assert_eq!(
            r.get(2).unwrap().dtab.to_string(),
            "/host/builder=>/srv/builder-v23"
        );
    }

    #[test]
    fn every_condition_of_a_match_must_hold() {
        let r = rules(
            "
- name: all-of
  match:
    headers: [{name: x-plan, exact: free}, {name: x-region, prefix: eu-}]
    query: [{name: beta, exact: '1'}]
    name: {prefix: /svc/build}
    sources: [10.0.0.0/8, 192.168.0.0/16]
  dtab: /a => /b
",
        );
        let all = [("x-plan", "free"), ("x-region", "eu-west")];
        assert_eq!(r.first_match(&req(&all)), Some(0));
        assert_eq!(r.first_match(&req(&all[..1])), None, "a header missing");
        let mut elsewhere = req(&all);
        elsewhere.source = "172.16.0.1";
        assert_eq!(r.first_match(&elsewhere), None, "another source");
        let mut no_query = req(&all);
        no_query.target = "/build";
        assert_eq!(r.first_match(&no_query), None, "no query parameter");
        let mut other_name = req(&all);
        other_name.name = "/svc/web";
        assert_eq!(r.first_match(&other_name), None, "another name");
    }

    #[test]
    fn bad_rules_are_errors() {
        for yaml in [
            "- {name: a, match: {headers: [{name: x, regex: '('}]}, dtab: /a => /b}",
            "- {name: a, dtab: 'not a dtab'}",
            "- {name: a, match: {sources: [10.0.0.0/40]}, dtab: /a => /b}",
            "- {name: a, match: {headers: [{name: x, exact: a, prefix: b}]}, dtab: /a => /b}",
            "- {name: a, match: {name: {}}, dtab: /a => /b}",
        ] {
            let s: Vec<RuleSettings> = serde_yaml_ng::from_str(yaml).unwrap();
            assert!(Rules::new(&s).is_err(), "{yaml}");
        }
        let unknown: Result<Vec<RuleSettings>, _> =
            serde_yaml_ng::from_str("- {name: a, match: {header: []}, dtab: /a => /b}");
        assert!(unknown.is_err());
    }

    /// A request from a pod of `shop` labelled `team=checkout`.
    struct FromPod(Req);

    impl Facts for FromPod {
        fn header_values(&self, name: &[u8], each: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            self.0.header_values(name, each)
        }
        fn target(&self) -> &[u8] {
            self.0.target()
        }
        fn logical_name(&self) -> &[u8] {
            self.0.logical_name()
        }
        fn source(&self) -> IpAddr {
            self.0.source()
        }
        fn source_namespace(&self) -> Option<&str> {
            Some("shop")
        }
        fn source_label(&self, name: &str) -> Option<&str> {
            (name == "team").then_some("checkout")
        }
    }

    #[test]
    fn the_calling_pods_namespace_and_labels() {
        let r = rules(
            "
- name: by-namespace
  match: {namespaces: [blog, shop]}
  dtab: /a => /b
- name: by-label
  match: {pod_labels: [{name: team, prefix: check}]}
  dtab: /a => /c
",
        );
        // A caller whose pod is unknown matches neither.
        assert_eq!(r.first_match(&req(&[])), None);
        assert_eq!(r.first_match(&FromPod(req(&[]))), Some(0));
        let r = rules(
            "
- name: by-label
  match: {pod_labels: [{name: team, exact: checkout}], namespaces: [shop]}
  dtab: /a => /c
- name: other-label
  match: {pod_labels: [{name: tier, exact: web}]}
  dtab: /a => /d
",
        );
        assert_eq!(r.first_match(&FromPod(req(&[]))), Some(0));
        let r = rules(
            "- {name: x, match: {pod_labels: [{name: team, exact: search}]}, dtab: /a => /c}",
        );
        assert_eq!(r.first_match(&FromPod(req(&[]))), None);
    }
}
