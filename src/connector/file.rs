//! `kind = "file"`: one address per line.
//!
//! Blank lines and `#` comments are ignored, and only the first whitespace-separated
//! field of a line counts, so an existing Postfix map (`address OK`) can be a
//! source as it is. A line `@domain` declares a catch-all domain, unless the source
//! sets `catchalls = false`.

use crate::config::FileSourceSpec;
use crate::connector::{Connector, Fetched, SourceError};
use crate::policy::{Locator, RawItem, RawKind, Rejected};

#[derive(Debug, Clone)]
pub struct FileSource {
    spec: FileSourceSpec,
}

impl FileSource {
    pub fn new(spec: FileSourceSpec) -> FileSource {
        FileSource { spec }
    }

    fn read(&self) -> Result<Vec<u8>, SourceError> {
        std::fs::read(&self.spec.path)
            .map_err(|e| SourceError::new(format!("cannot read {}: {e}", self.spec.path.display())))
    }
}

/// Splits file contents into raw items. Pure, for tests and benchmarks. Large
/// files are cut at line boundaries into chunks parsed on all cores.
///
/// Each chunk parses straight into its own stretch of one slot per line of the
/// final vector, and the empty slots (blank lines, comments, refusals) are then
/// squeezed out in place: the items of a five-million-line file are built once,
/// with no per-chunk vectors to concatenate.
pub fn parse(bytes: &[u8], catchalls: bool) -> Fetched {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 20;
    // (first line number, bytes, lines in it)
    let mut chunks: Vec<(usize, &[u8], usize)> = Vec::new();
    let mut rest = bytes;
    let mut first_line = 1usize;
    while !rest.is_empty() {
        let cut = if rest.len() <= CHUNK {
            rest.len()
        } else {
            memchr::memchr(b'\n', &rest[CHUNK..]).map_or(rest.len(), |p| CHUNK + p + 1)
        };
        let (chunk, tail) = rest.split_at(cut);
        let newlines = memchr::memchr_iter(b'\n', chunk).count();
        // A last line without a newline is a line too.
        let lines = newlines + usize::from(!chunk.ends_with(b"\n"));
        chunks.push((first_line, chunk, lines));
        first_line += newlines;
        rest = tail;
    }
    let mut slots: Vec<Option<RawItem>> = Vec::new();
    slots.resize_with(chunks.iter().map(|c| c.2).sum(), || None);
    let mut work = Vec::with_capacity(chunks.len());
    let mut free = slots.as_mut_slice();
    for (first, chunk, lines) in chunks {
        let (mine, others) = free.split_at_mut(lines);
        work.push((first, chunk, mine));
        free = others;
    }
    let rejected: Vec<Vec<Rejected>> =
        work.into_par_iter().map(|(first, chunk, slots)| parse_chunk(chunk, first, catchalls, slots)).collect();
    // Same size in and out, so this is collected in place, without a second
    // buffer; `flatten()` is not (it allocated a second 280 MB vector at 5M lines).
    #[allow(clippy::filter_map_identity)]
    let items: Vec<RawItem> = slots.into_iter().filter_map(|s| s).collect();
    Fetched {
        items,
        rejected: rejected.into_iter().flatten().collect(),
        left_out: Vec::new(),
    }
}

/// Parses one chunk, line `i` of it into `slots[i]`; returns the refused lines.
fn parse_chunk(bytes: &[u8], first_line: usize, catchalls: bool, slots: &mut [Option<RawItem>]) -> Vec<Rejected> {
    let mut rejected = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    for ((i, end), slot) in ends.enumerate().zip(slots.iter_mut()) {
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
        let kind = if value.starts_with('@') {
            if !catchalls {
                rejected.push(Rejected {
                    value,
                    locator: Locator::Line(lineno),
                    reason: "is a catch-all line, and this source sets catchalls = false".into(),
                });
                continue;
            }
            RawKind::CatchAll
        } else {
            RawKind::Address
        };
        *slot = Some(RawItem { value, kind, locator: Locator::Line(lineno) });
    }
    rejected
}

impl Connector for FileSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let bytes = this.read()?;
            let read_ms = t.elapsed().as_millis() as u64;
            let f = parse(&bytes, this.spec.catchalls);
            tracing::debug!(path = %this.spec.path.display(), bytes = bytes.len(), read_ms, parse_ms = t.elapsed().as_millis() as u64 - read_ms, peak_rss_mib = crate::run::peak_rss_mib(), "file read");
            Ok(f)
        })
        .await
        .map_err(|e| SourceError::new(format!("reader task failed: {e}")))?
    }

    async fn check(&self) -> Result<String, SourceError> {
        let this = self.clone();
        let f = tokio::task::spawn_blocking(move || this.read().map(|b| parse(&b, this.spec.catchalls)))
            .await
            .map_err(|e| SourceError::new(format!("reader task failed: {e}")))??;
        Ok(format!("{}: {} entries, {} refused", self.spec.path.display(), f.items.len(), f.rejected.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_field_comments_blank_lines_and_catchalls() {
        let text = b"# a comment\n\nalice@example.com\n  Bob@Example.com OK\n@example.org\t OK\n   # indented comment\nbad\xffbyte@example.com\n";
        let f = parse(text, true);
        let got: Vec<_> = f.items.iter().map(|i| (i.value.as_str(), i.kind, i.locator.clone())).collect();
        assert_eq!(
            got,
            [
                ("alice@example.com", RawKind::Address, Locator::Line(3)),
                ("Bob@Example.com", RawKind::Address, Locator::Line(4)),
                ("@example.org", RawKind::CatchAll, Locator::Line(5)),
            ]
        );
        assert_eq!(f.rejected.len(), 1);
        assert_eq!(f.rejected[0].locator, Locator::Line(7));
        assert_eq!(f.rejected[0].reason, "is not valid UTF-8");
    }

    #[test]
    fn catchall_lines_refused_when_disabled() {
        let f = parse(b"@example.org\na@example.org\n", false);
        assert_eq!(f.items.len(), 1);
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
        assert_eq!(f.items.len(), 200_000);
        for (n, item) in f.items.iter().enumerate().step_by(9973) {
            assert_eq!(item.value, format!("user{n}@example.com"));
            let Locator::Line(l) = item.locator else { panic!() };
            let line = text.lines().nth(l as usize - 1).unwrap();
            assert_eq!(line, item.value);
        }
    }

    #[test]
    fn crlf_and_no_final_newline() {
        let f = parse(b"a@example.com\r\nb@example.com", true);
        assert_eq!(f.items.iter().map(|i| i.value.as_str()).collect::<Vec<_>>(), ["a@example.com", "b@example.com"]);
    }
}
