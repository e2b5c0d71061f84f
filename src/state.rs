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

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
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
    Locked { path: PathBuf, holder: String, waited: Duration },
    #[error("state file {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    /// The run would be unsafe or would leave files another user's runs cannot
    /// use: a configuration problem (exit 78), found before anything is read.
    #[error("{0}")]
    Refused(String),
}

/// Refuses a state directory that belongs to another user or that others can write.
fn check_owner(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    let euid = crate::secure_fs::euid();
    if meta.uid() != euid {
        let owner = crate::secure_fs::user_name(meta.uid());
        return Err(StateError::Refused(format!(
            "state_dir {} belongs to user {owner}, and this run is {} (uid {euid}): run rcptsync as {owner} \
             (e.g. sudo -u {owner} rcptsync sync), so that every state file keeps one owner and the daemon can \
             replace it",
            dir.display(),
            crate::secure_fs::user_name(euid),
        )));
    }
    match crate::secure_fs::unsafe_dir(dir) {
        Some(why) => Err(StateError::Refused(format!("state_dir {why}"))),
        None => Ok(()),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |err| StateError::Io { path: path.to_path_buf(), err }
}

/// 128-bit fingerprint of a sorted entry list: xxh3 over the lines as they are
/// stored (`entry\n` each). Entries are gathered into a buffer first, because
/// feeding the hasher a few bytes at a time costs more than the hashing.
pub fn fingerprint<'a>(entries: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    for e in entries {
        if buf.len() + e.len() + 1 > buf.capacity() {
            h.update(&buf);
            buf.clear();
        }
        buf.extend_from_slice(e.as_bytes());
        buf.push(b'\n');
    }
    h.update(&buf);
    digest_hex(&h)
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
    /// Opens the directory, creating it (0700) when `create` is set. A run that
    /// writes (`create`) must be its owner's: a root run on the daemon's state
    /// directory would leave root-owned files the daemon cannot replace, so it
    /// is refused with the user to run as; and no other user may be able to
    /// write in it.
    pub fn open(root: &Path, create: bool) -> Result<StateDir, StateError> {
        if create {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(root.join("sources")).map_err(io_err(root))?;
            for dir in [root.to_path_buf(), root.join("sources")] {
                check_owner(&dir)?;
            }
        }
        Ok(StateDir { root: root.to_path_buf() })
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
        let file = crate::secure_fs::open_nofollow(&path, 0o600).map_err(io_err(&path))?;
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
                return Err(StateError::Locked { path, holder, waited: wait });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut f = &file;
        let _ = file.set_len(0);
        let _ = writeln!(f, "{}", std::process::id());
        self.remove_temp_leftovers();
        Ok(RunLock { _file: file })
    }

    /// Removes temp files a killed run left (only while holding the lock, so
    /// none belongs to a run in progress).
    fn remove_temp_leftovers(&self) {
        for dir in [self.root.clone(), self.root.join("sources")] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp.") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Reads only the header of a list file, or None if it does not exist.
    pub fn read_header(&self, path: &Path) -> Result<Option<ListHeader>, StateError> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StateError::Io { path: path.to_path_buf(), err: e });
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
                return Err(StateError::Corrupt { path: path.to_path_buf(), why: "not UTF-8".into() });
            }
            Err(e) => {
                return Err(StateError::Io { path: path.to_path_buf(), err: e });
            }
        };
        let corrupt = |why: String| StateError::Corrupt { path: path.to_path_buf(), why };
        let mut lines = text.split_terminator('\n');
        let header = parse_header(path, lines.next().unwrap_or_default())?;
        if !text.ends_with('\n') {
            return Err(corrupt("truncated (no final newline)".into()));
        }
        let mut entries = Vec::with_capacity(header.count);
        for (i, line) in lines.enumerate() {
            let e = Entry::parse_canonical(line).map_err(|e| corrupt(format!("line {}: {line:?} {e}", i + 2)))?;
            entries.push(e);
        }
        if entries.len() != header.count {
            return Err(corrupt(format!("header says {} entries, file has {}", header.count, entries.len())));
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
    pub fn write_list(&self, path: &Path, kind: &str, sorted: &[&str]) -> Result<ListHeader, StateError> {
        let (header, pending) = self.stage_list(path, kind, sorted.len(), sorted.iter().copied(), None)?;
        pending.install()?;
        Ok(header)
    }

    /// Writes a sorted, unique list to a complete, fsynced temp file beside `path`;
    /// [`PendingFile::install`] makes it visible. `fingerprint` may be passed when
    /// the caller has computed it already.
    pub fn stage_list<'a>(
        &self,
        path: &Path,
        kind: &str,
        count: usize,
        sorted: impl Iterator<Item = &'a str> + Clone,
        fingerprint_hint: Option<&str>,
    ) -> Result<(ListHeader, PendingFile), StateError> {
        let fp = fingerprint_hint.map(str::to_string).unwrap_or_else(|| fingerprint(sorted.clone()));
        let header = ListHeader { count, fingerprint: fp };
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
        let (mut f, tmp) = crate::secure_fs::create_temp(&dir, name, "tmp", 0o600)
            .map_err(|err| StateError::Io { path: path.to_path_buf(), err })?;
        let pending = PendingFile { tmp, path: path.to_path_buf(), dir, installed: false };
        let result = (|| -> io::Result<()> {
            // Written in 1 MiB batches: neither a copy of the whole list in memory
            // nor a write call per entry.
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
            let _ =
                writeln!(buf, "# rcptsync {kind} {VERSION} count={} fingerprint={}", header.count, header.fingerprint);
            for e in sorted {
                if buf.len() + e.len() + 1 > buf.capacity() {
                    f.write_all(&buf)?;
                    buf.clear();
                }
                buf.extend_from_slice(e.as_bytes());
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()
        })();
        result.map_err(|err| StateError::Io { path: path.to_path_buf(), err })?;
        Ok((header, pending))
    }
}

impl StateDir {
    /// Stages `path` as a second name for the complete file `from` (same bytes,
    /// no second write): used when a source's slice equals the whole list.
    pub fn stage_link(&self, from: &Path, path: &Path) -> Result<PendingFile, StateError> {
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
        // link(2) never follows a link at the new name: it fails if it exists.
        let tmp = dir.join(format!(".{name}.tmp.{}", crate::secure_fs::random_suffix()));
        fs::hard_link(from, &tmp).map_err(|err| StateError::Io { path: path.to_path_buf(), err })?;
        Ok(PendingFile { tmp, path: path.to_path_buf(), dir, installed: false })
    }
}

/// A complete state file waiting to be renamed into place; removed if dropped.
#[derive(Debug)]
pub struct PendingFile {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    installed: bool,
}

impl PendingFile {
    /// The complete temp file.
    pub fn staged(&self) -> &Path {
        &self.tmp
    }

    pub fn install(mut self) -> Result<(), StateError> {
        let r = fs::rename(&self.tmp, &self.path).and_then(|_| File::open(&self.dir)?.sync_all());
        self.installed = r.is_ok();
        r.map_err(|err| StateError::Io { path: self.path.clone(), err })
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.installed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn parse_header(path: &Path, line: &str) -> Result<ListHeader, StateError> {
    let corrupt = |why: String| StateError::Corrupt { path: path.to_path_buf(), why };
    let mut parts = line.split(' ');
    if parts.next() != Some("#") || parts.next() != Some("rcptsync") {
        return Err(corrupt("missing rcptsync header".into()));
    }
    let _kind = parts.next();
    match parts.next() {
        Some(VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!("format {v} is not supported by this version (expected {VERSION})")));
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
        (Some(count), Some(fingerprint)) if fingerprint.len() == 32 => Ok(ListHeader { count, fingerprint }),
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
        let h = s.write_list(&p, "applied-list", &["@x.org", "a@x.com", "b@x.com"]).unwrap();
        assert_eq!(s.read_header(&p).unwrap(), Some(h.clone()));
        let (h2, entries) = s.read_list(&p).unwrap().unwrap();
        assert_eq!(h2, h);
        assert_eq!(entries.iter().map(Entry::as_str).collect::<Vec<_>>(), ["@x.org", "a@x.com", "b@x.com"]);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn corruption_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path(), true).unwrap();
        let p = s.applied_path();
        s.write_list(&p, "applied-list", &["a@x.com", "b@x.com"]).unwrap();
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
            assert!(e.contains(want) && e.contains("applied.list"), "{want}: {e}");
        }
    }

    #[test]
    fn caches_are_private_and_temp_names_cannot_be_planted() {
        use std::os::unix::fs::{MetadataExt, symlink};
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path(), true).unwrap();
        // The names a run used to write through: `.NAME.tmp.PID`.
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let pid = std::process::id();
        for name in [".applied.list", ".last-run.json", ".x.ldap.json", ".tombstones.json"] {
            symlink(&victim, d.path().join(format!("{name}.tmp.{pid}"))).unwrap();
            symlink(&victim, d.path().join("sources").join(format!("{name}.tmp.{pid}"))).unwrap();
        }
        s.write_list(&s.applied_path(), "list", &["a@example.com"]).unwrap();
        let cache = s.cache("x", "ldap");
        cache.save(&vec!["a@example.com"], "LDAP");
        s.write_tombstones(&Tombstones::new());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(cache.load::<Vec<String>>().unwrap(), ["a@example.com"]);
        // Caches hold every address: owner only, like the rest of the state.
        for p in [cache.path().to_path_buf(), d.path().join("tombstones.json"), s.applied_path()] {
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600, "{}", p.display());
        }
        // Leftovers of a killed run go when the next run takes the lock.
        let _lock = s.lock(Duration::ZERO).unwrap();
        assert!(!d.path().join(format!(".applied.list.tmp.{pid}")).exists());
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path(), true).unwrap();
        let held = s.lock(Duration::ZERO).unwrap();
        let e = s.lock(Duration::from_millis(250)).unwrap_err().to_string();
        assert!(
            e.contains("another rcptsync run holds the lock") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        s.lock(Duration::ZERO).unwrap();
    }
}

/// What the last successful run consumed and produced. When a new run fetches
/// exactly the same raw data under the same configuration and every output on
/// disk still hashes to what was written, the run has nothing to do: it skips
/// validation, merging and rendering (the way `make` skips an up-to-date target),
/// which keeps unchanged runs cheap enough for short schedules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub version: u32,
    /// rcptsync version + configuration (including templates and profiles).
    pub config: String,
    pub sources: Vec<SourceRecord>,
    /// Entries in the published list, and its fingerprint (as in applied.list).
    pub recipients: usize,
    pub list: String,
    pub outputs: Vec<OutputRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceRecord {
    pub name: String,
    /// Fingerprint of the raw values the source returned.
    pub raw: String,
    pub entries: usize,
    pub refused: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputRecord {
    pub name: String,
    pub path: PathBuf,
    pub len: u64,
    /// xxh3-128 of the bytes written.
    pub hash: String,
}

pub const RUN_RECORD_VERSION: u32 = 1;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// xxh3-128 of a byte slice, as hex.
pub fn hash_bytes(b: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b))
}

/// A streamed xxh3-128 as hex, in the same form as [`hash_bytes`]: the run
/// record compares hashes made either way.
pub fn digest_hex(h: &xxhash_rust::xxh3::Xxh3) -> String {
    format!("{:032x}", h.digest128())
}

/// xxh3-128 of a file's contents, streamed.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, digest_hex(&h)))
}

impl StateDir {
    pub fn record_path(&self) -> PathBuf {
        self.root.join("last-run.json")
    }

    /// The last run's record; None when missing or unreadable (a full run follows).
    pub fn read_record(&self) -> Option<RunRecord> {
        let text = fs::read(self.record_path()).ok()?;
        let r: RunRecord = serde_json::from_slice(&text).ok()?;
        (r.version == RUN_RECORD_VERSION).then_some(r)
    }

    /// Writes the record atomically, unless it is already on disk unchanged.
    pub fn write_record(&self, r: &RunRecord) -> Result<(), StateError> {
        if self.read_record().as_ref() == Some(r) {
            return Ok(());
        }
        let path = self.record_path();
        let text = serde_json::to_vec_pretty(r)
            .map_err(|e| StateError::Io { path: path.clone(), err: io::Error::other(e) })?;
        crate::secure_fs::write_atomic(&path, &text, 0o600, true).map_err(|err| StateError::Io { path, err })
    }
}

/// A connector's incremental-sync cache (`state_dir/sources/NAME.KIND.json`).
/// Losing it only costs a full pass, so it is written by rename without fsync,
/// and an unreadable one reads as absent: after a crash a torn file fails to
/// parse, which means a full pass, never a wrong list.
#[derive(Debug, Clone)]
pub struct Cache {
    path: PathBuf,
}

impl Cache {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached value; None when missing or unreadable.
    pub fn load<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Saves the value by rename. A failure is logged, not fatal.
    pub fn save<T: serde::Serialize>(&self, value: &T, what: &str) {
        save_json(&self.path, value, what)
    }

    /// A file kept beside the cache (`NAME.KIND.json.WHAT`), e.g. the copy of
    /// the last bundle an edge accepted.
    fn beside(&self, what: &str) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(".");
        s.push(what);
        PathBuf::from(s)
    }

    /// The bytes kept beside the cache; None when missing or unreadable.
    pub fn load_bytes(&self, what: &str) -> Option<Vec<u8>> {
        fs::read(self.beside(what)).ok()
    }

    /// Keeps `bytes` beside the cache (private, by rename; not fsynced: a copy
    /// lost in a crash only costs a full download).
    pub fn save_bytes(&self, what: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.beside(what);
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        crate::secure_fs::write_atomic(&path, bytes, 0o600, false)
    }
}

/// Writes JSON state by rename, private to the service's user; a failure only
/// costs what the file saves (a full pass, a restarted grace), so it is logged.
fn save_json<T: serde::Serialize>(path: &Path, value: &T, what: &str) {
    let Some(dir) = path.parent() else { return };
    if let Err(e) = fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        tracing::warn!(file = %path.display(), error = %e, "cannot save {what} sync state");
        return;
    }
    let started = Instant::now();
    // Caches hold every address: private, like the rest of the state.
    let written = serde_json::to_vec(value)
        .map_err(io::Error::other)
        .and_then(|b| crate::secure_fs::write_atomic(path, &b, 0o600, false).map(|_| b.len()));
    match written {
        Ok(bytes) => {
            tracing::debug!(file = %path.display(), bytes, took_ms = started.elapsed().as_millis() as u64, "{what} sync state saved")
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot save {what} sync state");
        }
    }
}

/// Entry → unix time it was first missing from every source (removal grace).
pub type Tombstones = std::collections::BTreeMap<String, u64>;

impl StateDir {
    /// The state directory at `root`, without touching the disk.
    pub fn at(root: &Path) -> StateDir {
        StateDir { root: root.to_path_buf() }
    }

    /// The incremental-sync cache of source `name`, a connector of `kind`.
    pub fn cache(&self, name: &str, kind: &str) -> Cache {
        Cache { path: self.root.join("sources").join(format!("{name}.{kind}.json")) }
    }

    fn tombstones_path(&self) -> PathBuf {
        self.root.join("tombstones.json")
    }

    /// The removal-grace tombstones; none when missing. Unreadable ones restart
    /// every grace period from now: later, never earlier.
    pub fn read_tombstones(&self) -> Tombstones {
        match fs::read(self.tombstones_path()) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "removal-grace tombstones unreadable; grace periods restart now");
                Tombstones::new()
            }),
            Err(_) => Tombstones::new(),
        }
    }

    pub fn has_tombstones(&self) -> bool {
        self.tombstones_path().exists()
    }

    pub fn write_tombstones(&self, t: &Tombstones) {
        save_json(&self.tombstones_path(), t, "removal-grace")
    }

    fn stale_marker(&self) -> PathBuf {
        self.root.join("stale")
    }

    fn last_fresh_path(&self) -> PathBuf {
        self.root.join("last-fresh")
    }

    /// Whether `on_stale` ran and `on_fresh` has not yet.
    pub fn is_marked_stale(&self) -> bool {
        self.stale_marker().exists()
    }

    pub fn mark_stale(&self, now: u64) {
        let _ = crate::secure_fs::write_atomic(&self.stale_marker(), now.to_string().as_bytes(), 0o600, false);
    }

    pub fn clear_stale(&self) {
        let _ = fs::remove_file(self.stale_marker());
    }

    pub fn set_last_fresh(&self, now: u64) {
        let _ = crate::secure_fs::write_atomic(&self.last_fresh_path(), now.to_string().as_bytes(), 0o600, false);
    }

    /// When the last fresh run was (unix seconds): its marker, else the applied
    /// list's modification time; None before any run.
    pub fn last_fresh(&self) -> Option<u64> {
        let marker = fs::read_to_string(self.last_fresh_path()).ok().and_then(|t| t.trim().parse::<u64>().ok());
        marker.or_else(|| self.applied_mtime().map(|t| t as u64))
    }

    /// When the applied list was last written (unix seconds, fractional).
    pub fn applied_mtime(&self) -> Option<f64> {
        let m = fs::metadata(self.applied_path()).ok()?.modified().ok()?;
        m.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
    }
}

/// One applied list in the guard's shrink window: when, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub at: u64,
    pub count: usize,
}

/// Most applied lists remembered for the shrink window.
const HISTORY_MAX: usize = 4096;

impl StateDir {
    fn history_path(&self) -> PathBuf {
        self.root.join("history.json")
    }

    /// The sizes of the lists applied lately (for the guard's slow baseline);
    /// none when missing or unreadable.
    pub fn read_history(&self) -> Vec<Applied> {
        match fs::read(self.history_path()) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "guard history unreadable; the slow baseline starts again from this run");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Keeps the entries younger than `window` (at most the newest few thousand).
    pub fn write_history(&self, mut h: Vec<Applied>, window: Duration, now: u64) {
        h.retain(|a| now.saturating_sub(a.at) <= window.as_secs());
        if h.len() > HISTORY_MAX {
            h.drain(..h.len() - HISTORY_MAX);
        }
        save_json(&self.history_path(), &h, "guard history")
    }
}
