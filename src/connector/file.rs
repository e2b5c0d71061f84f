//! `kind = "file"`: one address per line.
//!
//! Blank lines and `#` comments are ignored, and only the first whitespace-separated
//! field of a line counts, so an existing Postfix map (`address OK`) can be a
//! source as it is. A line `@domain` declares a catch-all domain, unless the source
//! sets `catchalls = false`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;

use crate::connector::{Batch, Connector, Deferred, Fetched, SourceError};
use crate::policy::{Located, Locator, RawItem, RawKind, Rejected, validate_item};

/// `kind = "file"`: one address per line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    /// The file to read. Blank lines and `#` comments are ignored; only the first
    /// whitespace-separated field of a line counts (an existing Postfix map works).
    pub path: PathBuf,
    /// Whether a line `@domain` declares a catch-all domain (default true). When
    /// false such lines are refused with a warning.
    #[serde(default = "crate::section::yes")]
    pub catchalls: bool,
}

impl FileSourceSpec {
    pub fn validate(&mut self, c: &mut crate::section::Checker, _at: &str) {
        self.path = c.abs(std::mem::take(&mut self.path));
    }
}

#[derive(Debug, Clone)]
pub struct FileSource {
    spec: FileSourceSpec,
    /// How long a pipe or device may take to deliver everything (the source's
    /// `fetch_timeout`).
    fetch_timeout: std::time::Duration,
}

impl FileSource {
    pub fn new(spec: FileSourceSpec, fetch_timeout: std::time::Duration) -> FileSource {
        FileSource { spec, fetch_timeout }
    }

    /// Reads and parses the file. Returns the result and the file's size.
    fn load(&self) -> Result<(Batch, u64), SourceError> {
        let deadline = Instant::now() + self.fetch_timeout;
        read_and_parse(&self.spec.path, self.spec.catchalls, deadline).map_err(|e| self.read_error(e))
    }

    fn read_error(&self, e: io::Error) -> SourceError {
        SourceError::new(format!("cannot read {}: {e}", self.spec.path.display()))
    }

    /// The file's fingerprint (hash of its bytes and the catch-all setting),
    /// with its parse put off: a sync whose inputs are all unchanged stops
    /// before parsing. A pipe or device is read and parsed at once.
    fn fetch_deferred(&self) -> Result<Fetched, SourceError> {
        let t = std::time::Instant::now();
        let Some(scan) = scan(&self.spec.path).map_err(|e| self.read_error(e))? else {
            return self.load().map(|(f, _)| Fetched::Ready(f));
        };
        tracing::debug!(path = %self.spec.path.display(), lines = scan.lines, took_ms = t.elapsed().as_millis() as u64, "file scanned");
        let raw_fingerprint = fingerprint(&scan.hash, self.spec.catchalls);
        let this = self.clone();
        let parse = move || {
            let t = std::time::Instant::now();
            let (f, bytes, hash) =
                parse_file(&this.spec.path, this.spec.catchalls, scan.lines, None).map_err(|e| this.read_error(e))?;
            tracing::debug!(path = %this.spec.path.display(), bytes, took_ms = t.elapsed().as_millis() as u64, peak_rss_mib = crate::mem::peak_rss_mib(), "file read and parsed");
            Ok((f, fingerprint(&hash, this.spec.catchalls)))
        };
        Ok(Fetched::Deferred { fingerprint: raw_fingerprint, parse: Deferred(Box::new(parse)) })
    }
}

/// The raw fingerprint of a file source: its bytes' hash and what changes how
/// they are read.
fn fingerprint(hash: &str, catchalls: bool) -> String {
    format!("file:{hash}:catchalls={catchalls}")
}

/// Bytes read and parsed at a time: the file is never held whole in memory (a
/// five-million-line file is 136 MB of fresh pages, and fresh pages are most of
/// what a large sync costs).
const BLOCK: usize = 8 << 20;

/// Bytes per parallel chunk within a block.
const CHUNK: usize = 1 << 20;

/// What a first read of a regular file found: its line count (to size the
/// result) and a hash of its bytes (the source's raw fingerprint).
struct Scan {
    lines: usize,
    hash: String,
}

/// Reads a regular file once, counting lines and hashing; `None` for a pipe or
/// device, which cannot be read twice.
fn scan(path: &Path) -> io::Result<Option<Scan>> {
    // Asked of the path, not of an opened file: opening a pipe would consume
    // its one writer.
    if !std::fs::metadata(path)?.is_file() {
        return Ok(None);
    }
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; BLOCK];
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let (mut lines, mut last) = (0usize, b'\n');
    loop {
        let n = read_some(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count();
        hasher.update(&buf[..n]);
        last = buf[n - 1];
    }
    lines += usize::from(last != b'\n');
    Ok(Some(Scan { lines, hash: crate::state::digest_hex(&hasher) }))
}

/// Reads `path` in blocks, parsing each as it comes, with `lines` as the size
/// hint. Returns the result, the number of bytes and their hash. With a
/// `deadline` (a pipe or device), every wait for data ends at the deadline.
fn parse_file(
    path: &Path,
    catchalls: bool,
    lines: usize,
    deadline: Option<Instant>,
) -> io::Result<(Batch, u64, String)> {
    let mut f = match deadline {
        // A pipe opened for reading would block until a writer comes; opened
        // non-blocking, the waits are polls that end at the deadline.
        Some(_) => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?
        }
        None => File::open(path)?,
    };
    let mut buf = vec![0u8; BLOCK];
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut size = 0u64;
    let mut parser = Parser::new(lines, catchalls);
    // `buf[..filled]` holds the start of a line carried over from the last block.
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // One line longer than the buffer: grow it (a hostile file can have a
            // huge line; it is refused later, by length).
            buf.resize(buf.len() * 2, 0);
        }
        let n = read_within(&mut f, &mut buf[filled..], deadline)?;
        hasher.update(&buf[filled..filled + n]);
        size += n as u64;
        let end = filled + n;
        if n == 0 {
            parser.feed(&buf[..end]);
            break;
        }
        match memchr::memrchr(b'\n', &buf[..end]) {
            Some(nl) => {
                parser.feed(&buf[..=nl]);
                buf.copy_within(nl + 1..end, 0);
                filled = end - nl - 1;
            }
            None => filled = end,
        }
    }
    Ok((parser.finish(), size, crate::state::digest_hex(&hasher)))
}

/// Reads and parses `path` now (the size hint from a first read when it is a
/// regular file). For tests and `check`.
fn read_and_parse(path: &Path, catchalls: bool, deadline: Instant) -> io::Result<(Batch, u64)> {
    let (lines, deadline) = match scan(path)? {
        Some(s) => (s.lines, None),
        None => (0, Some(deadline)),
    };
    parse_file(path, catchalls, lines, deadline).map(|(f, size, _)| (f, size))
}

/// [`read_some`], waiting for data at most until `deadline` (a non-blocking
/// pipe or device).
fn read_within(f: &mut File, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
    use std::os::unix::io::AsRawFd;
    let Some(deadline) = deadline else { return read_some(f, buf) };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "nothing more arrived within fetch_timeout (a pipe nobody writes to, or a writer that stalled)",
            ));
        }
        let mut pfd = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            continue;
        }
        match read_some(f, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Splits file contents into validated entries. Pure, for tests and benchmarks.
pub fn parse(bytes: &[u8], catchalls: bool) -> Batch {
    let lines = memchr::memchr_iter(b'\n', bytes).count() + usize::from(!bytes.ends_with(b"\n"));
    let mut p = Parser::new(lines, catchalls);
    p.feed(bytes);
    p.finish()
}

/// Parses blocks of whole lines, in order. Each line is validated as it is read
/// ([`validate_item`], the rule every source goes through), so an entry is
/// built once; each block is cut at line boundaries into chunks parsed on all
/// cores.
struct Parser {
    catchalls: bool,
    /// Number of the next block's first line.
    next_line: usize,
    out: Batch,
}

impl Parser {
    /// `lines`: how many lines are coming at most (sizes the result).
    fn new(lines: usize, catchalls: bool) -> Parser {
        let mut out = Batch::default();
        // Only a hint: a file of blank lines would ask for far more than it
        // needs, so a reservation the allocator refuses just means growing.
        let _ = out.entries.try_reserve_exact(lines);
        Parser { catchalls, next_line: 1, out }
    }

    /// Parses `block`: whole lines (only the file's last may lack its newline).
    fn feed(&mut self, block: &[u8]) {
        use rayon::prelude::*;
        let mut chunks: Vec<(usize, &[u8])> = Vec::new();
        let mut rest = block;
        while !rest.is_empty() {
            let cut = if rest.len() <= CHUNK {
                rest.len()
            } else {
                memchr::memchr(b'\n', &rest[CHUNK..]).map_or(rest.len(), |p| CHUNK + p + 1)
            };
            let (chunk, tail) = rest.split_at(cut);
            chunks.push((self.next_line, chunk));
            self.next_line += memchr::memchr_iter(b'\n', chunk).count();
            rest = tail;
        }
        let catchalls = self.catchalls;
        let parts: Vec<(Vec<Located>, Vec<Rejected>)> =
            chunks.into_par_iter().map(|(first, chunk)| parse_chunk(chunk, first, catchalls)).collect();
        for (entries, rejected) in parts {
            self.out.entries.extend(entries);
            self.out.rejected.extend(rejected);
        }
    }

    fn finish(self) -> Batch {
        self.out
    }
}

/// Parses one chunk of whole lines, the first numbered `first_line`.
fn parse_chunk(bytes: &[u8], first_line: usize, catchalls: bool) -> (Vec<Located>, Vec<Rejected>) {
    let mut entries = Vec::with_capacity(bytes.len() / 16);
    let mut rejected = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for (i, end) in ends.enumerate() {
        let line = &body[start..end];
        start = end + 1;
        let lineno = u32::try_from(first_line + i).unwrap_or(u32::MAX);
        let Some(first) = line.iter().position(|b| !b.is_ascii_whitespace()) else { continue };
        let rest = &line[first..];
        let field = &rest[..rest.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(rest.len())];
        if field[0] == b'#' {
            continue;
        }
        let value = match std::str::from_utf8(field) {
            Ok(s) => s.to_string(),
            Err(_) => {
                rejected.push(Rejected {
                    value: String::from_utf8_lossy(field).into_owned(),
                    locator: Locator::Line(lineno),
                    reason: "is not valid UTF-8".into(),
                });
                continue;
            }
        };
        let kind = RawKind::of(&value);
        if kind == RawKind::CatchAll && !catchalls {
            rejected.push(Rejected {
                value,
                locator: Locator::Line(lineno),
                reason: "is a catch-all line, and this source sets catchalls = false".into(),
            });
            continue;
        }
        match validate_item(RawItem { value, kind, locator: Locator::Line(lineno) }) {
            Ok(entry) => entries.push(entry),
            Err(bad) => rejected.push(bad),
        }
    }
    (entries, rejected)
}

impl Connector for FileSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.fetch_deferred())
            .await
            .map_err(|e| SourceError::new(format!("reader task failed: {e}")))?
    }

    async fn check(&self) -> Result<String, SourceError> {
        let this = self.clone();
        let f = tokio::task::spawn_blocking(move || this.load().map(|(f, _)| f))
            .await
            .map_err(|e| SourceError::new(format!("reader task failed: {e}")))??;
        Ok(format!("{}: {} entries, {} refused", self.spec.path.display(), f.entries.len(), f.rejected.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(f: &Batch) -> Vec<&str> {
        f.entries.iter().map(|(e, _)| e.as_str()).collect()
    }

    #[test]
    fn first_field_comments_blank_lines_and_catchalls() {
        let text = b"# a comment\n\nalice@example.com\n  Bob@Example.com OK\n@example.org\t OK\n   # indented comment\nbad\xffbyte@example.com\nno-at-sign\n";
        let f = parse(text, true);
        assert!(f.items.is_empty(), "validated while parsing");
        let got: Vec<_> = f.entries.iter().map(|(e, l)| (e.as_str(), e.is_catchall(), l.clone())).collect();
        assert_eq!(
            got,
            [
                ("alice@example.com", false, Locator::Line(3)),
                ("bob@example.com", false, Locator::Line(4)),
                ("@example.org", true, Locator::Line(5)),
            ]
        );
        let refused: Vec<_> = f.rejected.iter().map(|r| (r.locator.clone(), r.reason.as_str())).collect();
        assert_eq!(refused[0], (Locator::Line(7), "is not valid UTF-8"));
        assert_eq!(refused[1].0, Locator::Line(8));
        assert_eq!(refused.len(), 2);
    }

    #[test]
    fn catchall_lines_refused_when_disabled() {
        let f = parse(b"@example.org\na@example.org\n", false);
        assert_eq!(texts(&f), ["a@example.org"]);
        assert!(f.rejected[0].reason.contains("catchalls = false"));
    }

    #[test]
    fn chunked_parse_keeps_order_and_line_numbers() {
        let mut text = String::new();
        for i in 0..200_000 {
            text.push_str(&format!("user{i}@example.com\n"));
            if i % 1000 == 0 {
                text.push_str("# comment\n\n");
            }
        }
        let f = parse(text.as_bytes(), true);
        assert_eq!(f.entries.len(), 200_000);
        for (n, (entry, locator)) in f.entries.iter().enumerate().step_by(9973) {
            assert_eq!(entry.as_str(), format!("user{n}@example.com"));
            let Locator::Line(l) = locator else { panic!() };
            let line = text.lines().nth(*l as usize - 1).unwrap();
            assert_eq!(line, entry.as_str());
        }
    }

    #[test]
    fn crlf_and_no_final_newline() {
        let f = parse(b"a@example.com\r\nb@example.com", true);
        assert_eq!(texts(&f), ["a@example.com", "b@example.com"]);
    }

    /// The reader goes block by block: lines cut by a block boundary, a line
    /// longer than a block, and a last line without a newline all come out
    /// whole, numbered as in the file, and the same as parsing it in one piece.
    #[test]
    fn block_reader_matches_whole_parse() {
        let mut text = String::new();
        let mut n = 0;
        while text.len() < 2 * BLOCK + 1000 {
            text.push_str(&format!("user.{n:07}@example.com OK\n"));
            n += 1;
            if n == 1000 {
                text.push_str(&format!("{}@example.com\n", "x".repeat(BLOCK + 10)));
            }
        }
        text.push_str("last@example.com");
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("list");
        std::fs::write(&path, &text).unwrap();
        let (read, size) = read_and_parse(&path, true, Instant::now() + std::time::Duration::from_secs(10)).unwrap();
        let whole = parse(text.as_bytes(), true);
        assert_eq!(size, text.len() as u64);
        assert_eq!(read.entries, whole.entries);
        assert_eq!(read.entries.len(), n + 1);
        assert_eq!(
            read.entries.last().map(|(e, l)| (e.as_str(), l.clone())),
            Some(("last@example.com", Locator::Line(n as u32 + 2)))
        );
        // The huge line is refused by the address rules, once, with its line.
        assert_eq!(read.rejected.len(), 1);
        assert_eq!(read.rejected[0].locator, Locator::Line(1001));
        assert!(read_and_parse(&d.path().join("missing"), true, Instant::now()).is_err());
    }

    /// A pipe nobody writes to (or whose writer stalls) ends at the deadline,
    /// instead of blocking the reading thread for ever.
    #[test]
    fn a_pipe_nobody_writes_to_ends_at_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let started = Instant::now();
        let e = read_and_parse(&fifo, true, Instant::now() + std::time::Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A writer that sends a line and then stalls.
        let stalled = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                use std::io::Write as _;
                let mut w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
                w.write_all(b"a@example.com\n").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1500));
            })
        };
        let e = read_and_parse(&fifo, true, Instant::now() + std::time::Duration::from_millis(500)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        stalled.join().unwrap();
    }

    /// A named pipe cannot be read twice: it is read once, with no size hint.
    #[test]
    fn a_pipe_is_read_in_one_pass() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, "a@example.com\n# c\nB@example.com\n").unwrap())
        };
        let (f, size) = read_and_parse(&fifo, true, Instant::now() + std::time::Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(texts(&f), ["a@example.com", "b@example.com"]);
        assert_eq!(f.entries[1].1, Locator::Line(3));
        assert_eq!(size, 32);
    }
}
