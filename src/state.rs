//! The state directory: what rcptsync remembers between runs.
//!
//! - `applied.list`: the last list that was published (the guard's baseline);
//! - `sources/NAME.list`: each source's last-known-good slice;
//! - `lock`: held (flock) for the whole of a run, so two runs never overlap.
//!
//! Files are versioned text: a header `# rcptsync <kind> v1 count=N fingerprint=HEX`
//! then one canonical entry per line. The header's count and fingerprint let a
//! reader detect truncation or corruption, and let a run compare a new list with
//! the stored one without reading it. Every file is written atomically (temp file,
//! fsync, rename, fsync directory), and the directory is created mode 0700.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::policy::address::Entry;

const VERSION: &str = "v1";

/// A state-directory problem. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("another rcptsync run holds the lock {path}{holder}; waited {waited:?}")]
    Locked {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
    #[error("state file {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |err| StateError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// 128-bit fingerprint of a sorted entry list (xxh3 over the lines).
pub fn fingerprint<'a>(entries: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for e in entries {
        h.update(e.as_bytes());
        h.update(b"\n");
    }
    format!("{:032x}", h.digest128())
}

/// The header of a stored list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListHeader {
    pub count: usize,
    pub fingerprint: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Held while a run is in progress; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl StateDir {
    /// Opens the directory, creating it (0700) when `create` is set.
    pub fn open(root: &Path, create: bool) -> Result<StateDir, StateError> {
        if create {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join("sources"))
                .map_err(io_err(root))?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn applied_path(&self) -> PathBuf {
        self.root.join("applied.list")
    }

    pub fn slice_path(&self, source: &str) -> PathBuf {
        self.root.join("sources").join(format!("{source}.list"))
    }

    /// Takes the run lock, waiting up to `wait` for another run to finish.
    pub fn lock(&self, wait: Duration) -> Result<RunLock, StateError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let start = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(StateError::Io { path, err });
            }
            if start.elapsed() >= wait {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(StateError::Locked {
                    path,
                    holder,
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut f = &file;
        let _ = file.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
        Ok(RunLock { _file: file })
    }

    /// Reads only the header of a list file, or None if it does not exist.
    pub fn read_header(&self, path: &Path) -> Result<Option<ListHeader>, StateError> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    err: e,
                });
            }
        };
        let mut buf = [0u8; 256];
        let n = f.read(&mut buf).map_err(io_err(path))?;
        let first = buf[..n].split(|&b| b == b'\n').next().unwrap_or_default();
        parse_header(path, &String::from_utf8_lossy(first)).map(Some)
    }

    /// Reads and verifies a whole list file, or None if it does not exist.
    pub fn read_list(&self, path: &Path) -> Result<Option<(ListHeader, Vec<Entry>)>, StateError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(StateError::Corrupt {
                    path: path.to_path_buf(),
                    why: "not UTF-8".into(),
                });
            }
            Err(e) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    err: e,
                });
            }
        };
        let corrupt = |why: String| StateError::Corrupt {
            path: path.to_path_buf(),
            why,
        };
        let mut lines = text.split_terminator('\n');
        let header = parse_header(path, lines.next().unwrap_or_default())?;
        if !text.ends_with('\n') {
            return Err(corrupt("truncated (no final newline)".into()));
        }
        let mut entries = Vec::with_capacity(header.count);
        for (i, line) in lines.enumerate() {
            let e = Entry::parse_canonical(line)
                .map_err(|e| corrupt(format!("line {}: {line:?} {e}", i + 2)))?;
            entries.push(e);
        }
        if entries.len() != header.count {
            return Err(corrupt(format!(
                "header says {} entries, file has {}",
                header.count,
                entries.len()
            )));
        }
        let fp = fingerprint(entries.iter().map(Entry::as_str));
        if fp != header.fingerprint {
            return Err(corrupt("fingerprint does not match the contents".into()));
        }
        if !entries.windows(2).all(|w| w[0] < w[1]) {
            return Err(corrupt("entries are not sorted and unique".into()));
        }
        Ok(Some((header, entries)))
    }

    /// Writes a sorted, unique list atomically; returns its header.
    pub fn write_list(
        &self,
        path: &Path,
        kind: &str,
        sorted: &[&str],
    ) -> Result<ListHeader, StateError> {
        let header = ListHeader {
            count: sorted.len(),
            fingerprint: fingerprint(sorted.iter().copied()),
        };
        let dir = path.parent().unwrap_or(&self.root);
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
            std::process::id()
        ));
        let result = (|| -> io::Result<()> {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            writeln!(
                w,
                "# rcptsync {kind} {VERSION} count={} fingerprint={}",
                header.count, header.fingerprint
            )?;
            for e in sorted {
                w.write_all(e.as_bytes())?;
                w.write_all(b"\n")?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(err) = result {
            let _ = fs::remove_file(&tmp);
            return Err(StateError::Io {
                path: path.to_path_buf(),
                err,
            });
        }
        Ok(header)
    }
}

fn parse_header(path: &Path, line: &str) -> Result<ListHeader, StateError> {
    let corrupt = |why: String| StateError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let mut parts = line.split(' ');
    if parts.next() != Some("#") || parts.next() != Some("rcptsync") {
        return Err(corrupt("missing rcptsync header".into()));
    }
    let _kind = parts.next();
    match parts.next() {
        Some(VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!(
                "format {v} is not supported by this version (expected {VERSION})"
            )));
        }
        None => return Err(corrupt("header has no version".into())),
    }
    let mut count = None;
    let mut fp = None;
    for p in parts {
        if let Some(v) = p.strip_prefix("count=") {
            count = v.parse::<usize>().ok();
        } else if let Some(v) = p.strip_prefix("fingerprint=") {
            fp = Some(v.to_string());
        }
    }
    match (count, fp) {
        (Some(count), Some(fingerprint)) if fingerprint.len() == 32 => {
            Ok(ListHeader { count, fingerprint })
        }
        _ => Err(corrupt("header lacks count or fingerprint".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_and_header() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(&d.path().join("st"), true).unwrap();
        let mode = fs::metadata(s.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let p = s.applied_path();
        assert!(s.read_list(&p).unwrap().is_none());
        let h = s
            .write_list(&p, "applied-list", &["@x.org", "a@x.com", "b@x.com"])
            .unwrap();
        assert_eq!(s.read_header(&p).unwrap(), Some(h.clone()));
        let (h2, entries) = s.read_list(&p).unwrap().unwrap();
        assert_eq!(h2, h);
        assert_eq!(
            entries.iter().map(Entry::as_str).collect::<Vec<_>>(),
            ["@x.org", "a@x.com", "b@x.com"]
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn corruption_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path(), true).unwrap();
        let p = s.applied_path();
        s.write_list(&p, "applied-list", &["a@x.com", "b@x.com"])
            .unwrap();
        let good = fs::read_to_string(&p).unwrap();
        let cases = [
            (good[..good.len() - 3].to_string(), "truncated"),
            (good.replace("b@x.com", "c@x.com"), "fingerprint"),
            (good.replace("b@x.com\n", ""), "header says 2 entries"),
            (good.replace(" v1 ", " v9 "), "format v9"),
            ("garbage\n".to_string(), "missing rcptsync header"),
            (good.replace("b@x.com", "b@x.com OK"), "line 3"),
        ];
        for (text, want) in cases {
            fs::write(&p, &text).unwrap();
            let e = s.read_list(&p).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("applied.list"),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path(), true).unwrap();
        let held = s.lock(Duration::ZERO).unwrap();
        let e = s.lock(Duration::from_millis(250)).unwrap_err().to_string();
        assert!(
            e.contains("another rcptsync run holds the lock")
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        s.lock(Duration::ZERO).unwrap();
    }
}
