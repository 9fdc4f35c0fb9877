//! Reading the CRI log files for `kubectl logs`: tail, since, timestamps, limitBytes,
//! previous, and follow as a stream.
//!
//! ```text
//!  <attempt>.log.1, <attempt>.log ──► parse_line ──► render(opts) ──► bytes for the client
//!                                   (P pieces joined into one line)
//! ```
//! The parsing and selection are pure ([`render`]); only [`read`] and [`follow`] touch files.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use jiff::Timestamp;

use super::crilog::{rotated_path, Stream as Std, Tag};

/// The `kubectl logs` options that shape the output (follow and previous pick files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<Timestamp>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<usize>,
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: Timestamp,
    pub stream: Std,
    pub tag: Tag,
    pub content: &'a [u8],
}

/// Parses `<time> <stream> <tag> <content>` (no trailing newline); `None` for a line that
/// is not a CRI record.
pub fn parse_line(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let stream = match parts.next()? {
        b"stdout" => Std::Stdout,
        b"stderr" => Std::Stderr,
        _ => return None,
    };
    let tag = match parts.next()? {
        b"F" => Tag::Full,
        b"P" => Tag::Partial,
        _ => return None,
    };
    Some(Record {
        time,
        stream,
        tag,
        content: parts.next().unwrap_or(b""),
    })
}

/// A whole output line: the pieces of one logical line joined, stamped with the first
/// piece's time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    time: Timestamp,
    text: Vec<u8>,
    complete: bool,
}

fn lines(text: &[u8]) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut pending: [Option<Line>; 2] = [None, None];
    for raw in text.split(|&b| b == b'\n') {
        let Some(r) = parse_line(raw) else { continue };
        let slot = &mut pending[r.stream as usize];
        let line = slot.get_or_insert_with(|| Line {
            time: r.time,
            text: Vec::new(),
            complete: false,
        });
        line.text.extend_from_slice(r.content);
        if r.tag == Tag::Full {
            let mut done = slot.take().expect("just inserted");
            done.complete = true;
            out.push(done);
        }
    }
    // A line whose end has not been written yet still shows, without its newline.
    out.extend(pending.into_iter().flatten());
    out
}

fn format(line: &Line, timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.text.len() + 32);
    if timestamps {
        out.extend_from_slice(super::crilog::format_timestamp(line.time).as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&line.text);
    if line.complete {
        out.push(b'\n');
    }
    out
}

/// The output `kubectl logs` shows for this log text under `opts`.
pub fn render(text: &[u8], opts: &LogOptions) -> Vec<u8> {
    let mut all = lines(text);
    if let Some(since) = opts.since {
        all.retain(|l| l.time >= since);
    }
    if let Some(n) = opts.tail_lines {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    let mut out = Vec::new();
    for l in &all {
        out.extend(format(l, opts.timestamps));
    }
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// The log file of the previous attempt: `<dir>/<n>.log` → `<dir>/<n-1>.log`.
pub fn previous_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let n: u32 = name.strip_suffix(".log")?.parse().ok()?;
    Some(path.with_file_name(format!("{}.log", n.checked_sub(1)?)))
}

fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut text = match std::fs::read(rotated_path(path)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    text.extend(std::fs::read(path)?);
    Ok(text)
}

/// The logs of one container run (its rotated file first), rendered under `opts`.
pub fn read(path: &Path, opts: &LogOptions) -> io::Result<Vec<u8>> {
    Ok(render(&read_all(path)?, opts))
}

/// What is shown now, then every new line as it is written, until `done` completes (e.g.
/// the container exited) and the file holds nothing more. Follows rotation.
pub fn follow(
    path: PathBuf,
    opts: LogOptions,
    done: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    struct St {
        path: PathBuf,
        opts: LogOptions,
        /// Bytes of the current file already consumed.
        offset: u64,
        inode: u64,
        /// A written-but-unterminated tail of the file.
        carry: Vec<u8>,
        sent: usize,
        started: bool,
        done: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        finished: bool,
        ended: bool,
    }
    let st = St {
        path,
        opts,
        offset: 0,
        inode: 0,
        carry: Vec::new(),
        sent: 0,
        started: false,
        done: Box::pin(done),
        finished: false,
        ended: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.ended || st.opts.limit_bytes.is_some_and(|l| st.sent >= l) {
                return None;
            }
            let chunk = if !st.started {
                st.started = true;
                match read_all(&st.path) {
                    Ok(text) => {
                        use std::os::unix::fs::MetadataExt;
                        if let Ok(m) = std::fs::metadata(&st.path) {
                            (st.inode, st.offset) = (m.ino(), m.len());
                        }
                        // Only whole records now; an unterminated one waits for its end.
                        let cut = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                        st.carry = text[cut..].to_vec();
                        render(&text[..cut], &st.opts)
                    }
                    Err(e) => {
                        st.ended = true;
                        return Some((Err(e), st));
                    }
                }
            } else {
                match new_bytes(&st.path, &mut st.inode, &mut st.offset) {
                    Ok(new) if !new.is_empty() => {
                        st.carry.extend(new);
                        let cut = st
                            .carry
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |i| i + 1);
                        let whole: Vec<u8> = st.carry.drain(..cut).collect();
                        let opts = LogOptions {
                            tail_lines: None,
                            limit_bytes: None,
                            ..st.opts.clone()
                        };
                        render(&whole, &opts)
                    }
                    Ok(_) if st.finished => return None,
                    Ok(_) => {
                        let tick = tokio::time::sleep(Duration::from_millis(200));
                        tokio::select! {
                            _ = &mut st.done, if !st.finished => st.finished = true,
                            _ = tick => {}
                        }
                        continue;
                    }
                    Err(e) => {
                        st.ended = true;
                        return Some((Err(e), st));
                    }
                }
            };
            if chunk.is_empty() {
                continue;
            }
            let mut chunk = chunk;
            if let Some(limit) = st.opts.limit_bytes {
                chunk.truncate(limit.saturating_sub(st.sent));
            }
            st.sent += chunk.len();
            return Some((Ok(Bytes::from(chunk)), st));
        }
    })
}

/// Bytes appended to `path` since `offset`; a new file (rotation) is read from its start.
/// Lines written to the old file between the last read and the rotation are lost, as
/// with the kubelet's follower.
fn new_bytes(path: &Path, inode: &mut u64, offset: &mut u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if meta.ino() != *inode || meta.len() < *offset {
        *inode = meta.ino();
        *offset = 0;
    }
    f.seek(SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    *offset += buf.len() as u64;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-21T10:00:01.000000000Z stdout F one
2026-11-21T10:00:02.000000000Z stderr F two
not a cri line
2026-11-21T10:00:03.000000000Z stdout P thr
2026-11-21T10:00:03.500000000Z stderr F four
2026-11-21T10:00:04.000000000Z stdout F ee
2026-11-21T10:00:05.000000000Z stdout F five
2026-11-21T10:00:06.000000000Z stdout P unfinis";

    #[test]
    fn parsing() {
        let r = parse_line(b"2026-11-21T10:00:00.123456789Z stderr P a b c").unwrap();
        assert_eq!(
            (r.stream, r.tag, r.content),
            (Std::Stderr, Tag::Partial, &b"a b c"[..])
        );
        assert_eq!(r.time.subsec_nanosecond(), 123_456_789);
        assert_eq!(
            parse_line(b"2026-11-21T10:00:00Z stdout F")
                .unwrap()
                .content,
            b""
        );
        for bad in [
            &b"x stdout F a"[..],
            b"2026-11-21T10:00:00Z stdin F a",
            b"2026-11-21T10:00:00Z stdout X a",
            b"",
        ] {
            assert!(
                parse_line(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn options() {
        let ts = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let cases = [
            (LogOptions::default(), "one\ntwo\nfour\nthree\nfive\nunfinis"),
            (LogOptions { tail_lines: Some(2), ..Default::default() }, "five\nunfinis"),
            (LogOptions { tail_lines: Some(0), ..Default::default() }, ""),
            (LogOptions { tail_lines: Some(100), ..Default::default() }, "one\ntwo\nfour\nthree\nfive\nunfinis"),
            (LogOptions { since: ts("2026-11-21T10:00:03Z"), ..Default::default() }, "four\nthree\nfive\nunfinis"),
            (LogOptions { since: ts("2026-11-21T10:00:03.1Z"), ..Default::default() }, "four\nfive\nunfinis"),
            (LogOptions { limit_bytes: Some(6), ..Default::default() }, "one\ntw"),
            (
                LogOptions { timestamps: true, tail_lines: Some(3), limit_bytes: None, since: None },
                "2026-11-21T10:00:03.000000000Z three\n2026-11-21T10:00:05.000000000Z five\n2026-11-21T10:00:06.000000000Z unfinis",
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(
                String::from_utf8(render(LOG.as_bytes(), &opts)).unwrap(),
                want,
                "{opts:?}"
            );
        }
    }

    #[test]
    fn previous_attempt() {
        assert_eq!(
            previous_path(Path::new("/l/app/3.log")),
            Some(PathBuf::from("/l/app/2.log"))
        );
        assert_eq!(previous_path(Path::new("/l/app/0.log")), None);
        assert_eq!(previous_path(Path::new("/l/app/x.log")), None);
    }

    #[tokio::test]
    async fn follow_streams_new_lines_across_rotation() {
        use futures::StreamExt;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2026-11-21T10:00:01Z stdout F old\n2026-11-21T10:00:02Z stdout F last\n",
        )
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = LogOptions {
            tail_lines: Some(1),
            ..Default::default()
        };
        let mut s = Box::pin(follow(path.clone(), opts, async move {
            let _ = rx.await;
        }));
        assert_eq!(s.next().await.unwrap().unwrap(), "last\n");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"2026-11-21T10:00:03Z stdout P ne").unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.write_all(b"w\n2026-11-21T10:00:03Z stdout F -line\n")
            .unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "new-line\n");
        drop(f);
        std::fs::rename(&path, rotated_path(&path)).unwrap();
        std::fs::write(&path, "2026-11-21T10:00:04Z stderr F rotated\n").unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), "rotated\n");
        tx.send(()).unwrap();
        assert!(s.next().await.is_none());
    }
}
