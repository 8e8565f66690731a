//! The on-disk ring: capture's lines in segment files
//! `capture-<unix-ms>-<seq>.jsonl` in one directory, bounded by what they
//! take in all and by age.
//!
//! Lines are appended to the newest segment; a new one is started when a
//! line would take the current past `segment_bytes`. Before a line is
//! written the oldest segments are deleted until it fits under
//! `max_bytes`, so the directory never holds more than that; a segment
//! whose last write is older than `max_age` is deleted too. On open the
//! ring takes over the segments already there (their bounds apply at
//! once) and appends only to new ones, so a line cut by a crash or a full
//! disk ends a segment rather than sitting in the middle of one.
//!
//! Used only by capture's writer thread: plain blocking file I/O.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::har::unix_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub segment_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    last_write: SystemTime,
}

#[derive(Debug)]
pub struct Ring {
    dir: PathBuf,
    bounds: Bounds,
    /// Oldest first; the last is the one written to when `current` is open.
    segments: VecDeque<Segment>,
    current: Option<File>,
    total: u64,
    next_seq: u64,
}

#[derive(Debug)]
pub enum AppendError {
    /// The line alone is longer than `max_bytes`.
    TooLarge,
    Io(io::Error),
}

impl Ring {
    /// Takes over `dir` (created if missing) and the segments in it,
    /// applying the bounds to them.
    pub fn open(dir: &Path, bounds: Bounds, now: SystemTime) -> io::Result<Ring> {
        fs::create_dir_all(dir)?;
        let mut segments = VecDeque::new();
        let mut next_seq = 0;
        for (path, _, seq) in list_segments(dir)? {
            let meta = fs::metadata(&path)?;
            next_seq = next_seq.max(seq + 1);
            segments.push_back(Segment {
                path,
                bytes: meta.len(),
                last_write: meta.modified().unwrap_or(now),
            });
        }
        let total = segments.iter().map(|s| s.bytes).sum();
        let mut ring = Ring {
            dir: dir.to_owned(),
            bounds,
            segments,
            current: None,
            total,
            next_seq,
        };
        ring.expire(now);
        ring.make_room(0);
        Ok(ring)
    }

    /// Appends one line (with its newline).
    pub fn append(&mut self, line: &[u8], now: SystemTime) -> Result<(), AppendError> {
        let len = line.len() as u64;
        if len > self.bounds.max_bytes {
            return Err(AppendError::TooLarge);
        }
        self.expire(now);
        self.make_room(len);
        let roll = match (&self.current, self.segments.back()) {
            (Some(_), Some(s)) => s.bytes > 0 && s.bytes + len > self.bounds.segment_bytes,
            _ => true,
        };
        if roll {
            self.start_segment(now).map_err(AppendError::Io)?;
        }
        let file = self.current.as_mut().expect("a segment is open");
        let segment = self.segments.back_mut().expect("the open segment");
        segment.last_write = now;
        match file.write_all(line) {
            Ok(()) => {
                segment.bytes += len;
                self.total += len;
                Ok(())
            }
            Err(e) => {
                // Part of the line may be on disk: count what is, and
                // leave the segment to end there.
                let on_disk = fs::metadata(&segment.path).map_or(segment.bytes, |m| m.len());
                self.total += on_disk.saturating_sub(segment.bytes);
                segment.bytes = on_disk;
                self.current = None;
                Err(AppendError::Io(e))
            }
        }
    }

    /// Deletes the segments last written longer than `max_age` ago.
    pub fn expire(&mut self, now: SystemTime) {
        while let Some(oldest) = self.segments.front() {
            let age = now.duration_since(oldest.last_write).unwrap_or_default();
            if age <= self.bounds.max_age {
                break;
            }
            self.delete_oldest();
        }
    }

    /// Bytes the segments take in all.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Deletes the oldest segments until `len` more bytes fit.
    fn make_room(&mut self, len: u64) {
        while self.total + len > self.bounds.max_bytes && !self.segments.is_empty() {
            self.delete_oldest();
        }
    }

    fn delete_oldest(&mut self) {
        let Some(oldest) = self.segments.pop_front() else {
            return;
        };
        if self.segments.is_empty() {
            // It was the one being written.
            self.current = None;
        }
        self.total -= oldest.bytes;
        if let Err(e) = fs::remove_file(&oldest.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %oldest.path.display(), error = %e, "capture: could not delete an old segment");
        }
    }

    fn start_segment(&mut self, now: SystemTime) -> io::Result<()> {
        self.current = None;
        let path = self.dir.join(segment_name(unix_ms(now), self.next_seq));
        self.next_seq += 1;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)?;
        // An empty segment left by an earlier failure goes: it holds
        // nothing and would only count against the bounds' file list.
        if self.segments.back().is_some_and(|s| s.bytes == 0) {
            self.delete_newest_empty();
        }
        self.segments.push_back(Segment {
            path,
            bytes: 0,
            last_write: now,
        });
        self.current = Some(file);
        Ok(())
    }

    fn delete_newest_empty(&mut self) {
        if let Some(s) = self.segments.pop_back() {
            let _ = fs::remove_file(&s.path);
        }
    }
}

/// `capture-<unix-ms>-<seq>.jsonl`: names sort as the segments were
/// started.
pub fn segment_name(unix_ms: u64, seq: u64) -> String {
    format!("capture-{unix_ms:013}-{seq:06}.jsonl")
}

/// The (unix ms, seq) of a segment's file name.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("capture-")?.strip_suffix(".jsonl")?;
    let (ms, seq) = rest.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The segment files in `dir`, oldest first, with their start (unix ms)
/// and sequence number. Other files are left alone.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(PathBuf, u64, u64)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((ms, seq)) = name.to_str().and_then(parse_segment_name) {
            found.push((entry.path(), ms, seq));
        }
    }
    found.sort_by_key(|(_, ms, seq)| (*ms, *seq));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("sidetrack-ring-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Dir(p)
        }
        fn files(&self) -> Vec<(String, u64)> {
            list_segments(&self.0)
                .unwrap()
                .into_iter()
                .map(|(p, _, _)| {
                    let len = fs::metadata(&p).unwrap().len();
                    (p.file_name().unwrap().to_str().unwrap().to_owned(), len)
                })
                .collect()
        }
        fn bytes(&self) -> u64 {
            self.files().iter().map(|(_, l)| l).sum()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const T0: Duration = Duration::from_secs(1_777_636_800);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn bounds(max_bytes: u64, segment_bytes: u64, max_age_secs: u64) -> Bounds {
        Bounds {
            max_bytes,
            segment_bytes,
            max_age: Duration::from_secs(max_age_secs),
        }
    }

    fn line(i: usize) -> Vec<u8> {
        // 100 bytes with the newline.
        format!("{{\"i\":{i:>93}}}\n").into_bytes()
    }

    #[test]
    fn segments_roll_at_their_size_and_the_total_stays_under_the_bound() {
        let d = Dir::new("size");
        let mut r = Ring::open(&d.0, bounds(1_000, 300, 3_600), at(0)).unwrap();
        for i in 0..50 {
            assert_eq!(line(i).len(), 100);
            r.append(&line(i), at(i as u64)).unwrap();
            assert!(d.bytes() <= 1_000, "{:?}", d.files());
            assert_eq!(r.total_bytes(), d.bytes());
        }
        let files = d.files();
        // 3 lines a segment; 10 lines fit, in whole segments: 3 full and a
        // last with the newest 2 (49 = 16 * 3 + 1).
        assert!(files.iter().all(|(_, l)| *l <= 300), "{files:?}");
        assert_eq!(r.total_bytes(), 800, "{files:?}");
        let newest = fs::read_to_string(d.0.join(&files.last().unwrap().0)).unwrap();
        assert!(newest.ends_with(&String::from_utf8(line(49)).unwrap()));
        // The oldest line kept is from 8 lines before the newest.
        let oldest = fs::read_to_string(d.0.join(&files[0].0)).unwrap();
        assert!(
            oldest.starts_with(&String::from_utf8(line(42)).unwrap()),
            "{oldest}"
        );
        // A line larger than the whole ring is refused, the rest kept.
        assert!(matches!(
            r.append(&vec![b'x'; 1_001], at(60)),
            Err(AppendError::TooLarge)
        ));
        assert_eq!(r.total_bytes(), 800);
    }

    #[test]
    fn old_segments_expire_by_their_last_write() {
        let d = Dir::new("age");
        let mut r = Ring::open(&d.0, bounds(1 << 20, 200, 60), at(0)).unwrap();
        for i in 0..4 {
            r.append(&line(i), at(i as u64 * 10)).unwrap();
        }
        // Two segments: lines 0 and 1 (last written at 10), 2 and 3 (30).
        assert_eq!(r.segment_count(), 2);
        r.expire(at(70));
        assert_eq!(r.segment_count(), 2, "10 + 60 is not past yet");
        r.expire(at(71));
        assert_eq!(r.segment_count(), 1);
        assert_eq!(d.files().len(), 1);
        // The current segment expires too; the next line starts a new one.
        r.expire(at(91));
        assert_eq!((r.segment_count(), d.files().len()), (0, 0));
        r.append(&line(9), at(100)).unwrap();
        assert_eq!(d.files().len(), 1);
        assert_eq!(r.total_bytes(), 100);
    }

    #[test]
    fn segments_already_there_are_taken_over_and_bounded() {
        let d = Dir::new("pickup");
        fs::create_dir_all(&d.0).unwrap();
        let now = SystemTime::now();
        let start = unix_ms(now) - 5_000;
        for seq in 0..5u64 {
            let name = segment_name(start + seq, seq);
            fs::write(d.0.join(name), vec![b'x'; 300]).unwrap();
        }
        fs::write(d.0.join("notes.txt"), "not a segment").unwrap();
        // 1,500 bytes there; 1,000 allowed: the two oldest go at once.
        let mut r = Ring::open(&d.0, bounds(1_000, 300, 3_600), now).unwrap();
        assert_eq!(r.segment_count(), 3);
        assert_eq!(r.total_bytes(), 900);
        let names: Vec<String> = d.files().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], segment_name(start + 2, 2));
        // New lines go to a new segment, numbered after the old ones, and
        // make room by deleting the oldest.
        r.append(&line(0), now).unwrap();
        let names: Vec<String> = d.files().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(parse_segment_name(names.last().unwrap()).unwrap().1, 5);
        assert_eq!(r.total_bytes(), 1_000);
        r.append(&line(1), now).unwrap();
        assert_eq!(d.files().len(), 3);
        assert_eq!((r.total_bytes(), d.bytes()), (800, 800));
        assert!(d.0.join("notes.txt").exists());
    }

    #[test]
    fn segment_names_sort_by_start_and_parse_back() {
        assert_eq!(
            segment_name(1_777_636_800_123, 7),
            "capture-1777636800123-000007.jsonl"
        );
        assert_eq!(
            parse_segment_name("capture-1777636800123-000007.jsonl"),
            Some((1_777_636_800_123, 7))
        );
        assert_eq!(parse_segment_name("capture-x-1.jsonl"), None);
        assert_eq!(parse_segment_name("other.jsonl"), None);
    }
}
