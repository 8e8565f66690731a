//! The settings file (`--config`, YAML; JSON is YAML too), as the proxy
//! reads it at start and on every change. Beyond "no panic" (a reload runs
//! inside the proxy; a panic there would take it down):
//! - settings that are accepted can be used: every duration makes a
//!   deadline without overflow, the limits the validation promises hold,
//!   and the interception CIDRs parse to a normalised prefix or are refused;
//! - a document that is accepted as written is accepted, with the same
//!   settings, when re-emitted as YAML and as JSON: what counts is the
//!   document, not its spelling. String-valued keys are
//!   left out of the comparison, and documents with tags or nulls are not
//!   compared (see below): there the YAML library, not the settings,
//!   decides.
//!
//! `cargo xtask fuzz --only config` (docs/fuzz.md).

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

use serde_yaml_ng::Value;
use sidetrack_fuzz::config::{self, MAX_MS, MIN_WATCH_INTERVAL_MS, Settings};

/// Every duration in the settings, in milliseconds.
fn durations(s: &Settings) -> [u64; 15] {
    let (l, p) = (&s.limits, &s.pool);
    [
        s.watch_interval_ms,
        s.shutdown_grace_ms,
        l.head_timeout_ms,
        l.first_byte_timeout_ms,
        l.idle_timeout_ms,
        l.response_timeout_ms,
        l.body_timeout_ms,
        l.linger_ms,
        l.tunnel_idle_timeout_ms,
        p.idle_timeout_ms,
        p.connect_timeout_ms,
        p.eject_ms,
        s.shadow.timeout_ms,
        s.k8s.sync_timeout_ms,
        s.interception.detect_timeout_ms,
    ]
}

fn check_usable(s: &Settings) {
    let now = Instant::now();
    for ms in durations(s) {
        assert!(ms <= MAX_MS);
        assert!(now.checked_add(config::ms(ms)).is_some());
        assert_eq!(config::ms(ms), Duration::from_millis(ms));
    }
    assert!(s.watch_interval_ms >= MIN_WATCH_INTERVAL_MS);
    assert!(s.limits.max_connections > 0);
    assert_ne!(s.interception.mark, 0);
    assert_eq!(s.validate(), Ok(()));
    for cidr in &s.interception.cidrs {
        if let Ok((ip, len)) = config::parse_cidr(cidr) {
            assert!(len <= 32);
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            assert_eq!(u32::from(ip) & !mask, 0, "{cidr:?} not normalised");
            assert_eq!(config::parse_cidr(&format!("{ip}/{len}")), Ok((ip, len)));
        }
    }
}

/// Whether every node of `v` passes `ok`.
fn all_nodes(v: &Value, ok: &impl Fn(&Value) -> bool) -> bool {
    ok(v)
        && match v {
            Value::Tagged(t) => all_nodes(&t.value, ok),
            Value::Sequence(items) => items.iter().all(|i| all_nodes(i, ok)),
            Value::Mapping(map) => map
                .iter()
                .all(|(k, v)| all_nodes(k, ok) && all_nodes(v, ok)),
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => true,
        }
}

/// JSON writes infinities and NaN as null.
fn finite(v: &Value) -> bool {
    !matches!(v, Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()))
}

/// The settings without the string-valued keys: an unquoted scalar read
/// into a string keeps its spelling (`0x10`), which a re-emitted document
/// writes as the number it also is (`16`). Whether they are accepted is
/// still compared.
fn spelling_free(mut s: Settings) -> Settings {
    s.dtab.clear();
    s.dst_prefix.clear();
    s.dtab_file = None;
    s.fs_dir = None;
    s.interception.cidrs.clear();
    s.interception.cgroup = None;
    let o = &mut s.overrides;
    o.trusted_sources.clear();
    o.trusted_namespaces.clear();
    o.rewritable_prefixes.clear();
    o.allowed_destinations.clear();
    o.denied_destinations.clear();
    o.keys_dir = None;
    // Rules are names, patterns and dtabs: strings throughout; so are
    // mirrors, and the header names and namespaces below.
    s.rules.clear();
    s.mirrors.clear();
    s.shadow.marker_header.clear();
    s.shadow.request_header.clear();
    s.diff.ignore_headers.clear();
    s.diff.endpoint_header = None;
    s.k8s.api_server = None;
    s.k8s.namespace.clear();
    s.k8s.cluster_domain.clear();
    s.k8s.node_name = None;
    s.access_log.path.clear();
    s.capture.dir = None;
    s.capture.names.clear();
    s.capture.redact.clear();
    s.http2.h2_names.clear();
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Settings::from_yaml(text);
    if let Ok(s) = &parsed {
        check_usable(s);
    }
    // An empty file means the defaults without going through the YAML
    // parser; what follows compares documents.
    if text.trim().is_empty() {
        assert_eq!(parsed, Ok(Settings::default()));
        return;
    }
    // Not every document has a `Value`: `dtab: 5353591000003520116025762`
    // is a string to the settings, an integer too large to hold to `Value`.
    let Ok(doc) = serde_yaml_ng::from_str::<Value>(text) else {
        return;
    };
    // A document of comments only reads as the defaults, as an empty file
    // does, while `~` (null spelt out) is refused: no spelling to compare.
    // Tags are serde_yaml_ng's business, not the settings': they are spelt
    // back in forms that read differently (`!` becomes `!<%21>`), and a
    // tagged empty node (`!!e`) reads as an empty mapping directly but as
    // an empty string through a `Value`.
    //
    // An empty value (`limits:` and nothing) reads as an empty section,
    // the defaults, but is spelt back as `null`, which is refused: a
    // document with a null anywhere is not compared either.
    if !all_nodes(&doc, &|v| !v.is_null()) || text.contains('!') {
        return;
    }
    // Only accepted settings are compared: a number the settings refuse as
    // written may be spelt back in a form they take (`-0` into a u64 is
    // refused; through a `Value` it is 0).
    let Ok(accepted) = parsed.map(spelling_free) else {
        return;
    };
    let mut spellings = Vec::new();
    // JSON has no spelling for some (keys that are not strings).
    if all_nodes(&doc, &finite) {
        spellings.extend(serde_json::to_string(&doc).ok());
    }
    spellings.extend(serde_yaml_ng::to_string(&doc).ok());
    // A string of Unicode white space (`"\_"`, a no-break space) is spelt
    // bare, which `from_yaml` takes for an empty file.
    for spelling in spellings.into_iter().filter(|s| !s.trim().is_empty()) {
        assert_eq!(
            Settings::from_yaml(&spelling).map(spelling_free).as_ref(),
            Ok(&accepted),
            "{text:?} spelt {spelling:?}"
        );
    }
});
