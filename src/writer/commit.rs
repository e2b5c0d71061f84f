//! Putting rendered bytes on disk so that a reader never sees a partial file.
//!
//! For each changed output: write a temp file in the target directory (so rename is
//! atomic), give it the final mode and owner, fsync it, build the `postmap` database
//! from the temp file, then move the database and then the text file into place by
//! rename and fsync the directory. The previous versions are kept as hard links
//! until the hooks have passed, so a failed `check` or `reload` puts them back
//! byte for byte. A crash at any instant leaves the old or the new complete file;
//! leftovers (`.NAME.rcptsync-*`) are removed by the next run.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::config::MapBuild;
use crate::writer::hook::{self, HookError};

/// Mode of a new output when the config sets none.
pub const DEFAULT_MODE: u32 = 0o644;

/// A failure while writing one output. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{path}: {what}: {err}")]
    Io { path: PathBuf, what: &'static str, err: io::Error },
    #[error("output directory {0} does not exist; create it or fix the output's path")]
    NoDir(PathBuf),
    #[error("{tool} failed for {path}: {err}")]
    Postmap { tool: &'static str, path: PathBuf, err: HookError },
    #[error("{0} did not create {1}")]
    NoMap(&'static str, PathBuf),
    #[error("{0}: internal error: the output was not staged before commit")]
    NotStaged(PathBuf),
}

fn io_at<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CommitError + 'a {
    move |err| CommitError::Io { path: path.to_path_buf(), what, err }
}

/// What is built beside an output from its complete temp file, and renamed into
/// place with it: a `postmap`/`makemap` database, or a bundle's signature.
#[derive(Debug, Clone)]
pub enum Companion {
    Map(MapBuild),
    /// `PATH.minisig`; the signer is set when the bundle is rendered.
    Signature(Option<Arc<Signer>>),
}

impl Companion {
    fn suffix(&self) -> &'static str {
        match self {
            Companion::Map(m) => m.suffix(),
            Companion::Signature(_) => crate::bundle::SIG_SUFFIX,
        }
    }
}

/// The key and trusted comment a bundle is signed with.
#[derive(Debug)]
pub struct Signer {
    pub key: crate::bundle::SigningKey,
    pub comment: String,
}

/// The files of one output: the text file and its companion, if any.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub companion: Option<Companion>,
    pub mode: Option<u32>,
    pub hook_timeout: Duration,
}

impl Target {
    fn dir(&self) -> &Path {
        self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
    }

    fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Path of the postmap database.
    pub fn map_path(&self) -> Option<PathBuf> {
        self.companion.as_ref().map(|c| with_suffix(&self.path, c.suffix()))
    }

    /// Whether the postmap database (if any) is at least as new as the text file
    /// described by `text`: a missing or older one (deleted, or a crash between
    /// the renames of an earlier run) must be rebuilt even if the text is current.
    pub fn map_is_fresh(&self, text: &fs::Metadata) -> bool {
        let Some(map) = self.map_path() else {
            return true;
        };
        fs::metadata(map).is_ok_and(|m| {
            m.mtime() > text.mtime() || (m.mtime() == text.mtime() && m.mtime_nsec() >= text.mtime_nsec())
        })
    }

    /// Removes temp files and backups left by a run that was killed.
    pub fn clean_leftovers(&self) {
        let prefix = format!(".{}.rcptsync-", self.file_name());
        let map_prefix =
            self.map_path().map(|m| format!(".{}.rcptsync-", m.file_name().unwrap_or_default().to_string_lossy()));
        let Ok(rd) = fs::read_dir(self.dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with(&prefix) || map_prefix.as_deref().is_some_and(|p| name.starts_with(p));
            if ours {
                tracing::info!(file = %e.path().display(), "removing leftover from an interrupted run");
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Writes `bytes` to a complete temp file (and database) next to the target.
    /// Syncs stream through [`crate::writer::sink::OutputSink`] instead; this
    /// one-shot form is for the tests of staging itself.
    #[cfg(test)]
    pub fn stage(&self, bytes: &[u8]) -> Result<Staged, CommitError> {
        let mut temp = self.create_temp()?;
        if let Err(err) = std::io::Write::write_all(&mut temp.file, bytes) {
            return Err(CommitError::Io { path: temp.path().to_path_buf(), what: "cannot write temp file", err });
        }
        temp.seal()
    }

    /// Opens a new, empty temp file beside the target (removing any left by a
    /// killed run). Dropped without [`TempFile::seal`], it is removed.
    pub fn create_temp(&self) -> Result<TempFile, CommitError> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Err(CommitError::NoDir(dir.to_path_buf()));
        }
        self.clean_leftovers();
        // New (O_EXCL), never through a link, under a name nobody can guess:
        // `.NAME.rcptsync-new.RANDOM`, which clean_leftovers knows.
        let (file, path) = crate::secure_fs::create_temp(dir, &self.file_name(), "rcptsync-new", 0o600)
            .map_err(io_at(dir, "cannot write temp file"))?;
        Ok(TempFile { target: self.clone(), path: Some(path), file })
    }
}

/// A temp file being written beside its target.
#[derive(Debug)]
pub struct TempFile {
    target: Target,
    /// `None` once sealed (the path then belongs to the [`Staged`]).
    path: Option<PathBuf>,
    pub file: File,
}

impl TempFile {
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Completes the temp file: the target's mode (the existing file's, else
    /// the configured one) and owner, fsync, then the `postmap` database.
    pub fn seal(mut self) -> Result<Staged, CommitError> {
        let tmp = self.path.take().unwrap_or_default();
        let target = self.target.clone();
        // From here on the Staged owns the file: dropping it on error removes it.
        let mut staged = Staged { target, tmp_text: tmp, tmp_map: None, done: false };
        let existing = fs::metadata(&staged.target.path).ok();
        let mode =
            existing.as_ref().map(|m| m.permissions().mode() & 0o7777).or(staged.target.mode).unwrap_or(DEFAULT_MODE);
        let sealed = (|| -> io::Result<()> {
            if let Some(m) = &existing {
                preserve_owner(&self.file, m)?;
            }
            self.file.set_permissions(fs::Permissions::from_mode(mode))?;
            self.file.sync_all()
        })();
        if let Err(err) = sealed {
            return Err(CommitError::Io { path: staged.tmp_text.clone(), what: "cannot write temp file", err });
        }
        if let Some(Companion::Signature(signer)) = &staged.target.companion {
            let sig_path = with_suffix(&staged.tmp_text, crate::bundle::SIG_SUFFIX);
            let signer = signer.clone().ok_or_else(|| CommitError::NotStaged(staged.target.path.clone()))?;
            let signed = File::open(&staged.tmp_text)
                .map_err(io_at(&staged.tmp_text, "cannot read temp file"))
                .and_then(|f| {
                    signer.key.sign(io::BufReader::new(f), &signer.comment).map_err(|e| CommitError::Io {
                        path: staged.target.path.clone(),
                        what: "cannot sign",
                        err: io::Error::other(e.to_string()),
                    })
                })?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&sig_path)
                .map_err(io_at(&sig_path, "cannot write temp file"))?;
            staged.tmp_map = Some(sig_path.clone());
            io::Write::write_all(&mut f, signed.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_at(&sig_path, "cannot write temp file"))?;
        }
        if let Some(Companion::Map(map)) = staged.target.companion {
            let (argv, stdin) = map.argv(&staged.tmp_text);
            let stdin = stdin.then_some(staged.tmp_text.as_path());
            hook::run_with_stdin(&argv, stdin, staged.target.hook_timeout).map_err(|err| CommitError::Postmap {
                tool: map.program(),
                path: staged.target.path.clone(),
                err,
            })?;
            let built = with_suffix(&staged.tmp_text, map.suffix());
            if !built.exists() {
                return Err(CommitError::NoMap(map.program(), built));
            }
            sync_file(&built).map_err(io_at(&built, "cannot fsync"))?;
            staged.tmp_map = Some(built);
        }
        Ok(staged)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = fs::remove_file(p);
        }
    }
}

/// Complete new files beside the target, not yet visible. Dropped without
/// [`Staged::install`], they are removed.
#[derive(Debug)]
pub struct Staged {
    target: Target,
    tmp_text: PathBuf,
    tmp_map: Option<PathBuf>,
    done: bool,
}

/// One file moved into place, with the previous version kept for rollback.
#[derive(Debug)]
struct Swap {
    path: PathBuf,
    backup: Option<PathBuf>,
}

/// New files in place, old ones kept until [`Installed::finish`] or
/// [`Installed::rollback`].
#[derive(Debug)]
pub struct Installed {
    target: Target,
    swaps: Vec<Swap>,
}

impl Staged {
    /// Moves the database, then the text file, into place. Readers of either see
    /// the old or the new complete version at every instant.
    pub fn install(mut self) -> Result<Installed, CommitError> {
        let mut swaps = Vec::new();
        let mut pairs = Vec::new();
        if let (Some(tmp_map), Some(map)) = (self.tmp_map.clone(), self.target.map_path()) {
            pairs.push((tmp_map, map));
        }
        pairs.push((self.tmp_text.clone(), self.target.path.clone()));
        for (tmp, dest) in pairs {
            match swap_in(&tmp, &dest) {
                Ok(s) => swaps.push(s),
                Err(e) => {
                    let partial = Installed { target: self.target.clone(), swaps };
                    let _ = partial.rollback();
                    return Err(e);
                }
            }
        }
        self.done = true;
        sync_dir(self.target.dir()).map_err(io_at(self.target.dir(), "cannot fsync directory"))?;
        Ok(Installed { target: self.target.clone(), swaps })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp_text);
            if let Some(m) = &self.tmp_map {
                let _ = fs::remove_file(m);
            }
        }
    }
}

impl Installed {
    /// Keeps the new files; removes the backups.
    pub fn finish(self) {
        for s in &self.swaps {
            if let Some(b) = &s.backup {
                let _ = fs::remove_file(b);
            }
        }
    }

    /// Puts the previous files back (or removes the new ones if there were none).
    pub fn rollback(self) -> Result<(), CommitError> {
        let mut first_err = None;
        // Text first, then the database: the reverse of install.
        for s in self.swaps.iter().rev() {
            let r = match &s.backup {
                Some(b) => fs::rename(b, &s.path).map_err(io_at(&s.path, "cannot restore previous version")),
                None => fs::remove_file(&s.path).map_err(io_at(&s.path, "cannot remove new file")),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        let _ = sync_dir(self.target.dir());
        first_err.map_or(Ok(()), Err)
    }
}

fn swap_in(tmp: &Path, dest: &Path) -> Result<Swap, CommitError> {
    let backup = if dest.exists() {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let b = dest.with_file_name(format!(".{name}.rcptsync-old"));
        let _ = fs::remove_file(&b);
        // A hard link keeps the old inode reachable without copying it.
        if fs::hard_link(dest, &b).is_err() {
            fs::copy(dest, &b).map_err(io_at(dest, "cannot keep a copy of the previous version"))?;
        }
        Some(b)
    } else {
        None
    };
    fs::rename(tmp, dest).map_err(io_at(dest, "cannot rename new version into place"))?;
    Ok(Swap { path: dest.to_path_buf(), backup })
}

fn preserve_owner(f: &File, old: &fs::Metadata) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let me = f.metadata()?;
    if me.uid() == old.uid() && me.gid() == old.gid() {
        return Ok(());
    }
    // SAFETY: fchown on a descriptor we own.
    let rc = unsafe { libc::fchown(f.as_raw_fd(), old.uid(), old.gid()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        tracing::warn!(uid = old.uid(), gid = old.gid(), error = %err, "cannot keep the output's owner; the new file is owned by rcptsync's user");
    }
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_file(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

fn sync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path) -> Target {
        Target { path: dir.join("out"), companion: None, mode: None, hook_timeout: Duration::from_secs(5) }
    }

    #[test]
    fn new_file_gets_default_or_configured_mode() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        t.stage(b"x\n").unwrap().install().unwrap().finish();
        assert_eq!(fs::read(&t.path).unwrap(), b"x\n");
        assert_eq!(fs::metadata(&t.path).unwrap().permissions().mode() & 0o777, 0o644);
        let t2 = Target { path: d.path().join("exim"), mode: Some(0o640), ..t.clone() };
        t2.stage(b"y\n").unwrap().install().unwrap().finish();
        assert_eq!(fs::metadata(&t2.path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2, "no temp files left");
    }

    #[test]
    fn existing_mode_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let t = Target { mode: Some(0o600), ..target(d.path()) };
        fs::write(&t.path, "old\n").unwrap();
        fs::set_permissions(&t.path, fs::Permissions::from_mode(0o604)).unwrap();
        t.stage(b"new\n").unwrap().install().unwrap().finish();
        assert_eq!(fs::metadata(&t.path).unwrap().permissions().mode() & 0o777, 0o604);
    }

    #[test]
    fn rollback_restores_old_bytes_and_inode() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        fs::write(&t.path, "old\n").unwrap();
        let ino = fs::metadata(&t.path).unwrap().ino();
        let inst = t.stage(b"new\n").unwrap().install().unwrap();
        assert_eq!(fs::read(&t.path).unwrap(), b"new\n");
        inst.rollback().unwrap();
        assert_eq!(fs::read(&t.path).unwrap(), b"old\n");
        assert_eq!(fs::metadata(&t.path).unwrap().ino(), ino);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn rollback_of_a_new_file_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        t.stage(b"new\n").unwrap().install().unwrap().rollback().unwrap();
        assert!(!t.path.exists());
    }

    #[test]
    fn dropped_stage_leaves_nothing_and_leftovers_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let t = target(d.path());
        drop(t.stage(b"new\n").unwrap());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        fs::write(d.path().join(".out.rcptsync-new"), "partial").unwrap();
        fs::write(d.path().join(".out.rcptsync-old"), "old").unwrap();
        fs::write(d.path().join(".other.rcptsync-new"), "not ours").unwrap();
        t.clean_leftovers();
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [".other.rcptsync-new"]);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let t = target(Path::new("/nonexistent/dir"));
        let e = t.stage(b"x").unwrap_err().to_string();
        assert_eq!(e, "output directory /nonexistent/dir does not exist; create it or fix the output's path");
    }
}
