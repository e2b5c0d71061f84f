//! Streaming a rendered output to disk only when it differs from the file there.
//!
//! A five-million-address output is over a hundred megabytes. Rendering it into
//! memory, comparing that with the file and then writing it out touched the same
//! bytes three times, and the buffers (one per output, rendered in parallel) were
//! the largest allocation of a sync. The sink instead takes the rendered bytes as
//! they come: while they match the file on disk, nothing is written; at the first
//! difference it opens the temp file, copies the matching prefix from the old
//! file and writes on from there. Either way it hashes what it sees, so the run
//! record gets the output's length and hash without a second pass.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;

use super::commit::{CommitError, Staged, Target, TempFile};

/// Start writeback of a temp file every this many bytes, so the final fsync
/// waits for the tail, not the whole file.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Where the rendered bytes go.
enum State {
    /// Still equal to the first `matched` bytes of the old file.
    Comparing { old: File, matched: u64, buf: Vec<u8> },
    /// Different, and being written to a temp file.
    Writing { temp: TempFile, flushed: u64 },
    /// Different, but not to be written (a dry run), or writing failed.
    Discarding,
}

/// What one output's rendering amounted to.
#[derive(Debug)]
pub struct Finished {
    pub len: u64,
    pub hash: String,
    pub changed: bool,
    /// The complete temp files of a changed output (when staging).
    pub staged: Option<Result<Staged, CommitError>>,
    /// The rendered bytes, when asked to keep them (for `--diff`).
    pub kept: Option<Vec<u8>>,
}

/// An [`io::Write`] that compares, hashes and (when staging) writes one output.
/// Wrap it in a `BufWriter`: it reads the old file in step with each write.
pub struct OutputSink {
    target: Target,
    stage: bool,
    state: State,
    len: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
    kept: Option<Vec<u8>>,
    error: Option<CommitError>,
}

impl OutputSink {
    /// `stage`: write a temp file once the output differs. `keep`: also keep the
    /// rendered bytes in memory.
    pub fn new(target: Target, stage: bool, keep: bool) -> Result<OutputSink, CommitError> {
        let state = match File::open(&target.path) {
            Ok(old) => State::Comparing { old, matched: 0, buf: Vec::new() },
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::Discarding,
            Err(err) => return Err(CommitError::Io { path: target.path.clone(), what: "cannot read", err }),
        };
        let mut sink = OutputSink {
            target,
            stage,
            state,
            len: 0,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            kept: keep.then(Vec::new),
            error: None,
        };
        if matches!(sink.state, State::Discarding) {
            sink.diverge(0);
        }
        Ok(sink)
    }

    /// Leaves comparing: from now on the output is different. Opens the temp
    /// file with the first `matched` bytes of the old file in it.
    fn diverge(&mut self, matched: u64) {
        let old = std::mem::replace(&mut self.state, State::Discarding);
        if !self.stage {
            return;
        }
        let started = (|| -> Result<TempFile, CommitError> {
            let mut temp = self.target.create_temp()?;
            if let State::Comparing { mut old, .. } = old {
                let copied = old.rewind().and_then(|()| io::copy(&mut (&mut old).take(matched), &mut temp.file));
                match copied {
                    Ok(n) if n == matched => {}
                    Ok(_) => {
                        let err = io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being read");
                        return Err(CommitError::Io { path: self.target.path.clone(), what: "cannot read", err });
                    }
                    Err(err) => {
                        return Err(CommitError::Io {
                            path: temp.path().to_path_buf(),
                            what: "cannot write temp file",
                            err,
                        });
                    }
                }
            }
            Ok(temp)
        })();
        match started {
            Ok(temp) => self.state = State::Writing { temp, flushed: 0 },
            Err(e) => self.error = Some(e),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Comparing { old, matched, buf } => {
                buf.resize(data.len(), 0);
                let same = match read_full(old, buf) {
                    Ok(n) => n == data.len() && buf[..n] == *data,
                    Err(e) => {
                        self.error =
                            Some(CommitError::Io { path: self.target.path.clone(), what: "cannot read", err: e });
                        self.state = State::Discarding;
                        return;
                    }
                };
                if same {
                    *matched += data.len() as u64;
                } else {
                    let m = *matched;
                    self.diverge(m);
                    self.feed(data);
                }
            }
            State::Writing { temp, flushed } => {
                if let Err(err) = temp.file.write_all(data) {
                    let path = temp.path().to_path_buf();
                    self.error = Some(CommitError::Io { path, what: "cannot write temp file", err });
                    self.state = State::Discarding;
                    return;
                }
                let end = self.len + data.len() as u64;
                if end - *flushed >= WRITEBACK_EVERY {
                    start_writeback(&temp.file, *flushed, end - *flushed);
                    *flushed = end;
                }
            }
            State::Discarding => {}
        }
    }

    /// Ends the output: whether it changed, and its staged files.
    pub fn finish(mut self) -> Finished {
        if let State::Comparing { old, matched, .. } = &mut self.state {
            // Equal so far: the same when the old file ends here too, and its
            // postmap database is at least as new as the text.
            let at_end = matches!(old.read(&mut [0u8; 1]), Ok(0));
            let map_fresh = old.metadata().is_ok_and(|meta| self.target.map_is_fresh(&meta));
            if !(at_end && map_fresh) {
                let m = *matched;
                self.diverge(m);
            }
        }
        let changed = !matches!(self.state, State::Comparing { .. });
        let staged = match (std::mem::replace(&mut self.state, State::Discarding), self.error.take()) {
            (_, Some(e)) => Some(Err(e)),
            (State::Writing { temp, .. }, None) => Some(temp.seal()),
            _ => None,
        };
        Finished {
            len: self.len,
            hash: crate::state::digest_hex(&self.hasher),
            changed,
            staged: if self.stage && changed { staged } else { None },
            kept: self.kept.take(),
        }
    }
}

impl Write for OutputSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        if let Some(k) = &mut self.kept {
            k.extend_from_slice(data);
        }
        self.feed(data);
        self.len += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Asks the kernel to start writing a range out now (no waiting): the final
/// fsync then finds most of the file already on its way to disk.
fn start_writeback(f: &File, offset: u64, len: u64) {
    // SAFETY: a hint on a descriptor we own; failure only loses the hint.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;
    use std::time::Duration;

    fn target(dir: &Path) -> Target {
        Target { path: dir.join("out"), companion: None, mode: None, hook_timeout: Duration::from_secs(5) }
    }

    /// Feeds `bytes` in pieces of `chunk` bytes, as a BufWriter would.
    fn run(t: &Target, stage: bool, bytes: &[u8], chunk: usize) -> Finished {
        let mut s = OutputSink::new(t.clone(), stage, false).unwrap();
        for piece in bytes.chunks(chunk.max(1)) {
            s.write_all(piece).unwrap();
        }
        s.finish()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn equal_output_writes_nothing_and_hashes_like_the_one_shot_hash() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        let text = b"alice@example.com OK\nbob@example.com OK\n".repeat(50);
        fs::write(&t.path, &text).unwrap();
        for chunk in [1, 7, 64, text.len()] {
            let f = run(&t, true, &text, chunk);
            assert!(!f.changed, "chunk {chunk}");
            assert!(f.staged.is_none());
            assert_eq!(f.len, text.len() as u64);
            assert_eq!(f.hash, crate::state::hash_bytes(&text));
            assert_eq!(names(d.path()), ["out"], "no temp file");
        }
    }

    #[test]
    fn any_difference_stages_exactly_the_new_bytes() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        let old = b"a@x OK\nb@x OK\nc@x OK\n".to_vec();
        let cases: Vec<Vec<u8>> = vec![
            b"a@x OK\nb@x OK\nc@x OK\nd@x OK\n".to_vec(), // longer: old is a prefix
            b"a@x OK\nb@x OK\n".to_vec(),                 // shorter: new is a prefix of old
            b"a@x OK\nB@x OK\nc@x OK\n".to_vec(),         // same length, differs midway
            b"z@x OK\n".to_vec(),                         // differs at once
            Vec::new(),                                   // empty
        ];
        for new in cases {
            for chunk in [1, 3, 1000] {
                fs::write(&t.path, &old).unwrap();
                let f = run(&t, true, &new, chunk);
                assert!(f.changed);
                assert_eq!(f.hash, crate::state::hash_bytes(&new));
                f.staged.unwrap().unwrap().install().unwrap().finish();
                assert_eq!(fs::read(&t.path).unwrap(), new, "chunk {chunk}");
                assert_eq!(names(d.path()), ["out"]);
            }
        }
    }

    #[test]
    fn a_new_file_is_staged_and_a_dry_run_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        let dry = run(&t, false, b"x\n", 1);
        assert!(dry.changed && dry.staged.is_none());
        assert!(names(d.path()).is_empty());
        fs::write(&t.path, "y\n").unwrap();
        let dry = run(&t, false, b"x\n", 1);
        assert!(dry.changed && dry.staged.is_none());
        assert_eq!(names(d.path()), ["out"]);
        let f = run(&t, true, b"x\n", 1);
        f.staged.unwrap().unwrap().install().unwrap().finish();
        assert_eq!(fs::read(&t.path).unwrap(), b"x\n");
    }

    #[test]
    fn kept_bytes_and_writeback_of_a_large_output() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        let big: Vec<u8> = (0..(WRITEBACK_EVERY as usize * 2 + 12345)).map(|i| b'a' + (i % 26) as u8).collect();
        let mut s = OutputSink::new(t.clone(), true, true).unwrap();
        for piece in big.chunks(1 << 20) {
            s.write_all(piece).unwrap();
        }
        let f = s.finish();
        assert_eq!(f.kept.as_deref(), Some(&big[..]));
        f.staged.unwrap().unwrap().install().unwrap().finish();
        assert_eq!(fs::read(&t.path).unwrap(), big);
    }

    #[test]
    fn a_stale_map_makes_equal_text_changed() {
        let d = tempfile::tempdir().unwrap();
        let t = Target {
            companion: Some(crate::writer::commit::Companion::Map(crate::writer::config::MapBuild {
                tool: crate::writer::config::MapTool::Postmap,
                kind: crate::writer::config::MapType::Lmdb,
            })),
            ..target(d.path())
        };
        fs::write(&t.path, "x OK\n").unwrap();
        // No database at all: the text must be staged again so postmap rebuilds it.
        let f = OutputSink::new(t.clone(), false, false).map(|mut s| {
            s.write_all(b"x OK\n").unwrap();
            s.finish()
        });
        assert!(f.unwrap().changed);
        std::thread::sleep(Duration::from_millis(20));
        fs::write(d.path().join("out.lmdb"), "db").unwrap();
        let f = run(&t, false, b"x OK\n", 2);
        assert!(!f.changed, "a newer database is current");
    }

    #[test]
    fn a_write_failure_is_reported_as_a_staging_error() {
        let d = tempfile::tempdir().unwrap();
        let t = target(&d.path().join("missing"));
        let f = run(&t, true, b"x\n", 1);
        assert!(f.changed);
        let e = f.staged.unwrap().unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
