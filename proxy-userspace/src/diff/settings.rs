//! The diff engine's settings: thresholds, what is noise by construction,
//! and the bounds on what it keeps.

use serde::Deserialize;

/// How responses are compared and what the engine keeps. Read from the
/// config (`#[serde(default)]`: any field may be left out); hot reloaded
/// through [`super::Engine::set_settings`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffSettings {
    /// A field is reported only when `|raw - noise| / (raw + noise)`, in
    /// percent, exceeds this (Diffy's `threshold.relative`, 20).
    pub relative_threshold_pct: f64,
    /// ... and when `|raw - noise| / requests`, in percent of the
    /// endpoint's requests, exceeds this (Diffy's `threshold.absolute`,
    /// 0.03).
    pub absolute_threshold_pct: f64,
    /// Response headers never compared, case-insensitive; a trailing `*`
    /// matches a prefix (`x-b3-*`). The default lists the headers that
    /// differ between any two answers by construction: the clock, request
    /// and trace ids, the message framing, and what proxies add.
    pub ignore_headers: Vec<String>,
    /// Compare JSON arrays as multisets (order ignored) instead of index
    /// by index.
    pub arrays_as_sets: bool,
    /// A request header whose value names the endpoint, instead of the
    /// method and path template (for RPC-style APIs that POST everything
    /// to one path, or paths whose parameters are names, not ids).
    pub endpoint_header: Option<String>,
    /// Endpoints kept apart; requests of any further endpoint are counted
    /// under [`super::OTHER_ENDPOINT`].
    pub max_endpoints: usize,
    /// Fields counted per endpoint; differences in further fields are
    /// counted as the endpoint's `fields_overflowed`.
    pub max_fields_per_endpoint: usize,
    /// Samples kept per field: the first ones seen.
    pub samples_per_field: usize,
    /// Bodies are compared up to this many bytes. The data path captures
    /// at most this many; a longer body is compared by its length and this
    /// captured prefix only (see [`super::Response`]).
    pub max_body_bytes: usize,
    /// A kept sample shows at most this many bytes of each body.
    pub sample_body_bytes: usize,
    /// All samples together (request, responses, field values) take at
    /// most this many bytes; once it is spent no more samples are kept
    /// until a reset.
    pub max_sample_bytes: usize,
}

/// Headers that differ between any two answers whatever the versions do.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    // The clock.
    "date",
    // Different builds say so.
    "server",
    // Request and trace ids: new on every request.
    "x-request-id",
    "x-correlation-id",
    "x-amzn-trace-id",
    "x-b3-*",
    "b3",
    "traceparent",
    "tracestate",
    // Framing: the same body may be sent with a length or chunked, and a
    // body difference is reported as one already.
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    // Proxies' own: this one's l5d-reqid, l5d-err, l5d-success-class...
    "via",
    "l5d-*",
];

impl Default for DiffSettings {
    fn default() -> Self {
        DiffSettings {
            relative_threshold_pct: 20.0,
            absolute_threshold_pct: 0.03,
            ignore_headers: DEFAULT_IGNORED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            arrays_as_sets: false,
            endpoint_header: None,
            max_endpoints: 256,
            max_fields_per_endpoint: 256,
            samples_per_field: 3,
            max_body_bytes: 64 * 1024,
            sample_body_bytes: 4 * 1024,
            max_sample_bytes: 16 * 1024 * 1024,
        }
    }
}

impl DiffSettings {
    /// Checks the values a config may hold but the engine cannot use.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("relative_threshold_pct", self.relative_threshold_pct),
            ("absolute_threshold_pct", self.absolute_threshold_pct),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("diff.{name}: {v} is not a percentage (0 to 100)"));
            }
        }
        for h in &self.ignore_headers {
            let name = h.strip_suffix('*').unwrap_or(h);
            if h.is_empty() {
                return Err("diff.ignore_headers: an empty header name".into());
            }
            if !name.bytes().all(is_token) {
                return Err(format!(
                    "diff.ignore_headers: {h:?} is not a header name (a `*` may end it)"
                ));
            }
        }
        if let Some(h) = &self.endpoint_header
            && (h.is_empty() || !h.bytes().all(is_token))
        {
            return Err(format!("diff.endpoint_header: {h:?} is not a header name"));
        }
        for (name, v, min, max) in [
            ("max_endpoints", self.max_endpoints, 1, 65_536),
            (
                "max_fields_per_endpoint",
                self.max_fields_per_endpoint,
                1,
                65_536,
            ),
            ("samples_per_field", self.samples_per_field, 0, 100),
            ("max_body_bytes", self.max_body_bytes, 0, 16 << 20),
            ("sample_body_bytes", self.sample_body_bytes, 0, 1 << 20),
            ("max_sample_bytes", self.max_sample_bytes, 0, 1 << 30),
        ] {
            if !(min..=max).contains(&v) {
                return Err(format!("diff.{name}: {v} is outside {min}..={max}"));
            }
        }
        Ok(())
    }

    /// Whether a response header (any case) is on the ignore list.
    pub fn ignores_header(&self, name: &[u8]) -> bool {
        self.ignore_headers.iter().any(|pattern| {
            let p = pattern.as_bytes();
            match p.strip_suffix(b"*") {
                Some(prefix) => {
                    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
                }
                None => name.eq_ignore_ascii_case(p),
            }
        })
    }

    /// The settings that change how responses are compared or what is
    /// kept: a change to any of them starts the counts afresh.
    pub(super) fn same_comparison(&self, other: &DiffSettings) -> bool {
        DiffSettings {
            relative_threshold_pct: other.relative_threshold_pct,
            absolute_threshold_pct: other.absolute_threshold_pct,
            ..self.clone()
        } == *other
    }
}

/// An RFC 9110 token character (what a header name is made of).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_parse_from_nothing() {
        let s: DiffSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, DiffSettings::default());
        s.validate().unwrap();
        assert!(serde_json::from_str::<DiffSettings>(r#"{"relative": 1}"#).is_err());
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let bad = |s: DiffSettings| s.validate().unwrap_err();
        assert!(
            bad(DiffSettings {
                relative_threshold_pct: -1.0,
                ..Default::default()
            })
            .contains("relative_threshold_pct")
        );
        assert!(
            bad(DiffSettings {
                absolute_threshold_pct: f64::NAN,
                ..Default::default()
            })
            .contains("absolute_threshold_pct")
        );
        assert!(
            bad(DiffSettings {
                ignore_headers: vec!["x b".into()],
                ..Default::default()
            })
            .contains("x b")
        );
        assert!(
            bad(DiffSettings {
                ignore_headers: vec![String::new()],
                ..Default::default()
            })
            .contains("empty")
        );
        assert!(
            bad(DiffSettings {
                endpoint_header: Some(String::new()),
                ..Default::default()
            })
            .contains("endpoint_header")
        );
        assert!(
            bad(DiffSettings {
                max_endpoints: 0,
                ..Default::default()
            })
            .contains("max_endpoints")
        );
    }

    #[test]
    fn the_ignore_list_matches_names_and_prefixes_in_any_case() {
        let s = DiffSettings::default();
        for name in [
            "Date",
            "date",
            "SERVER",
            "X-B3-TraceId",
            "l5d-reqid",
            "Content-Length",
        ] {
            assert!(s.ignores_header(name.as_bytes()), "{name}");
        }
        for name in ["content-type", "x-b3", "l5d", "etag", "dates"] {
            assert!(!s.ignores_header(name.as_bytes()), "{name}");
        }
        let all = DiffSettings {
            ignore_headers: vec!["*".into()],
            ..Default::default()
        };
        all.validate().unwrap();
        assert!(all.ignores_header(b"anything"));
    }

    #[test]
    fn only_thresholds_keep_the_comparison() {
        let a = DiffSettings::default();
        let b = DiffSettings {
            relative_threshold_pct: 5.0,
            absolute_threshold_pct: 1.0,
            ..Default::default()
        };
        assert!(a.same_comparison(&b));
        let c = DiffSettings {
            arrays_as_sets: true,
            ..Default::default()
        };
        assert!(!a.same_comparison(&c));
    }
}
