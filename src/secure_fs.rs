//! Filesystem operations that stay safe when rcptsync runs as root (from cron,
//! Ansible or a first manual run) on a host where other users, and the
//! `rcptsync` daemon's own user, can write somewhere.
//!
//! The threats are the classic ones: a symbolic link planted where rcptsync
//! will create or truncate a file (`state_dir/lock -> /etc/shadow`), a temp
//! name guessed in advance, and a directory that someone else can write, where
//! any of those can be planted between two steps. The defences:
//! - every file rcptsync creates is new (`O_CREAT|O_EXCL`), never followed
//!   (`O_NOFOLLOW`), with a random suffix, and put in place by rename;
//! - the state directory and every output directory must be writable only by
//!   the effective user (or root), else the run is refused before it starts;
//! - an output path that is a symbolic link is followed only when the link and
//!   its directory belong to the effective user or root (the rule Linux's
//!   `fs.protected_symlinks` applies in sticky directories).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The name of user `uid` (or the number, when it has none).
pub fn user_name(uid: u32) -> String {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pw`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return uid.to_string();
    }
    // SAFETY: getpwuid_r filled pw_name with a NUL-terminated string inside `buf`.
    unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned()
}

/// Twelve random hex digits, for names nobody can guess in advance.
pub fn random_suffix() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 6];
    // The system RNG only fails when the kernel has none; fall back to time and pid.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b.copy_from_slice(&(t ^ u128::from(std::process::id())).to_le_bytes()[..6]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Creates a new file `dir/.NAME.TAG.RANDOM` that did not exist (never through
/// a link), private to the effective user (`mode`).
pub fn create_temp(dir: &Path, name: &str, tag: &str, mode: u32) -> io::Result<(File, PathBuf)> {
    loop {
        let path = dir.join(format!(".{name}.{tag}.{}", random_suffix()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            // A collision of 48 random bits: try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Replaces `path` with `bytes` by a new temp file and rename: a link at
/// `path` is replaced, never followed. With `durable`, the file and the
/// directory are fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let (mut f, tmp) = create_temp(dir, name, "tmp", mode)?;
    let written = (|| {
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Opens (creating if needed) a file that must not be a link, without
/// truncating it: the run lock.
pub fn open_nofollow(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other(format!("{} is a symbolic link; refusing to follow it", path.display()))
            } else {
                e
            }
        })
}

/// Whether a user other than `euid` (and root) could write in a directory with
/// this owner and mode.
fn writable_by_others(uid: u32, mode: u32, euid: u32) -> Option<String> {
    if uid != euid && uid != 0 && mode & 0o200 != 0 {
        return Some(format!("is owned by user {} (uid {uid})", user_name(uid)));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        let who = if mode & 0o002 != 0 { "everyone" } else { "its group" };
        return Some(format!("is writable by {who} (mode {:04o}) without the sticky bit", mode & 0o7777));
    }
    None
}

/// Why rcptsync must not write in `dir` as the effective user, if it must not:
/// another user could plant a link or swap a file between two of its steps.
pub fn unsafe_dir(dir: &Path) -> Option<String> {
    let meta = fs::metadata(dir).ok()?;
    let euid = euid();
    writable_by_others(meta.uid(), meta.mode(), euid).map(|why| {
        format!(
            "{} {why}, who could replace what rcptsync writes there while it runs as {} \
             (uid {euid}): make it writable only by {} (chown/chmod go-w), or run as its owner",
            dir.display(),
            user_name(euid),
            user_name(euid),
        )
    })
}

/// Where a symbolic link at `path` finally points (relative links taken from
/// the link's directory). Each link is followed only when it and the directory
/// it stands in belong to the effective user or root; else the error names the
/// link. A non-link is returned as it is.
pub fn resolve_link(path: &Path) -> Result<PathBuf, String> {
    let euid = euid();
    let trusted = |uid: u32| uid == euid || uid == 0;
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        let Ok(meta) = fs::symlink_metadata(&p) else { return Ok(p) };
        if !meta.file_type().is_symlink() {
            return Ok(p);
        }
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir_uid = fs::metadata(dir).map(|m| m.uid()).unwrap_or(u32::MAX);
        if !trusted(meta.uid()) || !trusted(dir_uid) {
            let (what, uid) = if trusted(meta.uid()) { ("its directory", dir_uid) } else { ("the link", meta.uid()) };
            return Err(format!(
                "{} is a symbolic link, and {what} belongs to user {} (uid {uid}): rcptsync running as {} \
                 follows a link only when the link and its directory belong to it or to root; point path at \
                 the real file, or fix the owner",
                p.display(),
                user_name(uid),
                user_name(euid)
            ));
        }
        let to = fs::read_link(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        p = if to.is_absolute() { to } else { dir.join(to) };
    }
    Err(format!("{}: more than 16 symbolic links", path.display()))
}

/// A file that holds a secret should be readable by its owner only: warns,
/// naming the file and the fix, when group or others can read it.
pub fn warn_if_readable_by_others(path: &Path, what: &str) {
    if let Ok(meta) = fs::metadata(path)
        && meta.mode() & 0o044 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = %format!("{:04o}", meta.mode() & 0o7777),
            "{what} is readable by group or others: chmod 0600 {}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_writers_are_named() {
        let me = 1000;
        assert_eq!(writable_by_others(me, 0o40755, me), None);
        assert_eq!(writable_by_others(0, 0o40755, me), None, "root's directories are trusted");
        assert!(writable_by_others(1001, 0o40755, me).unwrap().contains("uid 1001"));
        assert!(writable_by_others(me, 0o40775, me).unwrap().contains("its group"));
        assert!(writable_by_others(me, 0o40777, me).unwrap().contains("everyone"));
        assert_eq!(writable_by_others(0, 0o41777, me), None, "sticky /tmp");
        assert_eq!(writable_by_others(1001, 0o40555, me), None, "not writable by its owner");
    }

    #[test]
    fn temp_files_are_new_private_and_unguessable() {
        let d = tempfile::tempdir().unwrap();
        let (_, a) = create_temp(d.path(), "x", "tmp", 0o600).unwrap();
        let (_, b) = create_temp(d.path(), "x", "tmp", 0o600).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::metadata(&a).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn write_atomic_replaces_a_planted_link_instead_of_following_it() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let p = d.path().join("last-fresh");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic(&p, b"123", 0o600, false).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&p).unwrap(), "123");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_planted_lock_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let lock = d.path().join("lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let e = open_nofollow(&lock, 0o600).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    }
}
