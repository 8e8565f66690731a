//! Comparing two responses: the fields in which they differ, and how.
//!
//! A response is seen as flat fields named by paths:
//! - `status`: the status code.
//! - `headers.NAME`: each header (name lowercased, repeated lines joined by
//!   `, `), unless on the ignore list.
//! - `STATUS.body...`: the body, under the status of the first response
//!   (the primary), so an endpoint's 200 bodies and its 404 bodies are
//!   different fields. A JSON body is walked: `200.body.user.name` is a
//!   member, `200.body.items[].id` the `id` of every element of `items`
//!   (indices collapse into `[]`, so a change to every element is one
//!   field, not one per index). Any other body is the single field
//!   `STATUS.body`.
//!
//! When the statuses differ the bodies are not compared: they are answers
//! to different outcomes, and listing every field of both would bury the
//! one difference that matters, `status`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::settings::DiffSettings;

/// One response as the data path captured it. Headers borrow the caller's
/// buffer as `(name, value)` pairs, in order; the body is what was
/// captured of it, after any chunked framing is removed (a
/// `Content-Encoding` is not undone: such bodies compare as bytes).
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    pub status: u16,
    pub headers: &'a [(&'a [u8], &'a [u8])],
    pub body: &'a [u8],
    /// The body went on past `body` (the data path captures at most
    /// `max_body_bytes`).
    pub body_truncated: bool,
    /// The body's whole length when the data path knows it (it read the
    /// rest and threw it away). Used only for a truncated body.
    pub body_len: Option<u64>,
}

impl<'a> Response<'a> {
    /// A response whose whole body was captured.
    pub fn new(status: u16, headers: &'a [(&'a [u8], &'a [u8])], body: &'a [u8]) -> Self {
        Response {
            status,
            headers,
            body,
            body_truncated: false,
            body_len: None,
        }
    }

    /// This response, marked as having a longer body than `body`, whose
    /// whole length is `len` when known.
    pub fn truncated(self, len: Option<u64>) -> Self {
        Response {
            body_truncated: true,
            body_len: len,
            ..self
        }
    }
}

/// The request whose responses are compared, kept in samples.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The request target as sent (path and query).
    pub path: &'a [u8],
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// What was captured of the body.
    pub body: &'a [u8],
}

/// How a field differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Both have the field, with different values (a body or header that
    /// is not JSON: different bytes).
    Value,
    /// Different JSON types (string and number, object and null, JSON and
    /// not JSON).
    Type,
    /// The first response (the primary) has it, the second does not. As
    /// sets: an element of the first's array has no equal in the second's.
    Missing,
    /// The second has it, the first does not.
    Extra,
    /// Arrays of different lengths (compared index by index).
    ArrayLength,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Value,
        Kind::Type,
        Kind::Missing,
        Kind::Extra,
        Kind::ArrayLength,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Value => "value",
            Kind::Type => "type",
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::ArrayLength => "array_length",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The kinds one field showed in one comparison (a collapsed `[]` path
/// may show several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    pub fn insert(&mut self, k: Kind) {
        self.0 |= k.bit();
    }
    pub fn contains(self, k: Kind) -> bool {
        self.0 & k.bit() != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

/// How one field differs in one comparison, with the first differing
/// values seen, rendered short (`None`: absent on that side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub kinds: Kinds,
    pub first: Option<String>,
    pub second: Option<String>,
}

/// The fields in which two responses differ, by path.
pub type Differences = BTreeMap<String, Found>;

/// Rendered values are cut to this many bytes.
pub const MAX_VALUE_LEN: usize = 128;
/// Paths are not extended past this many bytes: a deeper difference is
/// reported at the last path that fit.
pub const MAX_PATH_LEN: usize = 512;
/// Header lines compared per response.
const MAX_HEADERS: usize = 128;

/// The fields in which `b` differs from `a` (`a`: the primary).
pub fn compare(settings: &DiffSettings, a: &Response, b: &Response) -> Differences {
    let mut out = Differences::new();
    if a.status != b.status {
        note(
            &mut out,
            "status".into(),
            Kind::Value,
            Some(a.status.to_string()),
            Some(b.status.to_string()),
        );
    }
    compare_headers(settings, a.headers, b.headers, &mut out);
    if a.status == b.status {
        compare_bodies(settings, a, b, &mut out);
    }
    out
}

fn note(
    out: &mut Differences,
    path: String,
    kind: Kind,
    first: Option<String>,
    second: Option<String>,
) {
    let found = out.entry(path).or_insert_with(|| Found {
        kinds: Kinds::default(),
        first,
        second,
    });
    found.kinds.insert(kind);
}

/// Lowercased name and joined value of each header not ignored, by name.
fn header_map(settings: &DiffSettings, headers: &[(&[u8], &[u8])]) -> BTreeMap<String, Vec<u8>> {
    let mut map = BTreeMap::<String, Vec<u8>>::new();
    for (name, value) in headers.iter().take(MAX_HEADERS) {
        if settings.ignores_header(name) {
            continue;
        }
        let name: String = name
            .iter()
            .map(|b| match b {
                b if b.is_ascii_graphic() => b.to_ascii_lowercase() as char,
                _ => '?',
            })
            .collect();
        let joined = map.entry(name).or_default();
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value.trim_ascii());
    }
    map
}

fn compare_headers(
    settings: &DiffSettings,
    a: &[(&[u8], &[u8])],
    b: &[(&[u8], &[u8])],
    out: &mut Differences,
) {
    let a = header_map(settings, a);
    let mut b = header_map(settings, b);
    for (name, va) in a {
        let path = format!("headers.{name}");
        match b.remove(&name) {
            None => note(out, path, Kind::Missing, Some(render_bytes(&va)), None),
            Some(vb) if vb != va => note(
                out,
                path,
                Kind::Value,
                Some(render_bytes(&va)),
                Some(render_bytes(&vb)),
            ),
            Some(_) => {}
        }
    }
    for (name, vb) in b {
        note(
            out,
            format!("headers.{name}"),
            Kind::Extra,
            None,
            Some(render_bytes(&vb)),
        );
    }
}

fn compare_bodies(settings: &DiffSettings, a: &Response, b: &Response, out: &mut Differences) {
    let path = format!("{}.body", a.status);
    let cap = settings.max_body_bytes;
    let (a_body, a_cut) = captured(a, cap);
    let (b_body, b_cut) = captured(b, cap);
    if a_cut || b_cut {
        // What was not captured cannot be compared: the bodies differ if
        // one was cut and the other not, if their known lengths differ, or
        // if the captured prefixes do.
        let lengths_differ = matches!((a.body_len, b.body_len), (Some(x), Some(y)) if x != y);
        if a_cut != b_cut || lengths_differ || a_body != b_body {
            note(
                out,
                path,
                Kind::Value,
                Some(render_opaque(a_body, a_cut, a.body_len)),
                Some(render_opaque(b_body, b_cut, b.body_len)),
            );
        }
        return;
    }
    if a_body == b_body {
        return;
    }
    let a_json = serde_json::from_slice::<Value>(a_body).ok();
    let b_json = serde_json::from_slice::<Value>(b_body).ok();
    match (a_json, b_json) {
        (Some(x), Some(y)) => {
            let mut walk = Walk {
                as_sets: settings.arrays_as_sets,
                out,
            };
            walk.value(&mut path.clone(), &x, &y);
        }
        (None, None) => note(
            out,
            path,
            Kind::Value,
            Some(render_opaque(a_body, false, None)),
            Some(render_opaque(b_body, false, None)),
        ),
        _ => note(
            out,
            path,
            Kind::Type,
            Some(render_opaque(a_body, false, None)),
            Some(render_opaque(b_body, false, None)),
        ),
    }
}

/// The part of a body compared, and whether it is less than the whole.
fn captured<'a>(r: &Response<'a>, cap: usize) -> (&'a [u8], bool) {
    if r.body.len() > cap {
        (&r.body[..cap], true)
    } else {
        (r.body, r.body_truncated)
    }
}

struct Walk<'o> {
    as_sets: bool,
    out: &'o mut Differences,
}

impl Walk<'_> {
    fn value(&mut self, path: &mut String, a: &Value, b: &Value) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                if path.len() > MAX_PATH_LEN {
                    return self.whole(path, a, b);
                }
                for (k, va) in x {
                    let len = path.len();
                    push_key(path, k);
                    match y.get(k) {
                        Some(vb) => self.value(path, va, vb),
                        None => note(
                            self.out,
                            path.clone(),
                            Kind::Missing,
                            Some(render(va)),
                            None,
                        ),
                    }
                    path.truncate(len);
                }
                for (k, vb) in y {
                    if !x.contains_key(k) {
                        let len = path.len();
                        push_key(path, k);
                        note(self.out, path.clone(), Kind::Extra, None, Some(render(vb)));
                        path.truncate(len);
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                if path.len() > MAX_PATH_LEN {
                    return self.whole(path, a, b);
                }
                if self.as_sets {
                    self.multiset(path, x, y);
                } else {
                    if x.len() != y.len() {
                        note(
                            self.out,
                            path.clone(),
                            Kind::ArrayLength,
                            Some(format!("{} elements", x.len())),
                            Some(format!("{} elements", y.len())),
                        );
                    }
                    let len = path.len();
                    path.push_str("[]");
                    for (va, vb) in x.iter().zip(y) {
                        self.value(path, va, vb);
                    }
                    path.truncate(len);
                }
            }
            _ if type_of(a) != type_of(b) => note(
                self.out,
                path.clone(),
                Kind::Type,
                Some(render(a)),
                Some(render(b)),
            ),
            _ => {
                if !scalar_eq(a, b) {
                    note(
                        self.out,
                        path.clone(),
                        Kind::Value,
                        Some(render(a)),
                        Some(render(b)),
                    )
                }
            }
        }
    }

    /// Compares two values as wholes, without descending (a path too long
    /// to extend).
    fn whole(&mut self, path: &str, a: &Value, b: &Value) {
        if canonical(a) != canonical(b) {
            note(
                self.out,
                path.to_owned(),
                Kind::Value,
                Some(render(a)),
                Some(render(b)),
            );
        }
    }

    /// Arrays as multisets: each element of one needs an equal element of
    /// the other, counted with multiplicity. Elements are compared whole
    /// (an object element that changed is one missing and one extra).
    fn multiset(&mut self, path: &str, x: &[Value], y: &[Value]) {
        let mut counts: HashMap<String, (isize, &Value)> = HashMap::new();
        for v in x {
            counts.entry(canonical(v)).or_insert((0, v)).0 += 1;
        }
        for v in y {
            counts.entry(canonical(v)).or_insert((0, v)).0 -= 1;
        }
        let at = format!("{path}[]");
        let mut surplus: Vec<_> = counts.into_iter().filter(|(_, (n, _))| *n != 0).collect();
        // The rendering kept is the first by canonical form, not by hash
        // order, so the same responses always give the same sample.
        surplus.sort_by(|p, q| p.0.cmp(&q.0));
        for (_, (n, v)) in surplus {
            if n > 0 {
                note(self.out, at.clone(), Kind::Missing, Some(render(v)), None);
            } else {
                note(self.out, at.clone(), Kind::Extra, None, Some(render(v)));
            }
        }
    }
}

/// Appends `.key`, or `["key"]` for a key that is empty or holds
/// anything but letters, digits, `_`, `-`, `$` and `@`.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '$' | '@'));
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::String(key.to_owned()).to_string());
        path.push(']');
    }
}

fn type_of(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// Scalars of one type: numbers compare by value (`1` equals `1.0`).
fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (integer(x), integer(y)) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn integer(n: &serde_json::Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i128)
        })
}

/// A value's text with object keys sorted and numbers normalised, so
/// equal values (by [`scalar_eq`] at the leaves) have equal texts.
fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Number(n) => match integer(n) {
                Some(i) => out.push_str(&i.to_string()),
                None => out.push_str(&n.to_string()),
            },
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut keys: Vec<_> = map.iter().collect();
                keys.sort_by(|p, q| p.0.cmp(q.0));
                out.push('{');
                for (i, (k, item)) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(item, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// A JSON value's text, cut to [`MAX_VALUE_LEN`].
fn render(v: &Value) -> String {
    cut(v.to_string())
}

fn render_bytes(b: &[u8]) -> String {
    cut(String::from_utf8_lossy(b).into_owned())
}

/// A body that is not compared field by field: its text when short and
/// UTF-8, else its length and FNV-1a hash.
fn render_opaque(body: &[u8], truncated: bool, len: Option<u64>) -> String {
    if !truncated
        && body.len() <= MAX_VALUE_LEN
        && let Ok(s) = std::str::from_utf8(body)
    {
        return s.to_owned();
    }
    let len = match (truncated, len) {
        (false, _) => body.len().to_string(),
        (true, Some(n)) => n.to_string(),
        (true, None) => format!("more than {}", body.len()),
    };
    let hash = fnv64(body);
    if truncated {
        format!("{len} bytes, first {} hash {hash:016x}", body.len())
    } else {
        format!("{len} bytes, hash {hash:016x}")
    }
}

/// FNV-1a, 64-bit.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Cuts a rendering to [`MAX_VALUE_LEN`] bytes, marking the cut with `…`.
fn cut(mut s: String) -> String {
    if s.len() > MAX_VALUE_LEN {
        super::endpoint::truncate(&mut s, MAX_VALUE_LEN - '…'.len_utf8());
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(status: u16, body: &str) -> Response<'_> {
        Response::new(status, &[], body.as_bytes())
    }

    /// The differences as `path kind,kind` lines.
    fn diff_with(settings: &DiffSettings, a: &Response, b: &Response) -> Vec<String> {
        compare(settings, a, b)
            .into_iter()
            .map(|(path, f)| {
                let kinds: Vec<_> = f.kinds.iter().map(Kind::as_str).collect();
                format!("{path} {}", kinds.join(","))
            })
            .collect()
    }

    fn diff(a: &str, b: &str) -> Vec<String> {
        diff_with(&DiffSettings::default(), &json(200, a), &json(200, b))
    }

    #[test]
    fn equal_json_has_no_differences_whatever_its_layout() {
        assert!(diff(r#"{"a":1,"b":[1,2]}"#, r#"{ "b": [1, 2], "a": 1.0 }"#).is_empty());
        assert!(diff("", "").is_empty());
    }

    #[test]
    fn json_is_flattened_into_paths_with_each_kind() {
        let a = r#"{"user":{"name":"Ann","age":30,"tags":["a","b"],"gone":1},"items":[{"id":1},{"id":2}],"n":null}"#;
        let b = r#"{"user":{"name":"ann","age":"30","tags":["a"],"new":true},"items":[{"id":1},{"id":3}],"n":{}}"#;
        assert_eq!(
            diff(a, b),
            [
                "200.body.items[].id value",
                "200.body.n type",
                "200.body.user.age type",
                "200.body.user.gone missing",
                "200.body.user.name value",
                "200.body.user.new extra",
                "200.body.user.tags array_length",
            ]
        );
    }

    #[test]
    fn the_first_differing_values_are_kept_rendered() {
        let d = compare(
            &DiffSettings::default(),
            &json(200, r#"{"a":"x","b":1}"#),
            &json(200, r#"{"a":"y"}"#),
        );
        assert_eq!(d["200.body.a"].first.as_deref(), Some(r#""x""#));
        assert_eq!(d["200.body.a"].second.as_deref(), Some(r#""y""#));
        assert_eq!(d["200.body.b"].first.as_deref(), Some("1"));
        assert_eq!(d["200.body.b"].second, None);
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(1000));
        let d = compare(
            &DiffSettings::default(),
            &json(200, &long),
            &json(200, r#"{"a":"y"}"#),
        );
        let first = d["200.body.a"].first.as_deref().unwrap();
        assert!(
            first.len() <= MAX_VALUE_LEN && first.ends_with('…'),
            "{first}"
        );
    }

    #[test]
    fn odd_keys_are_quoted_and_roots_are_the_body() {
        assert_eq!(
            diff(r#"{"a.b":1,"":2,"é":3}"#, r#"{"a.b":2,"":3,"é":4}"#),
            [
                "200.body.é value",
                r#"200.body[""] value"#,
                r#"200.body["a.b"] value"#
            ]
        );
        assert_eq!(diff("1", "2"), ["200.body value"]);
        assert_eq!(diff("[1]", "{}"), ["200.body type"]);
        assert_eq!(diff("[[1,2]]", "[[1,3]]"), ["200.body[][] value"]);
    }

    #[test]
    fn a_collapsed_path_gathers_every_kind_of_its_elements() {
        assert_eq!(
            diff(r#"[{"a":1},{"a":1},{"a":1}]"#, r#"[{"a":2},{"a":"1"},{}]"#),
            ["200.body[].a value,type,missing"]
        );
    }

    #[test]
    fn arrays_as_multisets_ignore_order_but_count_repeats() {
        let sets = DiffSettings {
            arrays_as_sets: true,
            ..Default::default()
        };
        let d = |a: &str, b: &str| diff_with(&sets, &json(200, a), &json(200, b));
        assert!(
            d(
                r#"{"t":[1,2,{"x":1,"y":2}]}"#,
                r#"{"t":[{"y":2,"x":1.0},2,1]}"#
            )
            .is_empty()
        );
        assert_eq!(
            d(r#"{"t":[1,1,2]}"#, r#"{"t":[1,2,2]}"#),
            ["200.body.t[] missing,extra"]
        );
        assert_eq!(
            d(r#"{"t":[1,2]}"#, r#"{"t":[1]}"#),
            ["200.body.t[] missing"]
        );
        assert_eq!(d(r#"{"t":[1]}"#, r#"{"t":[1,3]}"#), ["200.body.t[] extra"]);
        // Index by index, the same arrays differ.
        assert_eq!(
            diff(r#"{"t":[1,2]}"#, r#"{"t":[2,1]}"#),
            ["200.body.t[] value"]
        );
    }

    #[test]
    fn other_bodies_compare_as_bytes() {
        assert_eq!(diff("<p>a</p>", "<p>b</p>"), ["200.body value"]);
        assert!(diff("<p>a</p>", "<p>a</p>").is_empty());
        // JSON on one side only: a type difference.
        assert_eq!(diff(r#"{"a":1}"#, "<html>"), ["200.body type"]);
        let d = compare(
            &DiffSettings::default(),
            &json(200, &"x".repeat(500)),
            &json(200, "y"),
        );
        let first = d["200.body"].first.as_deref().unwrap();
        assert!(first.starts_with("500 bytes, hash "), "{first}");
    }

    #[test]
    fn truncated_bodies_compare_by_length_and_captured_prefix() {
        let s = DiffSettings {
            max_body_bytes: 4,
            ..Default::default()
        };
        let d = |a: Response, b: Response| diff_with(&s, &a, &b);
        // Longer than max_body_bytes: cut by the engine itself; equal
        // prefixes, unknown lengths: the unseen tails are taken as equal.
        assert!(d(json(200, r#"{"a":1}"#), json(200, r#"{"a":2}"#)).is_empty());
        // Known lengths that differ.
        let a = Response::new(200, &[], b"abcd").truncated(Some(10));
        let b = Response::new(200, &[], b"abcd").truncated(Some(11));
        assert_eq!(d(a, b), ["200.body value"]);
        assert!(d(a, Response::new(200, &[], b"abcd").truncated(Some(10))).is_empty());
        // Different prefixes.
        let c = Response::new(200, &[], b"abce").truncated(Some(10));
        assert_eq!(d(a, c), ["200.body value"]);
        // Cut on one side only.
        assert_eq!(d(a, Response::new(200, &[], b"abcd")), ["200.body value"]);
        let found = compare(&s, &a, &Response::new(200, &[], b"abc"));
        assert!(
            found["200.body"]
                .first
                .as_deref()
                .unwrap()
                .starts_with("10 bytes, first 4 hash"),
            "{found:?}"
        );
    }

    #[test]
    fn different_statuses_are_one_difference_and_bodies_are_not_walked() {
        assert_eq!(
            diff_with(
                &DiffSettings::default(),
                &json(200, r#"{"a":1}"#),
                &json(404, r#"{"error":"x"}"#)
            ),
            ["status value"]
        );
        // The status prefix is the primary's.
        assert_eq!(
            diff_with(&DiffSettings::default(), &json(404, "a"), &json(404, "b")),
            ["404.body value"]
        );
    }

    #[test]
    fn headers_compare_by_lowercase_name_minus_the_ignore_list() {
        let a: &[(&[u8], &[u8])] = &[
            (b"Content-Type", b"application/json"),
            (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"X-Version", b"1"),
            (b"Cache-Control", b"no-store"),
            (b"Vary", b"Accept"),
            (b"Vary", b" Origin "),
            (b"l5d-reqid", b"abc"),
        ];
        let b: &[(&[u8], &[u8])] = &[
            (b"content-type", b"application/json"),
            (b"date", b"Tue, 02 Jan 2024 00:00:00 GMT"),
            (b"x-version", b"2"),
            (b"vary", b"Accept, Origin"),
            (b"ETag", b"\"x\""),
            (b"Content-Length", b"99"),
            (b"L5D-ReqId", b"def"),
        ];
        assert_eq!(
            diff_with(
                &DiffSettings::default(),
                &Response::new(200, a, b""),
                &Response::new(200, b, b"")
            ),
            [
                "headers.cache-control missing",
                "headers.etag extra",
                "headers.x-version value",
            ]
        );
        let mine = DiffSettings {
            ignore_headers: vec!["x-version".into(), "cache-*".into(), "ETAG".into()],
            ..Default::default()
        };
        // Now Date, l5d-reqid and Content-Length count.
        assert_eq!(
            diff_with(
                &mine,
                &Response::new(200, a, b""),
                &Response::new(200, b, b"")
            ),
            [
                "headers.content-length extra",
                "headers.date value",
                "headers.l5d-reqid value",
            ]
        );
    }

    #[test]
    fn deep_documents_stop_at_the_path_bound() {
        let key = "k".repeat(100);
        let deep = |leaf: u32| {
            let mut s = String::new();
            for _ in 0..10 {
                s.push_str(&format!(r#"{{"{key}":"#));
            }
            s.push_str(&leaf.to_string());
            s.push_str(&"}".repeat(10));
            s
        };
        let d = diff(&deep(1), &deep(2));
        assert_eq!(d.len(), 1);
        assert!(d[0].len() < MAX_PATH_LEN + 120, "{}", d[0]);
        assert!(d[0].ends_with(" value"), "{}", d[0]);
        // Past serde_json's recursion limit: not JSON, compared as bytes.
        let nested = |leaf: &str| format!("{}{leaf}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(diff(&nested("1"), &nested("2")), ["200.body value"]);
    }

    /// A small JSON document from a seed of bytes: keys, nesting, arrays
    /// and scalars of every type.
    fn doc(seed: &[u8]) -> String {
        fn value(seed: &mut std::slice::Iter<u8>, depth: u32) -> String {
            let Some(b) = seed.next() else {
                return "null".into();
            };
            match (b % 7, depth) {
                (0, _) => "null".into(),
                (1, _) => (b % 2 == 0).to_string(),
                (2, _) => format!("{}", b / 7),
                (3, _) => format!("\"{}\"", (b'a' + b % 5) as char),
                (4, d) if d < 4 => {
                    let n = seed.next().map_or(0, |n| n % 4);
                    let items: Vec<_> = (0..n).map(|_| value(seed, d + 1)).collect();
                    format!("[{}]", items.join(","))
                }
                (_, d) if d < 4 => {
                    let n = seed.next().map_or(0, |n| n % 4);
                    let members: Vec<_> = (0..n)
                        .map(|i| format!("\"k{}\":{}", (i + b) % 5, value(seed, d + 1)))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }
                _ => "1.5".into(),
            }
        }
        value(&mut seed.iter(), 0)
    }

    proptest::proptest! {
        #[test]
        fn a_response_never_differs_from_itself_and_nothing_panics(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            sets in proptest::prelude::any::<bool>(),
            cap in 0usize..80,
        ) {
            let s = DiffSettings { arrays_as_sets: sets, max_body_bytes: cap, ..Default::default() };
            let (ja, jb) = (doc(&a), doc(&b));
            for (x, y) in [(&ja[..], &jb[..]), (&ja[..], &ja[..])] {
                let d = compare(&s, &json(200, x), &json(200, y));
                if x == y {
                    proptest::prop_assert!(d.is_empty(), "{x}: {d:?}");
                }
                for path in d.keys() {
                    proptest::prop_assert!(path.starts_with("200.body"), "{path}");
                }
            }
            // Raw bytes, JSON or not: equal captured bytes never differ,
            // and bytes that are not JSON differ whenever they do.
            let d = compare(&s, &Response::new(200, &[], &a), &Response::new(200, &[], &b));
            let seen = |v: &[u8]| (v.len() > cap, v[..v.len().min(cap)].to_vec());
            if seen(&a) == seen(&b) {
                proptest::prop_assert!(d.is_empty(), "{d:?}");
            } else if serde_json::from_slice::<Value>(&a).is_err() {
                proptest::prop_assert!(!d.is_empty());
            }
        }
    }
}
