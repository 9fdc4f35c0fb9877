//! Writing container output in the CRI log format the kubelet and `kubectl logs` expect:
//!
//! ```text
//! 2026-11-21T10:00:00.123456789Z stdout F a whole line
//! 2026-11-21T10:00:00.123456789Z stderr P the first 16 KiB of a very long line
//! ```
//! `F` ends a line, `P` is a piece of a longer one. The shim feeds raw pipe chunks to a
//! [`LineSplitter`] per stream and hands the lines to a [`RotatingWriter`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

/// Lines longer than this are cut into `P` pieces (containerd uses 16 KiB too).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `F` (full: the line ended) or `P` (partial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Full,
    Partial,
}

/// RFC 3339 with nanoseconds, always 9 digits, as CRI writes it.
pub fn format_timestamp(ts: Timestamp) -> String {
    format!(
        "{}.{:09}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        ts.subsec_nanosecond()
    )
}

/// One CRI log line, newline included; `content` has no trailing newline.
pub fn format_line(ts: Timestamp, stream: Stream, tag: Tag, content: &[u8]) -> Vec<u8> {
    let tag = match tag {
        Tag::Full => "F",
        Tag::Partial => "P",
    };
    let mut out = format!("{} {} {tag} ", format_timestamp(ts), stream.as_str()).into_bytes();
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Cuts a byte stream into lines, keeping an unfinished line until its end arrives or it
/// reaches `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<(Vec<u8>, Tag)> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let room = self.max - self.pending.len();
            match chunk.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => {
                    self.pending.extend_from_slice(&chunk[..nl]);
                    out.push((std::mem::take(&mut self.pending), Tag::Full));
                    chunk = &chunk[nl + 1..];
                }
                None => {
                    let take = room.min(chunk.len());
                    self.pending.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if self.pending.len() == self.max {
                        out.push((std::mem::take(&mut self.pending), Tag::Partial));
                    }
                }
            }
        }
        out
    }

    /// At end of stream, what is left is the last line (containerd writes it as `F`).
    pub fn finish(&mut self) -> Option<(Vec<u8>, Tag)> {
        if self.pending.is_empty() {
            None
        } else {
            Some((std::mem::take(&mut self.pending), Tag::Full))
        }
    }
}

/// Appends to the log file; past `max_bytes` the file becomes `<path>.1` (replacing the
/// previous rotated file) and a new one starts.
#[derive(Debug)]
pub struct RotatingWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

/// The name of the one rotated file kept next to `path`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

impl RotatingWriter {
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
        })
    }

    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            std::fs::rename(&self.path, rotated_path(&self.path))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let ts: Timestamp = "2026-11-21T10:00:00.123Z".parse().unwrap();
        assert_eq!(
            format_line(ts, Stream::Stdout, Tag::Full, b"hello"),
            b"2026-11-21T10:00:00.123000000Z stdout F hello\n"
        );
        assert_eq!(
            format_line(ts, Stream::Stderr, Tag::Partial, b""),
            b"2026-11-21T10:00:00.123000000Z stderr P \n"
        );
    }

    #[test]
    fn splitting() {
        // (chunks, max) → emitted lines, then what finish() returns
        type Case = (
            &'static [&'static [u8]],
            usize,
            Vec<(&'static [u8], Tag)>,
            Option<&'static [u8]>,
        );
        let cases: Vec<Case> = vec![
            (
                &[b"a\nb\n"],
                16,
                vec![(b"a", Tag::Full), (b"b", Tag::Full)],
                None,
            ),
            (&[b"ab", b"c\nd"], 16, vec![(b"abc", Tag::Full)], Some(b"d")),
            (
                &[b"\n\n"],
                16,
                vec![(b"", Tag::Full), (b"", Tag::Full)],
                None,
            ),
            (
                &[b"abcdef\n"],
                4,
                vec![(b"abcd", Tag::Partial), (b"ef", Tag::Full)],
                None,
            ),
            (
                &[b"abcd", b"\n"],
                4,
                vec![(b"abcd", Tag::Partial), (b"", Tag::Full)],
                None,
            ),
            (
                &[b"abc\nabcdefghi"],
                4,
                vec![
                    (b"abc", Tag::Full),
                    (b"abcd", Tag::Partial),
                    (b"efgh", Tag::Partial),
                ],
                Some(b"i"),
            ),
        ];
        for (chunks, max, want, rest) in cases {
            let mut s = LineSplitter::new(max);
            let got: Vec<(Vec<u8>, Tag)> = chunks.iter().flat_map(|c| s.push(c)).collect();
            let want: Vec<(Vec<u8>, Tag)> =
                want.into_iter().map(|(l, t)| (l.to_vec(), t)).collect();
            assert_eq!(got, want, "chunks {chunks:?}");
            assert_eq!(
                s.finish(),
                rest.map(|r| (r.to_vec(), Tag::Full)),
                "chunks {chunks:?}"
            );
        }
    }

    #[test]
    fn rotation_keeps_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = RotatingWriter::open(&path, 10).unwrap();
        for line in [&b"aaaaaa\n"[..], b"bbbbbb\n", b"cccccc\n"] {
            w.write_line(line).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"cccccc\n");
        assert_eq!(std::fs::read(rotated_path(&path)).unwrap(), b"bbbbbb\n");
    }
}
