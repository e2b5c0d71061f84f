//! The address parser every recipient passes before anything else sees it.
//!
//! A backup MX's recipient map is only as safe as the strings written into it, and
//! those strings come from directories that anyone with a mailbox can partly
//! influence (display names, aliases, contact addresses). So the rule is strict:
//! an entry is either a syntactically plain address that is safe in *every* output
//! format (Postfix maps, Exim `lsearch`, JSON, user templates), or it is dropped.
//!
//! Decisions (documented in the README):
//! - The whole address is lowercased. Postfix table lookups, Exim `lsearch`,
//!   Exchange and Google all compare addresses case-insensitively, so `Alice@X`
//!   and `alice@x` are one recipient and the outputs contain the lowercase form.
//! - The domain is IDNA-encoded (A-labels, `xn--…`), must have at least two labels,
//!   and each label is letters, digits and inner hyphens. Address literals
//!   (`user@[192.0.2.1]`) are refused.
//! - The local part is a dot-atom (RFC 5322 `atext` separated by single dots) minus
//!   `#` and `*`: `#` starts a comment in Postfix and Exim files, and `*@domain` is a
//!   wildcard key for Exim's `lsearch*@`. Quoted local parts are refused: no real
//!   directory needs them and they cannot be written safely to every format.
//!   Non-ASCII letters and digits (SMTPUTF8 mailboxes) are accepted and lowercased.
//! - RFC 5321 limits: local part ≤ 64 octets, domain ≤ 253, whole address ≤ 254.
//! - A catch-all (`@domain`) is a separate, explicit kind of entry: it is produced only
//!   by [`parse_catchall`], which connectors call for entries their source defines as
//!   catch-alls. [`parse_address`] refuses `@domain`.

use std::fmt;

/// Maximum octets in a local part (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Maximum octets in a domain (RFC 1035, without the trailing dot).
pub const MAX_DOMAIN: usize = 253;
/// Maximum octets in an address (RFC 5321 path limit 256 minus the angle brackets).
pub const MAX_ADDRESS: usize = 254;
/// Maximum octets in a DNS label.
pub const MAX_LABEL: usize = 63;

/// One validated recipient: an address `local@domain`, or a catch-all `@domain`
/// (empty local part). Always lowercase, domain in A-label form.
#[derive(Clone)]
pub struct Entry {
    text: Box<str>,
    /// Byte offset of the '@' (0 for a catch-all).
    at: u16,
}

// Identity, order and hash are the text's; `at` follows from it.
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}
impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}

impl Entry {
    /// The canonical text: `local@domain`, or `@domain` for a catch-all.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn at(&self) -> usize {
        self.at as usize
    }

    /// True for a catch-all entry (`@domain`).
    pub fn is_catchall(&self) -> bool {
        self.text.starts_with('@')
    }

    /// The local part; empty for a catch-all.
    pub fn local_part(&self) -> &str {
        &self.text[..self.at()]
    }

    /// The domain (A-label form).
    pub fn domain(&self) -> &str {
        &self.text[self.at() + 1..]
    }

    /// The address without its extension, as Postfix's `recipient_delimiter`
    /// splits it: the local part up to the first of the `delimiters`
    /// characters. None when there is nothing to strip: no delimiter, one at
    /// the start (the user would be empty), a catch-all, or, with `-` among
    /// the delimiters, `owner-*` and `*-request` (Postfix never splits those).
    pub fn without_extension(&self, delimiters: &str) -> Option<Entry> {
        let local = self.local_part();
        if delimiters.is_empty() || self.is_catchall() {
            return None;
        }
        if delimiters.contains('-') && (local.starts_with("owner-") || local.ends_with("-request")) {
            return None;
        }
        let cut = local.find(|c| delimiters.contains(c))?;
        if cut == 0 {
            return None;
        }
        let text = format!("{}@{}", &local[..cut], self.domain());
        Some(Entry { text: text.into_boxed_str(), at: cut as u16 })
    }

    /// Parses what an operator or a directory wrote: an address, or `@domain`
    /// for a catch-all; the result is canonical (lowercase, IDNA domain). The
    /// one place that tells the two apart by the leading `@`.
    pub fn parse(s: &str) -> Result<Entry, AddressError> {
        match s.strip_prefix('@') {
            Some(domain) => parse_catchall(domain),
            None => parse_address(s),
        }
    }

    /// The entry that carries a salted SHA-256 digest from a hashed bundle: the
    /// 64 lowercase hex digits as the local part, in [`DIGEST_DOMAIN`] (or
    /// [`CATCHALL_DIGEST_DOMAIN`] for a catch-all's digest). None when `hex` is
    /// not such a digest.
    pub fn digest(hex: &str, catchall: bool) -> Option<Entry> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let domain = if catchall { CATCHALL_DIGEST_DOMAIN } else { DIGEST_DOMAIN };
        Some(Entry { text: format!("{hex}@{domain}").into_boxed_str(), at: 64 })
    }

    /// For a digest entry, the digest and whether it is a catch-all's.
    pub fn as_digest(&self) -> Option<(&str, bool)> {
        split_digest(&self.text)
    }

    /// Re-validates a string that is expected to be canonical already (state files,
    /// which are ours but live on disk and may have been edited or corrupted).
    /// Digest entries are canonical too.
    pub fn parse_canonical(s: &str) -> Result<Entry, AddressError> {
        if let Some((hex, catchall)) = split_digest(s)
            && let Some(e) = Entry::digest(hex, catchall)
        {
            return Ok(e);
        }
        let e = Entry::parse(s)?;
        if e.as_str() != s {
            return Err(AddressError::NotCanonical);
        }
        Ok(e)
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a value is not a usable recipient. The messages are shown to operators next
/// to the source and object name, so they say what is wrong in plain words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("is empty")]
    Empty,
    #[error("contains whitespace")]
    Whitespace,
    #[error("contains a control character")]
    Control,
    #[error("has no '@'")]
    NoAt,
    #[error("has more than one '@'")]
    MultipleAt,
    #[error("has an empty local part (a catch-all must be declared explicitly by its source)")]
    EmptyLocalPart,
    #[error("local part is longer than {MAX_LOCAL_PART} octets")]
    LocalPartTooLong,
    #[error("local part has a leading, trailing or doubled dot")]
    BadDot,
    #[error("local part contains {0:?}, which is not allowed in a recipient map")]
    BadLocalChar(char),
    #[error("quoted local parts are not supported")]
    Quoted,
    #[error("domain is empty")]
    EmptyDomain,
    #[error("address literals ([...]) are not supported")]
    DomainLiteral,
    #[error("domain is not a valid internationalised domain name")]
    Idna,
    #[error("domain is longer than {MAX_DOMAIN} octets")]
    DomainTooLong,
    #[error("domain label is empty or longer than {MAX_LABEL} octets")]
    BadLabel,
    #[error("domain contains {0:?}, which is not allowed in a host name")]
    BadDomainChar(char),
    #[error("domain label starts or ends with '-'")]
    BadHyphen,
    #[error("domain needs at least two labels (e.g. example.com)")]
    SingleLabel,
    #[error("domain looks like an IP address")]
    NumericDomain,
    #[error("address is longer than {MAX_ADDRESS} octets")]
    TooLong,
    #[error("is not in canonical form")]
    NotCanonical,
    #[error(
        "is in {RESERVED_DOMAIN}, which rcptsync reserves for the digests of a hashed bundle (.invalid never delivers mail, RFC 2606)"
    )]
    Reserved,
}

/// The domain under which a hashed bundle's digests travel through a sync as
/// entries (see [`Entry::digest`]). `.invalid` can never be a real mail domain
/// (RFC 2606), and no source may produce an address in it, so a digest entry
/// can only come from a hashed bundle.
pub const RESERVED_DOMAIN: &str = "rcptsync.invalid";
/// The domain of an address's digest, and of a catch-all's digest.
pub const DIGEST_DOMAIN: &str = "sha256.rcptsync.invalid";
pub const CATCHALL_DIGEST_DOMAIN: &str = "catchall.sha256.rcptsync.invalid";

/// For the text of a digest entry, the digest and whether it is a catch-all's.
/// Only [`Entry::digest`] makes such entries; the parsers refuse the domain.
pub fn split_digest(text: &str) -> Option<(&str, bool)> {
    let (hex, domain) = (text.get(..64)?, text.get(64..)?.strip_prefix('@')?);
    match domain {
        DIGEST_DOMAIN => Some((hex, false)),
        CATCHALL_DIGEST_DOMAIN => Some((hex, true)),
        _ => None,
    }
}

/// Whether `domain` (any case) is [`RESERVED_DOMAIN`] or under it.
fn is_reserved(domain: &[u8]) -> bool {
    let r = RESERVED_DOMAIN.as_bytes();
    domain.len() >= r.len()
        && domain[domain.len() - r.len()..].eq_ignore_ascii_case(r)
        && (domain.len() == r.len() || domain[domain.len() - r.len() - 1] == b'.')
}

/// Bytes allowed in a local part on the fast path (ASCII atext minus `#` and `*`,
/// plus the dot).
const fn local_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'.' | b'!'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'+'
                    | b'-'
                    | b'/'
                    | b'='
                    | b'?'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'{'
                    | b'|'
                    | b'}'
                    | b'~'
            );
        b += 1;
    }
    t
}
static LOCAL_OK: [bool; 256] = local_table();

/// The common case in one pass and without allocating: a plain ASCII address with
/// an ASCII, non-punycode domain. Returns None whenever anything is unusual; the
/// full parser then decides (and produces the error message). A property test
/// checks that both agree.
fn fast_path(raw: &[u8]) -> Option<usize> {
    if raw.len() > MAX_ADDRESS {
        return None;
    }
    let at = memchr_rev(b'@', raw)?;
    let (local, domain) = (&raw[..at], &raw[at + 1..]);
    if local.is_empty() || local.len() > MAX_LOCAL_PART || local[0] == b'.' || local[local.len() - 1] == b'.' {
        return None;
    }
    let mut prev = 0u8;
    for &b in local {
        if !LOCAL_OK[b as usize] || (b == b'.' && prev == b'.') {
            return None;
        }
        prev = b;
    }
    if domain.is_empty() || domain.len() > MAX_DOMAIN || is_reserved(domain) {
        return None;
    }
    let mut labels = 0;
    let mut last_numeric = true;
    for label in domain.split(|&b| b == b'.') {
        labels += 1;
        if label.is_empty() || label.len() > MAX_LABEL || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return None;
        }
        if label.len() >= 4 && label[..4].eq_ignore_ascii_case(b"xn--") {
            return None;
        }
        last_numeric = true;
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-') {
                return None;
            }
            last_numeric &= b.is_ascii_digit();
        }
    }
    (labels >= 2 && !last_numeric).then_some(at)
}

fn memchr_rev(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().rposition(|&b| b == needle)
}

/// Like [`parse_address`], but takes the string by value and reuses its buffer
/// when the address is already plain ASCII (the common case in bulk fetches).
/// On failure the string is handed back with the error.
pub fn parse_address_owned(mut raw: String) -> Result<Entry, (String, AddressError)> {
    if let Some(at) = fast_path(raw.as_bytes()) {
        raw.make_ascii_lowercase();
        return Ok(Entry { text: raw.into_boxed_str(), at: at as u16 });
    }
    parse_slow(&raw).map_err(|e| (raw, e))
}

/// Parses a recipient address (`local@domain`) into its canonical form.
pub fn parse_address(raw: &str) -> Result<Entry, AddressError> {
    if let Some(at) = fast_path(raw.as_bytes()) {
        return Ok(Entry { text: raw.to_ascii_lowercase().into_boxed_str(), at: at as u16 });
    }
    parse_slow(raw)
}

/// The full parser: every rule, IDNA, and a precise error.
fn parse_slow(raw: &str) -> Result<Entry, AddressError> {
    check_chars(raw)?;
    let at = raw.rfind('@').ok_or(AddressError::NoAt)?;
    let (local, domain) = (&raw[..at], &raw[at + 1..]);
    if local.starts_with('"') {
        return Err(AddressError::Quoted);
    }
    if local.contains('@') {
        return Err(AddressError::MultipleAt);
    }
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    let local = normalise_local(local)?;
    let domain = normalise_domain(domain)?;
    build(&local, &domain)
}

/// Parses the domain of an explicit catch-all. Accepts `domain` or `@domain`.
pub fn parse_catchall(raw: &str) -> Result<Entry, AddressError> {
    check_chars(raw)?;
    let domain = raw.strip_prefix('@').unwrap_or(raw);
    if domain.contains('@') {
        return Err(AddressError::MultipleAt);
    }
    let domain = normalise_domain(domain)?;
    build("", &domain)
}

/// Validates and normalises a bare domain (for `policy.domains` and the like).
pub fn parse_domain(raw: &str) -> Result<String, AddressError> {
    check_chars(raw)?;
    normalise_domain(raw)
}

fn build(local: &str, domain: &str) -> Result<Entry, AddressError> {
    if is_reserved(domain.as_bytes()) {
        return Err(AddressError::Reserved);
    }
    let len = local.len() + 1 + domain.len();
    if len > MAX_ADDRESS {
        return Err(AddressError::TooLong);
    }
    let mut text = String::with_capacity(len);
    text.push_str(local);
    text.push('@');
    text.push_str(domain);
    Ok(Entry { text: text.into_boxed_str(), at: local.len() as u16 })
}

fn check_chars(raw: &str) -> Result<(), AddressError> {
    if raw.is_empty() {
        return Err(AddressError::Empty);
    }
    for c in raw.chars() {
        if c.is_whitespace() {
            return Err(AddressError::Whitespace);
        }
        if c.is_control() {
            return Err(AddressError::Control);
        }
    }
    Ok(())
}

fn normalise_local(local: &str) -> Result<String, AddressError> {
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::BadDot);
    }
    let mut out = String::with_capacity(local.len());
    for c in local.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() || c == '.' || "!$%&'+-/=?^_`{|}~".contains(c) {
                out.push(c.to_ascii_lowercase());
            } else {
                return Err(AddressError::BadLocalChar(c));
            }
        } else if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else {
            return Err(AddressError::BadLocalChar(c));
        }
    }
    // Lowercasing some non-ASCII letters changes their length.
    if out.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    Ok(out)
}

fn normalise_domain(domain: &str) -> Result<String, AddressError> {
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    if domain.starts_with('[') {
        return Err(AddressError::DomainLiteral);
    }
    let lower = domain.to_ascii_lowercase();
    // Any case of "xn--" (the fuzzer found "Xn--" slipping past) goes through IDNA.
    let ascii = if domain.is_ascii() && !lower.contains("xn--") {
        lower
    } else {
        // UTS #46 processing (mapping, NFC, punycode), then the same LDH rules.
        let mapped = idna::domain_to_ascii_strict(domain).map_err(|_| AddressError::Idna)?;
        // Round-trip so that a bogus "xn--" label is refused rather than passed on.
        let (_, res) = idna::domain_to_unicode(&mapped);
        res.map_err(|_| AddressError::Idna)?;
        mapped
    };
    if ascii.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    let mut labels = 0;
    let mut last_numeric = false;
    for label in ascii.split('.') {
        labels += 1;
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err(AddressError::BadLabel);
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(AddressError::BadDomainChar(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::BadHyphen);
        }
        last_numeric = label.bytes().all(|b| b.is_ascii_digit());
    }
    if labels < 2 {
        return Err(AddressError::SingleLabel);
    }
    if last_numeric {
        return Err(AddressError::NumericDomain);
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_stripped_as_postfix_does() {
        let strip = |a: &str, d: &str| Entry::parse(a).unwrap().without_extension(d).map(|e| e.as_str().to_string());
        assert_eq!(strip("user+tag@example.com", "+").as_deref(), Some("user@example.com"));
        assert_eq!(strip("user+a+b@example.com", "+").as_deref(), Some("user@example.com"));
        assert_eq!(strip("user-tag+x@example.com", "+-").as_deref(), Some("user@example.com"), "first of any");
        assert_eq!(strip("user@example.com", "+"), None);
        assert_eq!(strip("+tag@example.com", "+"), None, "an empty user is never made");
        assert_eq!(strip("user+tag@example.com", ""), None);
        assert_eq!(strip("@example.com", "+"), None);
        assert_eq!(strip("owner-list@example.com", "-"), None, "Postfix keeps owner-*");
        assert_eq!(strip("list-request@example.com", "-"), None, "and *-request");
        assert_eq!(strip("list-request+x@example.com", "+"), Some("list-request@example.com".into()));
        let e = Entry::parse("user+tag@example.com").unwrap().without_extension("+").unwrap();
        assert_eq!((e.local_part(), e.domain()), ("user", "example.com"));
    }

    #[test]
    fn the_reserved_domain_is_refused_and_digests_round_trip() {
        for raw in ["x@rcptsync.invalid", "x@Sha256.RCPTSYNC.invalid", "@rcptsync.invalid"] {
            assert_eq!(Entry::parse(raw).unwrap_err(), AddressError::Reserved, "{raw}");
        }
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(err(&format!("{hex}@{DIGEST_DOMAIN}")), AddressError::Reserved, "no source can forge a digest");
        assert_eq!(ok("x@notrcptsync.invalid"), "x@notrcptsync.invalid", "only the reserved domain and below");
        let d = Entry::digest(hex, false).unwrap();
        assert_eq!(d.as_digest(), Some((hex, false)));
        assert_eq!(Entry::digest(hex, true).unwrap().as_digest(), Some((hex, true)));
        assert_eq!(Entry::parse_canonical(d.as_str()).unwrap(), d, "state files keep digests");
        assert!(Entry::digest(&hex.to_uppercase(), false).is_none());
        assert!(Entry::digest(&hex[1..], false).is_none());
        assert!(Entry::parse_canonical(&format!("{hex}@other.rcptsync.invalid")).is_err());
        assert_eq!(Entry::parse("alice@example.com").unwrap().as_digest(), None);
    }

    fn ok(s: &str) -> String {
        match parse_address(s) {
            Ok(e) => e.to_string(),
            Err(err) => panic!("{s:?} was refused: {err}"),
        }
    }

    fn err(s: &str) -> AddressError {
        match parse_address(s) {
            Ok(e) => panic!("{s:?} was accepted as {e}"),
            Err(err) => err,
        }
    }

    #[test]
    fn lowercases_whole_address() {
        assert_eq!(ok("Alice.Smith@Example.COM"), "alice.smith@example.com");
        let e = parse_address("Bob+Tag@Sub.Example.org").unwrap();
        assert_eq!(e.local_part(), "bob+tag");
        assert_eq!(e.domain(), "sub.example.org");
        assert!(!e.is_catchall());
    }

    #[test]
    fn refuses_whitespace_and_control_anywhere() {
        assert_eq!(err("a b@example.com"), AddressError::Whitespace);
        assert_eq!(err("ab@exam\tple.com"), AddressError::Whitespace);
        assert_eq!(err("ab@example.com\n@evil.com"), AddressError::Whitespace);
        assert_eq!(err("ab@example.com\r"), AddressError::Whitespace);
        assert_eq!(err("a\0b@example.com"), AddressError::Control);
        assert_eq!(err("a\u{7f}b@example.com"), AddressError::Control);
        assert_eq!(err("a\u{2028}b@example.com"), AddressError::Whitespace);
        assert_eq!(err("ab@example.com\u{a0}"), AddressError::Whitespace);
    }

    #[test]
    fn refuses_map_syntax() {
        // A value crafted to look like a second map entry or an Exim wildcard.
        assert_eq!(err("evil@example.com OK"), AddressError::Whitespace);
        assert_eq!(err("*@example.com"), AddressError::BadLocalChar('*'));
        assert_eq!(err("#x@example.com"), AddressError::BadLocalChar('#'));
        assert_eq!(err("a:b@example.com"), AddressError::BadLocalChar(':'));
        assert_eq!(err("a,b@example.com"), AddressError::BadLocalChar(','));
        assert_eq!(err("a;b@example.com"), AddressError::BadLocalChar(';'));
        assert_eq!(err("a<b@example.com"), AddressError::BadLocalChar('<'));
        assert_eq!(err("a\\b@example.com"), AddressError::BadLocalChar('\\'));
        assert_eq!(err("@example.com"), AddressError::EmptyLocalPart);
        assert_eq!(err("smtp:@example.com"), AddressError::BadLocalChar(':'));
        // `{` and `}` are atext and harmless in maps; templates never evaluate data.
        assert_eq!(ok("{{X}}@example.com"), "{{x}}@example.com");
    }

    #[test]
    fn at_signs() {
        assert_eq!(err("a@b@example.com"), AddressError::MultipleAt);
        assert_eq!(err("example.com"), AddressError::NoAt);
        assert_eq!(err("a@"), AddressError::EmptyDomain);
        assert_eq!(err(""), AddressError::Empty);
    }

    #[test]
    fn length_limits() {
        let l64 = "a".repeat(64);
        assert_eq!(ok(&format!("{l64}@example.com")), format!("{l64}@example.com"));
        assert_eq!(err(&format!("{}@example.com", "a".repeat(65))), AddressError::LocalPartTooLong);
        let label = "b".repeat(63);
        let d253 = format!("{label}.{label}.{label}.{}", "c".repeat(61));
        assert_eq!(d253.len(), 253);
        assert_eq!(parse_domain(&d253).unwrap(), d253);
        assert_eq!(err(&format!("x@{d253}")), AddressError::TooLong);
        let d255 = format!("{d253}.d");
        assert_eq!(err(&format!("x@{d255}")), AddressError::DomainTooLong);
        assert_eq!(err(&format!("x@{}.com", "e".repeat(64))), AddressError::BadLabel);
    }

    #[test]
    fn dots() {
        assert_eq!(err(".a@example.com"), AddressError::BadDot);
        assert_eq!(err("a.@example.com"), AddressError::BadDot);
        assert_eq!(err("a..b@example.com"), AddressError::BadDot);
        assert_eq!(err("a@.example.com"), AddressError::BadLabel);
        assert_eq!(err("a@example.com."), AddressError::BadLabel);
        assert_eq!(err("a@example..com"), AddressError::BadLabel);
        assert_eq!(ok("a.b.c@example.com"), "a.b.c@example.com");
    }

    #[test]
    fn domains() {
        assert_eq!(err("a@localhost"), AddressError::SingleLabel);
        assert_eq!(err("a@[192.0.2.1]"), AddressError::DomainLiteral);
        assert_eq!(err("a@192.0.2.1"), AddressError::NumericDomain);
        assert_eq!(err("a@-x.example.com"), AddressError::BadHyphen);
        assert_eq!(err("a@ex_ample.com"), AddressError::BadDomainChar('_'));
        assert_eq!(ok("a@123.example.com"), "a@123.example.com");
    }

    #[test]
    fn idn_domains_become_a_labels() {
        assert_eq!(ok("info@Bücher.example"), "info@xn--bcher-kva.example");
        assert_eq!(ok("info@xn--bcher-kva.example"), "info@xn--bcher-kva.example");
        assert_eq!(ok("info@XN--BCHER-KVA.example"), "info@xn--bcher-kva.example");
        assert_eq!(err("info@xn--zz-.example"), AddressError::Idna);
        // Found by the fuzzer: a mixed-case ACE prefix must be checked too.
        assert_eq!(err("user+tag@Xn--mnch.example.org"), AddressError::Idna);
        assert_eq!(ok("info@Xn--Bcher-Kva.example"), "info@xn--bcher-kva.example");
        assert_eq!(err("info@bü cher.example"), AddressError::Whitespace);
    }

    #[test]
    fn utf8_local_parts_are_lowercased() {
        assert_eq!(ok("JÖRG@example.com"), "jörg@example.com");
        assert_eq!(err("a\u{200b}b@example.com"), AddressError::BadLocalChar('\u{200b}'));
    }

    #[test]
    fn quoted_forms_are_refused() {
        assert_eq!(err("\"john doe\"@example.com"), AddressError::Whitespace);
        assert_eq!(err("\"john\"@example.com"), AddressError::Quoted);
        assert_eq!(err("\"a@b\"@example.com"), AddressError::Quoted);
    }

    #[test]
    fn catchalls_are_explicit() {
        let c = parse_catchall("@Example.COM").unwrap();
        assert!(c.is_catchall());
        assert_eq!(c.as_str(), "@example.com");
        assert_eq!(c.domain(), "example.com");
        assert_eq!(c.local_part(), "");
        assert_eq!(parse_catchall("example.com").unwrap(), c);
        assert!(parse_catchall("a@example.com").is_err());
        assert!(parse_catchall("@").is_err());
    }

    #[test]
    fn canonical_round_trip() {
        let e = parse_address("Al@Example.com").unwrap();
        assert_eq!(Entry::parse_canonical(e.as_str()).unwrap(), e);
        assert_eq!(Entry::parse_canonical("Al@example.com"), Err(AddressError::NotCanonical));
        assert!(Entry::parse_canonical("@example.com").unwrap().is_catchall());
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Whatever the input, an accepted entry is one map key: no whitespace,
            /// no control character, no comment or wildcard syntax, one '@'.
            #[test]
            fn accepted_entries_are_single_map_keys(
                s in "[ -~\\t\\n\\r\\x00\\u{85}\\u{a0}\\u{2028}äÖ#*@:.]{0,80}"
            ) {
                for e in [parse_address(&s), parse_catchall(&s)].into_iter().flatten() {
                    {
                        let line = format!("{} OK", e.as_str());
                        prop_assert_eq!(line.split_whitespace().count(), 2);
                        prop_assert!(!e.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
                        prop_assert!(!e.as_str().contains('#') && !e.as_str().contains('*'));
                        prop_assert_eq!(e.as_str().matches('@').count(), 1);
                        prop_assert!(!e.as_str().starts_with(':'));
                        prop_assert_eq!(e.as_str().to_lowercase(), e.as_str());
                        prop_assert!(e.as_str().len() <= MAX_ADDRESS);
                        // Parsing is idempotent.
                        let again = Entry::parse_canonical(e.as_str());
                        prop_assert_eq!(again, Ok(e.clone()));
                    }
                }
            }

            /// The one-pass fast path agrees with the full parser.
            #[test]
            fn fast_path_agrees_with_full_parser(
                s in "[a-zA-Z0-9.@*#_+-]{0,30}|[a-z.]{1,10}@[a-zA-Z0-9.-]{1,20}|[a-z]{1,5}@(xn--|XN--)?[a-z0-9-]{1,8}\\.[a-z0-9]{1,4}"
            ) {
                if let Some(at) = fast_path(s.as_bytes()) {
                    let full = parse_slow(&s).expect("fast path accepted what the full parser refuses");
                    prop_assert_eq!(full.as_str(), s.to_ascii_lowercase());
                    prop_assert_eq!(full.at(), at);
                }
                prop_assert_eq!(parse_address_owned(s.clone()).map(|e| e.to_string()).map_err(|e| e.1), parse_slow(&s).map(|e| e.to_string()));
            }

            #[test]
            fn plain_addresses_are_accepted(
                l in "[a-zA-Z0-9][a-zA-Z0-9._+-]{0,20}[a-zA-Z0-9]",
                d in "[a-z][a-z0-9-]{0,10}[a-z0-9]\\.(com|org|test)"
            ) {
                prop_assume!(!l.contains("..") && !d.starts_with("xn--"));
                let e = parse_address(&format!("{l}@{d}")).unwrap();
                prop_assert_eq!(e.as_str(), format!("{}@{}", l.to_lowercase(), d));
            }
        }
    }
}
