//! Paths (`/svc/web`) and dentry prefixes (`/svc/*/web`): the names dtabs rewrite.
//!
//! A path is a sequence of non-empty byte-string labels. It is stored as one
//! shared, length-prefixed byte buffer plus a view into it, so that cloning a
//! path, taking its first `n` elements or dropping them (the id and residual
//! of a bound name, the suffix a rewrite carries along) costs no allocation,
//! and appending two paths costs exactly one.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem::MaybeUninit;
use std::sync::{Arc, LazyLock};

/// Bytes printed as themselves in a label: `[0-9A-Za-z_:.#$%-]`.
/// A label holding any other byte is printed with every byte as `\xNN`.
pub fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'#' | b'$' | b'%' | b'-')
}

/// Writes one label in its canonical printed form.
pub(crate) fn write_label(f: &mut impl fmt::Write, label: &[u8]) -> fmt::Result {
    if label.iter().all(|&b| is_label_byte(b)) {
        // Every label byte is ASCII, so this is valid UTF-8.
        f.write_str(std::str::from_utf8(label).map_err(|_| fmt::Error)?)
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in label {
            f.write_str("\\x")?;
            f.write_char(HEX[usize::from(b >> 4)] as char)?;
            f.write_char(HEX[usize::from(b & 0xf)] as char)?;
        }
        Ok(())
    }
}

/// Each element is stored as a 4-byte little-endian length and its bytes.
const LEN_BYTES: usize = 4;

static EMPTY_BUF: LazyLock<Arc<[u8]>> = LazyLock::new(|| Arc::from(&[][..]));

/// A path: zero or more labels, each a non-empty byte string.
#[derive(Clone)]
pub struct Path {
    buf: Arc<[u8]>,
    start: u32,
    end: u32,
    len: u32,
}

impl Path {
    /// The empty path, `/`.
    pub fn empty() -> Path {
        Path {
            buf: EMPTY_BUF.clone(),
            start: 0,
            end: 0,
            len: 0,
        }
    }

    /// Builds a path from its labels.
    ///
    /// # Panics
    /// When a label is empty (the grammar has no empty labels).
    pub fn from_elems<I, E>(elems: I) -> Path
    where
        I: IntoIterator<Item = E>,
        I::IntoIter: Clone,
        E: AsRef<[u8]>,
    {
        let elems = elems.into_iter();
        let mut total = 0;
        let mut count = 0;
        for e in elems.clone() {
            let e = e.as_ref();
            assert!(!e.is_empty(), "path labels are never empty");
            total += LEN_BYTES + e.len();
            count += 1;
        }
        if count == 0 {
            return Path::empty();
        }
        let buf = build(total, |w| {
            for e in elems {
                w.elem(e.as_ref());
            }
        });
        Path::whole(buf, count)
    }

    /// Parses a path in the dtab syntax (`/a/b`, `/` for the empty path).
    pub fn read(s: &str) -> Result<Path, super::ParseError> {
        super::parse::parse_path(s)
    }

    fn whole(buf: Arc<[u8]>, count: usize) -> Path {
        let end = u32::try_from(buf.len()).expect("paths are shorter than 4 GiB");
        Path {
            buf,
            start: 0,
            end,
            len: u32::try_from(count).expect("paths have fewer than 2^32 elements"),
        }
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The labels, first to last.
    pub fn elems(&self) -> Elems<'_> {
        Elems {
            rest: self.encoded(),
        }
    }

    /// The `i`th label.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.elems().nth(i)
    }

    /// The encoded form: equal paths have equal encodings.
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.buf[self.start as usize..self.end as usize]
    }

    fn offset_of(&self, n: usize) -> u32 {
        let mut elems = self.elems();
        for _ in 0..n {
            elems.next();
        }
        self.end - elems.rest.len() as u32
    }

    /// The first `n` labels (all of them when `n >= len`), sharing this path's buffer.
    pub fn take(&self, n: usize) -> Path {
        if n >= self.len() {
            return self.clone();
        }
        Path {
            buf: self.buf.clone(),
            start: self.start,
            end: self.offset_of(n),
            len: n as u32,
        }
    }

    /// All but the first `n` labels (empty when `n >= len`), sharing this path's buffer.
    pub fn skip(&self, n: usize) -> Path {
        if n == 0 {
            return self.clone();
        }
        if n >= self.len() {
            return Path::empty();
        }
        Path {
            buf: self.buf.clone(),
            start: self.offset_of(n),
            end: self.end,
            len: self.len - n as u32,
        }
    }

    /// `self` followed by `other`; one allocation unless either is empty.
    pub fn concat(&self, other: &Path) -> Path {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let (a, b) = (self.encoded(), other.encoded());
        let buf = build(a.len() + b.len(), |w| {
            w.raw(a);
            w.raw(b);
        });
        Path::whole(buf, self.len() + other.len())
    }

    /// Whether `prefix`'s labels are this path's first labels.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.encoded().starts_with(prefix.encoded())
    }

    /// Bytes used by this path's buffer (shared buffers are counted in full).
    pub fn heap_bytes(&self) -> usize {
        self.buf.len() + 2 * std::mem::size_of::<usize>()
    }
}

/// Writes a buffer of exactly `total` bytes in one allocation.
fn build(total: usize, fill: impl FnOnce(&mut Writer<'_>)) -> Arc<[u8]> {
    let mut buf = Arc::<[u8]>::new_uninit_slice(total);
    let dst = Arc::get_mut(&mut buf).expect("a fresh Arc is unique");
    let mut w = Writer { dst, pos: 0 };
    fill(&mut w);
    assert_eq!(w.pos, total, "a path buffer is written in full");
    // SAFETY: `Writer::raw`, the only writer, fills the buffer front to
    // back and moves `pos` past what it wrote, so `pos == total` (asserted
    // above) means every byte is initialised.
    unsafe { buf.assume_init() }
}

struct Writer<'a> {
    dst: &'a mut [MaybeUninit<u8>],
    pos: usize,
}

impl Writer<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.dst[self.pos..self.pos + bytes.len()].write_copy_of_slice(bytes);
        self.pos += bytes.len();
    }

    fn elem(&mut self, label: &[u8]) {
        let len = u32::try_from(label.len()).expect("labels are shorter than 4 GiB");
        self.raw(&len.to_le_bytes());
        self.raw(label);
    }
}

/// Iterator over a path's labels.
#[derive(Clone)]
pub struct Elems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Elems<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (len, tail) = self.rest.split_at(LEN_BYTES);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let (label, rest) = tail.split_at(len);
        self.rest = rest;
        Some(label)
    }
}

impl PartialEq for Path {
    fn eq(&self, other: &Path) -> bool {
        self.encoded() == other.encoded()
    }
}

impl Eq for Path {}

impl Hash for Path {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.encoded().hash(state);
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("/");
        }
        for label in self.elems() {
            f.write_str("/")?;
            write_label(f, label)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

/// One element of a dentry prefix: a label that must match exactly, or `*`,
/// which matches any one label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PrefixElem {
    Label(Box<[u8]>),
    Any,
}

/// The left-hand side of a dentry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prefix {
    elems: Vec<PrefixElem>,
}

impl Prefix {
    pub fn new(elems: Vec<PrefixElem>) -> Prefix {
        debug_assert!(elems.iter().all(|e| match e {
            PrefixElem::Label(l) => !l.is_empty(),
            PrefixElem::Any => true,
        }));
        Prefix { elems }
    }

    /// Parses a prefix in the dtab syntax (`/a/*/b`).
    pub fn read(s: &str) -> Result<Prefix, super::ParseError> {
        super::parse::parse_prefix(s)
    }

    pub fn elems(&self) -> &[PrefixElem] {
        &self.elems
    }

    pub fn len(&self) -> usize {
        self.elems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elems.is_empty()
    }

    /// Whether `path` begins with this prefix (`*` matching any one label).
    pub fn matches(&self, path: &Path) -> bool {
        if self.elems.len() > path.len() {
            return false;
        }
        self.elems.iter().zip(path.elems()).all(|(p, l)| match p {
            PrefixElem::Any => true,
            PrefixElem::Label(want) => **want == *l,
        })
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.elems.capacity() * std::mem::size_of::<PrefixElem>()
            + self
                .elems
                .iter()
                .map(|e| match e {
                    PrefixElem::Label(l) => l.len(),
                    PrefixElem::Any => 0,
                })
                .sum::<usize>()
    }
}

impl From<&Path> for Prefix {
    fn from(path: &Path) -> Prefix {
        Prefix::new(path.elems().map(|l| PrefixElem::Label(l.into())).collect())
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.elems.is_empty() {
            return f.write_str("/");
        }
        for e in &self.elems {
            f.write_str("/")?;
            match e {
                PrefixElem::Any => f.write_str("*")?,
                PrefixElem::Label(l) => write_label(f, l)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_share_and_compare_by_labels() {
        let p = Path::from_elems(["a", "bc", "d"]);
        assert_eq!(p.len(), 3);
        assert_eq!(p.take(2), Path::from_elems(["a", "bc"]));
        assert_eq!(p.skip(1), Path::from_elems(["bc", "d"]));
        assert_eq!(p.skip(3), Path::empty());
        assert_eq!(p.take(0), Path::empty());
        assert_eq!(p.take(1).concat(&p.skip(1)), p);
        assert_eq!(p.get(1), Some(&b"bc"[..]));
        assert!(p.starts_with(&p.take(2)));
        assert!(!p.skip(1).starts_with(&p.take(1)));
        assert_eq!(p.to_string(), "/a/bc/d");
        assert_eq!(Path::empty().to_string(), "/");
    }

    #[test]
    fn labels_outside_the_set_print_escaped_whole() {
        let p = Path::from_elems([&b"a b"[..], b"ok", b"\xff"]);
        assert_eq!(p.to_string(), "/\\x61\\x20\\x62/ok/\\xff");
    }

    #[test]
    fn prefix_matching() {
        let pfx = Prefix::read("/a/*/c").unwrap();
        assert!(pfx.matches(&Path::read("/a/b/c/d").unwrap()));
        assert!(pfx.matches(&Path::read("/a/x/c").unwrap()));
        assert!(!pfx.matches(&Path::read("/a/b").unwrap()));
        assert!(!pfx.matches(&Path::read("/a/b/d").unwrap()));
        assert!(Prefix::default().matches(&Path::empty()));
    }
}
