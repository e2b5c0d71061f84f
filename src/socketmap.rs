//! `rcptsync socketmap`: a Postfix socketmap lookup server (netstring
//! protocol) that answers from one output's current list held in memory.
//!
//! Postfix cannot hash a lookup key, so a hashed list (`exim-sha256`) is served
//! through this: the server hashes each queried key with the output's salt.
//! Plain lists (`postfix`, `exim`, `plain`) work too. The file is re-read when
//! it changes (every sync replaces it atomically) and swapped in whole, so a
//! lookup sees the old or the new list, never a mix. While no list can be read,
//! every lookup answers TEMP, so Postfix tempfails instead of accepting.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{self, Config};
use crate::policy::digest::salted_sha256 as sha256_hex;
use crate::report::exit;

/// Largest request accepted (Postfix keys are short).
const MAX_REQUEST: usize = 64 << 10;

/// The list being served; None while it cannot be read.
#[derive(Default)]
struct Table {
    keys: Option<Arc<HashSet<String>>>,
    stamp: Option<(u64, i64, i64)>,
}

struct Served {
    path: PathBuf,
    hashed: bool,
    salt: String,
    /// `policy.recipient_delimiter`: `user+tag@domain` is found as
    /// `user@domain`, as Postfix's own maps do.
    delimiters: String,
    table: RwLock<Table>,
}

impl Served {
    /// Re-reads the file when its identity or mtime changed.
    fn refresh(&self) {
        use std::os::unix::fs::MetadataExt;
        let stamp = std::fs::metadata(&self.path).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec()));
        if stamp.is_some() && stamp == self.table.read().map(|t| t.stamp).unwrap_or(None) {
            return;
        }
        let loaded = std::fs::read_to_string(&self.path).map(|text| parse(&text, self.hashed));
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), entries = keys.len(), "socketmap list loaded");
                *t = Table { keys: Some(Arc::new(keys)), stamp };
            }
            Err(e) => {
                if t.keys.is_some() || t.stamp.is_none() {
                    tracing::error!(path = %self.path.display(), error = %e, "socketmap list unreadable; answering TEMP");
                }
                *t = Table { keys: None, stamp: Some((0, 0, 0)) };
            }
        }
    }

    /// The netstring reply to one request `name key`.
    fn answer(&self, request: &str) -> String {
        let Some((_, key)) = request.split_once(' ') else { return "PERM bad request".into() };
        let Some(keys) = self.table.read().ok().and_then(|t| t.keys.clone()) else {
            return "TEMP the recipient list is not available".into();
        };
        let key = key.to_lowercase();
        // A full address is also covered by its domain's catch-all ("@domain"):
        // Postfix does not always ask for the partial key on a socketmap table.
        let catchall = key.rfind('@').filter(|at| *at > 0).map(|at| key[at..].to_string());
        // And, with a recipient delimiter, by the address without its extension.
        let base = crate::policy::address::Entry::parse(&key)
            .ok()
            .and_then(|e| e.without_extension(&self.delimiters))
            .map(|e| e.as_str().to_string());
        let found = std::iter::once(key).chain(catchall).chain(base).any(|k| {
            let k = if self.hashed { sha256_hex(&self.salt, &k) } else { k };
            keys.contains(&k)
        });
        if found { "OK OK".into() } else { "NOTFOUND ".into() }
    }
}

/// Keys of a rendered list: the first field of each line, `*@d` as `@d`.
fn parse(text: &str, hashed: bool) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(|k| if hashed { k.to_string() } else { k.strip_prefix('*').unwrap_or(k).to_lowercase() })
        .collect()
}

/// Reads one netstring (`LEN:DATA,`); None at end of stream.
async fn read_netstring<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<String>, String> {
    let mut len = 0usize;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
            return if digits == 0 { Ok(None) } else { Err("truncated netstring".into()) };
        }
        match b[0] {
            b'0'..=b'9' if digits < 7 => {
                len = len * 10 + usize::from(b[0] - b'0');
                digits += 1;
            }
            b':' if digits > 0 => break,
            _ => return Err("malformed netstring".into()),
        }
    }
    if len > MAX_REQUEST {
        return Err("request too long".into());
    }
    let mut buf = vec![0u8; len + 1];
    r.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    if buf.pop() != Some(b',') {
        return Err("malformed netstring".into());
    }
    String::from_utf8(buf).map(Some).map_err(|_| "request is not UTF-8".into())
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, served: Arc<Served>) {
    loop {
        let reply = match read_netstring(&mut s).await {
            Ok(Some(req)) => served.answer(&req),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "socketmap: bad request; closing the connection");
                return;
            }
        };
        if s.write_all(format!("{}:{reply},", reply.len()).as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Serves every connection `accept` yields, each on its own task, until
/// SIGTERM or SIGINT (the same loop for unix and loopback sockets).
async fn serve_until_signal<S, F, Fut>(
    mut accept: F,
    served: Arc<Served>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    // Postfix keeps connections open and reconnects a closed one by itself:
    // at the cap, the idlest is closed, so a new lookup is always answered.
    let limiter = crate::limit::Limiter::new(crate::limit::MAX_CONNECTIONS, crate::limit::IDLE_TIMEOUT);
    loop {
        tokio::select! {
            c = accept() => match c {
                Ok(s) => { tokio::spawn(serve_conn(limiter.admit(s), served.clone())); }
                // Out of file descriptors, or a connection reset before it was
                // accepted: wait a moment rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

/// Runs the server until SIGTERM/SIGINT; returns the exit code.
pub async fn run(config_path: &Path, output: &str, listen: Option<&str>) -> u8 {
    let cfg: Config = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let Some(o) = cfg.outputs.iter().find(|o| o.name == output) else {
        let names: Vec<&str> = cfg.outputs.iter().map(|o| o.name.as_str()).collect();
        eprintln!("rcptsync socketmap: no output named {output:?}; outputs: {}", names.join(", "));
        return exit::USAGE;
    };
    let name = o.template_name();
    let hashed = name.ends_with("-sha256");
    let not_a_key_list = ["postfix-domains", "opensmtpd-domains", "sendmail-access", "sendmail-domains", "bundle"];
    if name.starts_with("json") || not_a_key_list.contains(&name) {
        eprintln!(
            "rcptsync socketmap: output {output:?} uses template {name}; serve a line-per-key list (postfix, exim, plain or exim-sha256)"
        );
        return exit::USAGE;
    }
    let salt = match (&o.hash_salt, hashed) {
        (Some(src), true) => match src.resolve("hash_salt") {
            Ok(s) => s.expose().to_string(),
            Err(e) => {
                eprintln!("rcptsync socketmap: output {output}: {e}");
                return exit::CONFIG;
            }
        },
        _ => String::new(),
    };
    let delimiters = cfg.policy.recipient_delimiter().to_string();
    let served =
        Arc::new(Served { path: o.path.clone(), hashed, salt, delimiters, table: RwLock::new(Table::default()) });
    served.refresh();
    let watcher = served.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            watcher.refresh();
        }
    });
    let (mut term, mut int) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return exit::FAILURE,
    };
    let listener = match (systemd_listener(), listen) {
        (Err(e), _) => {
            eprintln!("rcptsync socketmap: {e}");
            return exit::USAGE;
        }
        (Ok(Some(l)), _) => l,
        (Ok(None), Some(listen)) => match bind(listen).await {
            Ok(l) => l,
            Err((code, e)) => {
                eprintln!("rcptsync socketmap: {e}");
                return code;
            }
        },
        (Ok(None), None) => {
            eprintln!(
                "rcptsync socketmap: give --listen unix:/path or inet:127.0.0.1:PORT, or start it from a systemd \
                 socket unit (dist/systemd/rcptsync-socketmap.socket)"
            );
            return exit::USAGE;
        }
    };
    match listener {
        Listener::Unix(l, path) => {
            tracing::info!(listen = %l.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string())).unwrap_or_default(), output, hashed, "socketmap server ready");
            let l = &l;
            serve_until_signal(move || async move { l.accept().await.map(|(s, _)| s) }, served, &mut term, &mut int)
                .await;
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
        }
        Listener::Tcp(l) => {
            tracing::info!(listen = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), output, hashed, "socketmap server ready");
            let l = &l;
            serve_until_signal(move || async move { l.accept().await.map(|(s, _)| s) }, served, &mut term, &mut int)
                .await;
        }
    }
    exit::OK
}

/// Where lookups come in. A unix socket made here is removed on exit; one
/// systemd made is not ours to remove.
enum Listener {
    Unix(tokio::net::UnixListener, Option<PathBuf>),
    Tcp(tokio::net::TcpListener),
}

/// Binds `--listen`: `unix:/path`, or `inet:ADDR:PORT` on loopback only.
async fn bind(listen: &str) -> Result<Listener, (u8, String)> {
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        return tokio::net::UnixListener::bind(path)
            .map(|l| Listener::Unix(l, Some(PathBuf::from(path))))
            .map_err(|e| (exit::FAILURE, format!("cannot listen on {listen}: {e}")));
    }
    let addr = listen.strip_prefix("inet:").unwrap_or(listen);
    let Ok(sa) = addr.parse::<std::net::SocketAddr>() else {
        return Err((exit::USAGE, format!("--listen {listen:?}: use unix:/path or inet:127.0.0.1:PORT")));
    };
    if !sa.ip().is_loopback() {
        return Err((
            exit::USAGE,
            format!("--listen {listen:?} is not a loopback address; the list must not be served to the network"),
        ));
    }
    tokio::net::TcpListener::bind(sa)
        .await
        .map(Listener::Tcp)
        .map_err(|e| (exit::FAILURE, format!("cannot listen on {listen}: {e}")))
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FD: std::os::fd::RawFd = 3;

/// The listening socket systemd handed over (socket activation: `LISTEN_PID`
/// is this process and `LISTEN_FDS` is 1), or None without one. A socket that
/// is not a listening stream socket, or an inet socket off loopback, is refused.
fn systemd_listener() -> Result<Option<Listener>, String> {
    use std::os::fd::FromRawFd;
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else { return Ok(None) };
    if pid.trim() != std::process::id().to_string() {
        return Ok(None);
    }
    if fds.trim() != "1" {
        return Err(format!(
            "systemd passed {} sockets (LISTEN_FDS); the socket unit must have exactly one ListenStream=",
            fds.trim()
        ));
    }
    let family = listening_stream_family(LISTEN_FD)?;
    // SAFETY: systemd passed descriptor 3 to this process for this purpose;
    // it was checked to be a listening stream socket, and it is taken here
    // once, so nothing else owns or closes it.
    match family {
        libc::AF_UNIX => {
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTEN_FD) };
            l.set_nonblocking(true).map_err(|e| format!("socket from systemd: {e}"))?;
            let l = tokio::net::UnixListener::from_std(l).map_err(|e| format!("socket from systemd: {e}"))?;
            Ok(Some(Listener::Unix(l, None)))
        }
        libc::AF_INET | libc::AF_INET6 => {
            let l = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FD) };
            let addr = l.local_addr().map_err(|e| format!("socket from systemd: {e}"))?;
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "the socket from systemd listens on {addr}, not loopback; the list must not be served to the network"
                ));
            }
            l.set_nonblocking(true).map_err(|e| format!("socket from systemd: {e}"))?;
            let l = tokio::net::TcpListener::from_std(l).map_err(|e| format!("socket from systemd: {e}"))?;
            Ok(Some(Listener::Tcp(l)))
        }
        other => Err(format!("the socket from systemd has address family {other}; use a unix or inet ListenStream=")),
    }
}

/// The address family of `fd` if it is a listening stream socket.
fn listening_stream_family(fd: std::os::fd::RawFd) -> Result<libc::c_int, String> {
    let int_opt = |opt: libc::c_int| -> Result<libc::c_int, String> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes of a c_int; getsockopt
        // only reads the descriptor number.
        let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
        if r != 0 {
            return Err(format!("descriptor {fd} from systemd is not a socket: {}", std::io::Error::last_os_error()));
        }
        Ok(v)
    };
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM || int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(format!("descriptor {fd} from systemd is not a listening stream socket (use ListenStream=)"));
    }
    int_opt(libc::SO_DOMAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(text: &str, hashed: bool, salt: &str) -> (tempfile::TempDir, Served) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("list");
        std::fs::write(&p, text).unwrap();
        let s = Served {
            path: p,
            hashed,
            salt: salt.into(),
            delimiters: String::new(),
            table: RwLock::new(Table::default()),
        };
        s.refresh();
        (d, s)
    }

    #[test]
    fn a_recipient_delimiter_strips_the_extension_as_postfix_does() {
        let (_d, mut s) = served("alice@example.com OK\nowner-list@example.com OK\n", false, "");
        assert_eq!(s.answer("relay alice+news@example.com"), "NOTFOUND ", "no delimiter configured");
        s.delimiters = "+-".into();
        assert_eq!(s.answer("relay alice+news@example.com"), "OK OK");
        assert_eq!(s.answer("relay Alice-x+y@Example.com"), "OK OK");
        assert_eq!(s.answer("relay bob+news@example.com"), "NOTFOUND ");
        assert_eq!(s.answer("relay owner-list@example.com"), "OK OK");
        // Hashed lists hash the address without its extension.
        let line = sha256_hex("s4lt", "alice@example.com");
        let (_d, mut s) = served(&format!("{line}\n"), true, "s4lt");
        s.delimiters = "+".into();
        assert_eq!(s.answer("relay alice+tag@example.com"), "OK OK");
        assert_eq!(s.answer("relay alice+tag@other.example"), "NOTFOUND ");
    }

    #[test]
    fn plain_lists_answer_addresses_and_catchalls() {
        let (_d, s) = served("# header\nalice@example.com OK\n@other.example OK\n", false, "");
        assert_eq!(s.answer("relay Alice@Example.COM"), "OK OK");
        assert_eq!(s.answer("relay @other.example"), "OK OK");
        assert_eq!(s.answer("relay bob@example.com"), "NOTFOUND ");
        assert_eq!(s.answer("relay anyone@other.example"), "OK OK", "under the catch-all");
        assert_eq!(s.answer("garbage"), "PERM bad request");
        let (_d, s) = served("*@other.example\nalice@example.com\n", false, "");
        assert_eq!(s.answer("m @other.example"), "OK OK");
    }

    #[test]
    fn hashed_lists_hash_the_query_and_a_missing_list_is_temp() {
        let text =
            format!("# h\n{}\n{}\n", sha256_hex("salt", "alice@example.com"), sha256_hex("salt", "@other.example"));
        let (d, s) = served(&text, true, "salt");
        assert_eq!(s.answer("m ALICE@example.com"), "OK OK");
        assert_eq!(s.answer("m @other.example"), "OK OK");
        assert_eq!(s.answer("m X@Other.Example"), "OK OK");
        assert_eq!(s.answer("m bob@example.com"), "NOTFOUND ");
        std::fs::remove_file(d.path().join("list")).unwrap();
        s.refresh();
        assert_eq!(s.answer("m alice@example.com"), "TEMP the recipient list is not available");
    }

    #[tokio::test]
    async fn netstrings_are_parsed_strictly() {
        let mut ok: &[u8] = b"11:relay a@b.c,";
        assert_eq!(read_netstring(&mut ok).await.unwrap().as_deref(), Some("relay a@b.c"));
        for bad in [&b"3:abcd"[..], b"x:abc,", b"99999999:", b"3:abc;"] {
            let mut r = bad;
            assert!(read_netstring(&mut r).await.is_err(), "{bad:?}");
        }
        let mut empty: &[u8] = b"";
        assert_eq!(read_netstring(&mut empty).await.unwrap(), None);
    }
}
