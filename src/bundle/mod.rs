//! Signed bundles: one hub reads the directories and publishes the final list as
//! a file that many backup MXs (edges) fetch, check and publish locally.
//!
//! A bundle is a text file: a JSON header on the first line, then one entry per
//! line (catch-alls first, as `@domain`, then addresses; or, in a hashed bundle,
//! the lowercase hex SHA-256 of `hash_salt` + entry, each group sorted by
//! digest, exactly as the `exim-sha256` template writes them), followed by a
//! space and the indexes of the hub's sources that listed it (`0` or `0,2`,
//! into the header's `sources`). Its minisign signature is written beside it
//! (`PATH.minisig`), so `minisign -V` can check it; the signature's trusted
//! comment repeats the bundle's serial and publisher, and the header names the
//! signing key, so a signature and a bundle can only be paired as published.
//!
//! Reading one ([`verify`]) checks the signature before anything else is parsed.

pub mod key;

use serde::{Deserialize, Serialize};

use crate::policy::RecipientList;
use crate::policy::digest::{Digests, Slot, salt_check, sha256_hex};
use crate::policy::unique_sources;

pub use key::{KeyError, PublicKey, SigningKey};

/// The `format` field every bundle carries.
pub const FORMAT: &str = "rcptsync-bundle";
/// The header version this build writes and reads.
pub const VERSION: u32 = 1;
/// The signature beside a bundle: `PATH` + this.
pub const SIG_SUFFIX: &str = ".minisig";

/// The first line of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`]; a reader refuses any other.
    pub version: u32,
    /// Grows with every bundle a hub publishes (never repeats, never shrinks).
    pub serial: u64,
    /// When the hub wrote it (RFC 3339, UTC) and the same as Unix seconds.
    pub generated: String,
    pub generated_unix: i64,
    /// Who published it (the hub's `publisher`, by default its host name).
    pub publisher: String,
    /// The hub's sources (with its pseudo-sources `policy.include` and
    /// `removal-grace`): each entry line names the ones that listed it by
    /// index, for `why` on an edge.
    pub sources: Vec<String>,
    /// The signing key's id, as minisign prints it (16 hex digits).
    pub key_id: String,
    /// `"sha256"` when the entries are salted SHA-256 digests, else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// With `hash`: [`crate::policy::digest::salt_check`] of the salt, so an
    /// edge can tell that it holds the hub's salt (which its Exim ACL and
    /// socketmap hash queries with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt_check: Option<String>,
    /// Entry lines: `catchalls` catch-alls first, then `addresses` addresses.
    pub catchalls: u64,
    pub addresses: u64,
    /// Every domain with an entry, and those with a catch-all (in clear text:
    /// they are the MX's relay domains, public in DNS anyway).
    pub domains: Vec<String>,
    pub catchall_domains: Vec<String>,
    /// SHA-256 of the entry lines, so a hub can tell an unchanged list.
    pub entries_sha256: String,
}

impl Header {
    /// Everything that makes two bundles the same list from the same hub:
    /// all but serial and time.
    fn same_content(&self, other: &Header) -> bool {
        let strip = |h: &Header| Header { serial: 0, generated: String::new(), generated_unix: 0, ..h.clone() };
        strip(self) == strip(other)
    }

    /// One line for people (`bundle verify`, logs).
    pub fn summary(&self) -> String {
        format!(
            "serial {} from {} generated {} ({} addresses, {} catch-alls, {} domains{}, key {})",
            self.serial,
            self.publisher,
            self.generated,
            self.addresses,
            self.catchalls,
            self.domains.len(),
            if self.hash.is_some() { ", hashed" } else { "" },
            self.key_id
        )
    }
}

/// What the hub's output says about the bundle it writes.
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    pub publisher: &'a str,
    pub key_id: String,
    /// The salt for a hashed bundle (`hash_salt`), or `None` for clear text.
    pub salt: Option<&'a str>,
    /// An unchanged list is re-signed (new serial and time) once the bundle on
    /// disk is this old, so that edges can tell a live hub from a dead one.
    pub refresh_secs: i64,
    pub now_unix: i64,
}

/// A rendered bundle: its bytes and the trusted comment its signature must carry.
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub header: Header,
}

impl Rendered {
    pub fn trusted_comment(&self) -> String {
        trusted_comment(&self.header)
    }
}

fn trusted_comment(h: &Header) -> String {
    format!("{FORMAT} serial:{} publisher:{} timestamp:{}", h.serial, h.publisher, h.generated_unix)
}

/// Renders `list` as a bundle. `previous` is the bundle on disk (if any): when
/// it holds the same list from the same hub and key, and is younger than
/// `refresh_secs`, its exact bytes come back (nothing to write, an edge's
/// conditional GET stays a 304); otherwise the serial is the larger of the
/// previous one + 1 and the current time in milliseconds.
pub fn render(list: &RecipientList, p: &Publish<'_>, previous: Option<&[u8]>) -> Rendered {
    let mut entries = Vec::with_capacity(list.len() * 34);
    // One line per entry: the entry, a space, the indexes (into the header's
    // `sources`) of the hub's sources that listed it.
    let mut push = |entry: &str, sources: &[u16]| {
        entries.extend_from_slice(entry.as_bytes());
        for (k, s) in unique_sources(sources).enumerate() {
            entries.push(if k == 0 { b' ' } else { b',' });
            push_decimal(&mut entries, s);
        }
        entries.push(b'\n');
    };
    let (catchalls, addresses) = match p.salt {
        Some(salt) => {
            let d = Digests::of(list, salt);
            for (h, slot) in d.catchalls.iter().chain(&d.addresses) {
                let sources = match *slot {
                    Slot::Address(i) => list.address_sources(i),
                    Slot::CatchAll(i) => list.catchall_sources(i),
                };
                push(h, sources);
            }
            (d.catchalls.len(), d.addresses.len())
        }
        None => {
            list.catchalls().iter().enumerate().for_each(|(i, c)| push(c.as_str(), list.catchall_sources(i)));
            list.addresses().iter().enumerate().for_each(|(i, a)| push(a.as_str(), list.address_sources(i)));
            (list.catchalls().len(), list.addresses().len())
        }
    };
    let mut header = Header {
        format: FORMAT.into(),
        version: VERSION,
        serial: 0,
        generated: String::new(),
        generated_unix: 0,
        publisher: p.publisher.into(),
        // Every source of the list, with the policy's pseudo-sources (an
        // edge's why can say an address came from the hub's policy.include):
        // the entry lines name them by index.
        sources: list.source_names().to_vec(),
        key_id: p.key_id.clone(),
        hash: p.salt.map(|_| "sha256".to_string()),
        salt_check: p.salt.map(salt_check),
        catchalls: catchalls as u64,
        addresses: addresses as u64,
        domains: list.domains().to_vec(),
        catchall_domains: list.catchalls().iter().map(|c| c.domain().to_string()).collect(),
        entries_sha256: sha256_hex(&[&entries]),
    };
    let old = previous.and_then(|b| parse_header(b).ok());
    if let (Some(old), Some(bytes)) = (&old, previous)
        && old.same_content(&header)
        && p.now_unix.saturating_sub(old.generated_unix) < p.refresh_secs
        && p.now_unix >= old.generated_unix
    {
        return Rendered { bytes: bytes.to_vec(), header: old.clone() };
    }
    let now_ms = u64::try_from(p.now_unix).unwrap_or(0).saturating_mul(1000);
    header.serial = old.map_or(now_ms, |o| o.serial.saturating_add(1).max(now_ms));
    header.generated_unix = p.now_unix;
    header.generated = rfc3339(p.now_unix);
    // A header is plain data: serialising it cannot fail.
    let mut bytes = serde_json::to_vec(&header).unwrap_or_default();
    bytes.push(b'\n');
    bytes.extend_from_slice(&entries);
    Rendered { bytes, header }
}

/// Appends `n` in decimal (source indexes: almost always one digit).
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    if n >= 10 {
        push_decimal(out, n / 10);
    }
    out.push(b'0' + (n % 10) as u8);
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
fn rfc3339(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// Why a bundle was refused. Each names what to check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("bad signature: {0}")]
    Signature(String),
    #[error("signed by key {found}, not the configured key {want}")]
    WrongKey { found: String, want: String },
    #[error("not a bundle: {0}")]
    Malformed(String),
    #[error("format version {0} is unknown to this rcptsync (it reads version {VERSION}); upgrade the edges first")]
    UnknownVersion(u64),
    #[error(
        "the signature's trusted comment ({comment:?}) does not match the bundle (serial {serial}, publisher {publisher})"
    )]
    Mismatch { comment: String, serial: u64, publisher: String },
}

/// A bundle whose signature, header and entry count checked out.
#[derive(Debug)]
pub struct Verified<'a> {
    pub header: Header,
    /// The entry lines, newline-terminated: `header.catchalls` catch-alls
    /// first, then addresses. Valid UTF-8.
    pub body: &'a str,
}

impl<'a> Verified<'a> {
    /// The entries, without the hub sources each line names.
    pub fn entries(&self) -> Vec<&'a str> {
        self.body.lines().map(|l| split_line(l).0).collect()
    }
}

/// An entry line: the entry, and the indexes of the hub's sources (comma
/// separated; empty when the line names none).
pub fn split_line(line: &str) -> (&str, &str) {
    line.split_once(' ').unwrap_or((line, ""))
}

/// Checks `bytes` against its signature (the `.minisig` text) and `key`, then
/// parses it: the signature first, so nothing unsigned is ever parsed.
pub fn verify<'a>(bytes: &'a [u8], signature: &str, key: &PublicKey) -> Result<Verified<'a>, BundleError> {
    let comment = key.verify(bytes, signature)?;
    let header = parse_header(bytes)?;
    let want = trusted_comment(&header);
    if comment != want {
        return Err(BundleError::Mismatch { comment, serial: header.serial, publisher: header.publisher });
    }
    if header.key_id != key.id() {
        return Err(BundleError::Malformed(format!(
            "the header names key {} but key {} signed it",
            header.key_id,
            key.id()
        )));
    }
    // The signature covers header and entries alike, so the entries are what
    // the hub wrote; what is left to check is that the hub wrote a coherent
    // bundle (entries_sha256 is for the hub's own change detection). Each
    // entry is validated again by the source, like any source's values.
    let start = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1);
    let body = &bytes[start..];
    let text = std::str::from_utf8(body).map_err(|_| BundleError::Malformed("entries are not UTF-8".into()))?;
    let lines = memchr::memchr_iter(b'\n', body).count() as u64;
    let want_lines = header.catchalls.saturating_add(header.addresses);
    if lines != want_lines || (!text.is_empty() && !text.ends_with('\n')) {
        return Err(BundleError::Malformed(format!("{lines} entry lines, the header says {want_lines}")));
    }
    Ok(Verified { header, body: text })
}

/// The header of a bundle, checking format and version first (an unknown
/// version is refused before its fields are interpreted).
pub fn parse_header(bytes: &[u8]) -> Result<Header, BundleError> {
    let end = bytes.iter().position(|&b| b == b'\n').ok_or(BundleError::Malformed("no header line".into()))?;
    let line = &bytes[..end];
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| BundleError::Malformed(format!("header: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(BundleError::Malformed(format!("the header's format is not {FORMAT:?}")));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(BundleError::UnknownVersion(v)),
        None => return Err(BundleError::Malformed("the header has no version".into())),
    }
    serde_json::from_value(value).map_err(|e| BundleError::Malformed(format!("header: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Locator, Policy, RawItem, RawKind, normalise};

    fn list(vals: &[&str]) -> RecipientList {
        let items = vals
            .iter()
            .enumerate()
            .map(|(i, v)| RawItem { value: v.to_string(), kind: RawKind::of(v), locator: Locator::Line(i as u32 + 1) })
            .collect();
        let (ok, _) = normalise(items);
        Policy::default().apply(vec![("hub".into(), ok)]).0
    }

    fn publish<'a>(key: &SigningKey, salt: Option<&'a str>, now: i64) -> Publish<'a> {
        Publish { publisher: "hub1", key_id: key.id(), salt, refresh_secs: 3600, now_unix: now }
    }

    fn signed(key: &SigningKey, r: &Rendered) -> String {
        key.sign(&r.bytes[..], &r.trusted_comment()).unwrap()
    }

    #[test]
    fn a_signed_bundle_verifies_and_gives_back_the_list() {
        let key = SigningKey::generate().unwrap();
        let l = list(&["Alice@Example.com", "@example.org", "bob@example.com"]);
        let r = render(&l, &publish(&key, None, 1_800_000_000), None);
        let sig = signed(&key, &r);
        let v = verify(&r.bytes, &sig, &key.public()).unwrap();
        assert_eq!(v.entries(), ["@example.org", "alice@example.com", "bob@example.com"]);
        assert_eq!(v.header.catchalls, 1);
        assert_eq!(v.header.serial, 1_800_000_000_000);
        assert_eq!(v.header.generated, "2027-01-15T08:00:00Z");
        assert_eq!(v.header.domains, ["example.com", "example.org"]);
    }

    #[test]
    fn each_line_names_the_hub_sources_that_listed_it() {
        let key = SigningKey::generate().unwrap();
        let items = |vals: &[&str]| {
            let raw = vals
                .iter()
                .map(|v| RawItem { value: v.to_string(), kind: RawKind::of(v), locator: Locator::Line(1) })
                .collect();
            normalise(raw).0
        };
        let l = Policy::default()
            .apply(vec![
                ("ad".into(), items(&["alice@example.com", "@example.org"])),
                ("m365".into(), items(&["alice@example.com", "bob@example.com"])),
            ])
            .0;
        let r = render(&l, &publish(&key, None, 1_800_000_000), None);
        let v = verify(&r.bytes, &signed(&key, &r), &key.public()).unwrap();
        assert_eq!(v.header.sources, ["ad", "m365", "policy.include"]);
        assert_eq!(v.body, "@example.org 0\nalice@example.com 0,1\nbob@example.com 1\n");
        let r = render(&l, &publish(&key, Some("pepper"), 1_800_000_000), None);
        let v = verify(&r.bytes, &signed(&key, &r), &key.public()).unwrap();
        let alice = sha256_hex(&[b"pepper", b"alice@example.com"]);
        assert!(v.body.contains(&format!("{alice} 0,1\n")), "{}", v.body);
    }

    #[test]
    fn hashed_entries_are_the_exim_sha256_digests() {
        let key = SigningKey::generate().unwrap();
        let l = list(&["alice@example.com", "@example.org"]);
        let r = render(&l, &publish(&key, Some("pepper"), 1_800_000_000), None);
        let v = verify(&r.bytes, &signed(&key, &r), &key.public()).unwrap();
        assert_eq!(v.header.hash.as_deref(), Some("sha256"));
        assert_eq!(v.entries()[0], sha256_hex(&[b"pepper", b"@example.org"]));
        assert_eq!(v.entries()[1], sha256_hex(&[b"pepper", b"alice@example.com"]));
        assert_eq!(v.header.salt_check, Some(salt_check("pepper")));
        // The lines the exim-sha256 template writes.
        let d = Digests::of(&l, "pepper");
        assert_eq!(d.catchall_hexes().chain(d.address_hexes()).collect::<Vec<_>>(), v.entries());
        assert!(!String::from_utf8_lossy(&r.bytes).contains("alice"));
    }

    #[test]
    fn tampering_truncation_and_other_keys_are_refused() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let l = list(&["alice@example.com", "bob@example.com"]);
        let r = render(&l, &publish(&key, None, 1_800_000_000), None);
        let sig = signed(&key, &r);
        let mut tampered = r.bytes.clone();
        let at = tampered.len() - 3;
        tampered[at] = b'x';
        assert!(matches!(verify(&tampered, &sig, &key.public()), Err(BundleError::Signature(_))));
        let truncated = &r.bytes[..r.bytes.len() - 5];
        assert!(matches!(verify(truncated, &sig, &key.public()), Err(BundleError::Signature(_))));
        assert!(matches!(verify(&r.bytes, &sig, &other.public()), Err(BundleError::WrongKey { .. })));
        assert!(verify(&r.bytes, "untrusted comment: x\nnot base64\n", &key.public()).is_err());
        // A bundle signed by another key but naming ours in its header.
        let forged = signed(&other, &r);
        assert!(matches!(verify(&r.bytes, &forged, &key.public()), Err(BundleError::WrongKey { .. })));
    }

    #[test]
    fn a_signature_for_another_serial_or_a_new_version_is_refused() {
        let key = SigningKey::generate().unwrap();
        let l = list(&["alice@example.com"]);
        let r = render(&l, &publish(&key, None, 1_800_000_000), None);
        let wrong = key.sign(&r.bytes[..], "rcptsync-bundle serial:1 publisher:hub1 timestamp:0").unwrap();
        assert!(matches!(verify(&r.bytes, &wrong, &key.public()), Err(BundleError::Mismatch { .. })));
        let text = String::from_utf8(r.bytes.clone()).unwrap().replacen("\"version\":1", "\"version\":2", 1);
        let sig = key.sign(text.as_bytes(), &r.trusted_comment()).unwrap();
        assert_eq!(verify(text.as_bytes(), &sig, &key.public()).unwrap_err(), BundleError::UnknownVersion(2));
    }

    #[test]
    fn an_unchanged_list_keeps_its_bytes_until_refresh_and_serials_only_grow() {
        let key = SigningKey::generate().unwrap();
        let l = list(&["alice@example.com"]);
        let first = render(&l, &publish(&key, None, 1_800_000_000), None);
        let same = render(&l, &publish(&key, None, 1_800_000_100), Some(&first.bytes));
        assert_eq!(same.bytes, first.bytes, "unchanged within refresh: same bytes");
        let refreshed = render(&l, &publish(&key, None, 1_800_003_600), Some(&first.bytes));
        assert!(refreshed.header.serial > first.header.serial);
        let changed = render(&list(&["bob@example.com"]), &publish(&key, None, 1_800_000_100), Some(&first.bytes));
        assert!(changed.header.serial > first.header.serial);
        // A clock that went back still gives a larger serial.
        let back = render(&list(&["carol@example.com"]), &publish(&key, None, 1_700_000_000), Some(&changed.bytes));
        assert_eq!(back.header.serial, changed.header.serial + 1);
    }
}
