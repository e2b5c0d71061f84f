//! Policy: the pure core that turns what the sources said into the final list.
//!
//! `normalise` parses every raw value (dropping the invalid ones with a reason),
//! `Policy::apply` filters by domain and exclude globs, adds the includes and merges
//! all sources into one sorted, de-duplicated [`RecipientList`] that remembers where
//! every entry came from. No I/O happens here, so all of it is unit-tested directly.

pub mod address;
pub mod config;
pub mod digest;
pub mod guard;
mod record;
pub mod table;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use address::{Entry, parse_address_owned, parse_catchall};
pub use config::{GuardConfig, OnSourceFailure, PolicyConfig, check_delimiter};
use record::{LongAddresses, Rec};
pub use table::{AddressTable, EntryRef};

/// Where inside a source a value was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Locator {
    /// A line of a file (1-based).
    Line(u32),
    /// A directory object and attribute, e.g. `CN=alice,… proxyAddresses`.
    Object(Box<str>),
    /// Restored from the source's last-known-good slice.
    LastGood,
    /// `policy.include[i]`.
    Include(u32),
    /// Kept by `guard.removal_grace`: absent from every source since `since`,
    /// published until `until` (unix seconds).
    Grace { since: u64, until: u64 },
    /// A line of a hub's bundle, and which of the hub's sources listed it
    /// (bit i: the bundle header's source i; `why` names them).
    Hub { line: u32, sources: u64 },
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locator::Line(n) | Locator::Hub { line: n, .. } => write!(f, "line {n}"),
            Locator::Object(o) => f.write_str(o),
            Locator::LastGood => f.write_str("last-known-good copy"),
            Locator::Include(i) => write!(f, "policy.include[{i}]"),
            Locator::Grace { since, until } => {
                let t = |s: u64| {
                    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
                };
                write!(f, "kept by removal grace until {} (absent from every source since {})", t(*until), t(*since))
            }
        }
    }
}

/// Whether a raw value is meant as an address or as an explicit catch-all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    Address,
    CatchAll,
}

impl RawKind {
    /// The kind of a value written as text: `@domain` is a catch-all.
    pub fn of(value: &str) -> RawKind {
        if value.starts_with('@') { RawKind::CatchAll } else { RawKind::Address }
    }
}

/// One value as a connector produced it, before validation.
#[derive(Debug, Clone)]
pub struct RawItem {
    pub value: String,
    pub kind: RawKind,
    pub locator: Locator,
}

/// A value that failed validation, with the reason in plain words.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub value: String,
    pub locator: Locator,
    pub reason: String,
}

/// A validated value with its place in the source.
pub type Located = (Entry, Locator);

/// Parses every raw item of one source. Runs on all cores: for a million-line
/// source this is most of the CPU time of a sync.
pub fn normalise(items: Vec<RawItem>) -> (Vec<Located>, Vec<Rejected>) {
    // An indexed collect writes every result straight into one vector (no
    // per-thread pieces to concatenate); the rare refusals are boxed so a result
    // is no larger than an entry, and the entries are then kept in place.
    let results: Vec<Result<Located, Box<Rejected>>> =
        items.into_par_iter().with_min_len(4096).map(|item| validate_item(item).map_err(Box::new)).collect();
    let mut rejected = Vec::new();
    let ok = results.into_iter().filter_map(|r| r.map_err(|bad| rejected.push(*bad)).ok()).collect();
    (ok, rejected)
}

/// Validates one raw value into its canonical entry, or says why not. The one
/// rule every source goes through, whether in [`normalise`] or in a connector
/// that validates as it reads (the file source).
pub fn validate_item(item: RawItem) -> Result<Located, Rejected> {
    let RawItem { value, kind, locator } = item;
    let parsed = match kind {
        RawKind::Address => parse_address_owned(value),
        RawKind::CatchAll => parse_catchall(&value).map_err(|e| (value, e)),
    };
    match parsed {
        Ok(e) => Ok((e, locator)),
        Err((value, error)) => Err(Rejected { value, locator, reason: error.to_string() }),
    }
}

/// The distinct source indexes of an entry's origins (they are sorted, so
/// repeats are adjacent), as indexes into [`RecipientList::source_names`].
pub fn unique_sources(sources: &[u16]) -> impl Iterator<Item = usize> + '_ {
    sources.iter().enumerate().filter(|&(i, s)| i == 0 || sources[i - 1] != *s).map(|(_, &s)| usize::from(s))
}

/// Where an entry of the final list came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Index into [`RecipientList::source_names`].
    pub source: u16,
    pub locator: Locator,
}

/// The final list: sorted, unique, lowercase entries with their provenance.
#[derive(Debug, Clone, Default)]
pub struct RecipientList {
    /// Addresses (`local@domain`), sorted, in one buffer.
    addresses: AddressTable,
    /// Catch-all entries (`@domain`), sorted.
    catchalls: Vec<Entry>,
    /// `starts[i]..starts[i+1]` indexes the origins of entry i (addresses first,
    /// then catch-alls).
    starts: Vec<u32>,
    /// Source index of each origin.
    origin_sources: Vec<u16>,
    /// Locator of each origin; empty when the list was built without them (the
    /// sync path, which never shows them).
    origin_locators: Vec<Locator>,
    /// Names for `Origin::source`.
    source_names: Arc<[String]>,
    /// Sorted unique domains of all entries.
    domains: Vec<String>,
}

impl RecipientList {
    pub fn addresses(&self) -> &AddressTable {
        &self.addresses
    }

    pub fn catchalls(&self) -> &[Entry] {
        &self.catchalls
    }

    /// Domains that have at least one address or a catch-all.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    pub fn source_names(&self) -> &[String] {
        &self.source_names
    }

    /// Addresses plus catch-alls: what the guard counts.
    pub fn len(&self) -> usize {
        self.addresses.len() + self.catchalls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry (addresses, then catch-alls).
    pub fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.addresses.iter().chain(self.catchalls.iter().map(Entry::as_ref))
    }

    /// Every entry in byte order (addresses and catch-alls merged): the order of
    /// state files and fingerprints. Walked as often as needed instead of being
    /// collected: a vector of five million `&str` is 80 MB.
    pub fn sorted(&self) -> impl Iterator<Item = &str> + Clone {
        self.sorted_with_sources().map(|(e, _)| e)
    }

    /// Whether `entry` (canonical: an address, or `@domain`) is in the list.
    pub fn contains(&self, entry: &str) -> bool {
        match RawKind::of(entry) {
            RawKind::CatchAll => self.catchalls.binary_search_by(|c| c.as_str().cmp(entry)).is_ok(),
            RawKind::Address => self.addresses.binary_search(entry).is_ok(),
        }
    }

    /// Every entry in byte order with the indexes of the sources that produced it.
    pub fn sorted_with_sources(&self) -> impl Iterator<Item = (&str, &[u16])> + Clone {
        let c = &self.catchalls;
        let mut j = 0;
        let mut addresses = self.addresses.iter().enumerate().peekable();
        std::iter::from_fn(move || {
            let next_address = addresses.peek().map(|(_, a)| a.as_str());
            match (next_address, c.get(j)) {
                (Some(a), Some(cj)) if cj.as_str() < a => {
                    j += 1;
                    Some((cj.as_str(), self.catchall_sources(j - 1)))
                }
                (None, Some(cj)) => {
                    j += 1;
                    Some((cj.as_str(), self.catchall_sources(j - 1)))
                }
                _ => addresses.next().map(|(i, a)| (a.as_str(), self.address_sources(i))),
            }
        })
    }

    /// Origins of address number `i` (locators are `LastGood` stand-ins when the
    /// list was built without them).
    pub fn address_origins(&self, i: usize) -> Vec<Origin> {
        self.origins_at(i)
    }

    /// Origins of catch-all number `i`.
    pub fn catchall_origins(&self, i: usize) -> Vec<Origin> {
        self.origins_at(self.addresses.len() + i)
    }

    /// Source indexes of address number `i`, in source order.
    pub fn address_sources(&self, i: usize) -> &[u16] {
        let r = self.range(i);
        &self.origin_sources[r]
    }

    /// Source indexes of catch-all number `i`, in source order.
    pub fn catchall_sources(&self, i: usize) -> &[u16] {
        let r = self.range(self.addresses.len() + i);
        &self.origin_sources[r]
    }

    fn range(&self, slot: usize) -> std::ops::Range<usize> {
        match (self.starts.get(slot), self.starts.get(slot + 1)) {
            (Some(&a), Some(&b)) => a as usize..b as usize,
            _ => 0..0,
        }
    }

    fn origins_at(&self, slot: usize) -> Vec<Origin> {
        self.range(slot)
            .map(|k| Origin {
                source: self.origin_sources[k],
                locator: self.origin_locators.get(k).cloned().unwrap_or(Locator::LastGood),
            })
            .collect()
    }

    /// Distinct source names of an address, in source order (for templates).
    pub fn address_source_names(&self, i: usize) -> Vec<&str> {
        let mut idx: Vec<u16> = self.address_sources(i).to_vec();
        idx.dedup();
        idx.into_iter().filter_map(|s| self.source_names.get(s as usize).map(String::as_str)).collect()
    }

    /// Builds a list from already-filtered located entries, grouped by source.
    fn build(source_names: Vec<String>, per_source: Vec<Vec<Located>>, keep_locators: bool) -> RecipientList {
        let total: usize = per_source.iter().map(Vec::len).sum();
        // Addresses become sort records carrying their text (see `record`);
        // catch-alls, a handful, are sorted apart. The position orders an
        // entry's origins by where they appear, and indexes `locators` (when
        // kept) and `long` (addresses too long to be inline).
        let mut recs: Vec<Rec> = Vec::new();
        let mut long = LongAddresses::default();
        let mut catch: Vec<(Entry, u16, u32)> = Vec::new();
        let mut locators: Vec<Locator> = Vec::with_capacity(if keep_locators { total } else { 0 });
        let mut pos = 0u32;
        for (i, v) in per_source.into_iter().enumerate() {
            let source = u16::try_from(i).unwrap_or(u16::MAX);
            let (base, n) = (pos, v.len());
            // A record is as large as an (entry, locator) pair, so each source's
            // vector becomes its records in place, without a second buffer; the
            // strings are freed as they are copied.
            let part: Vec<Rec> = v
                .into_iter()
                .enumerate()
                .filter_map(|(j, (e, locator))| {
                    let p = base + j as u32;
                    if keep_locators {
                        locators.push(locator);
                    }
                    if e.is_catchall() {
                        catch.push((e, source, p));
                        return None;
                    }
                    let r = Rec::new(&e, source, p);
                    if r.is_long() {
                        long.push(p, e);
                    }
                    Some(r)
                })
                .collect();
            pos += n as u32;
            if recs.is_empty() {
                recs = part;
                recs.reserve(total - n);
            } else {
                recs.extend(part);
            }
        }
        let by_address_then_origin =
            |a: &Rec, b: &Rec| a.cmp_text(b, &long).then(a.source.cmp(&b.source)).then(a.pos.cmp(&b.pos));
        recs.par_sort_unstable_by(by_address_then_origin);
        catch.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));

        let n = recs.len();
        let (addresses, mut starts, mut origin_sources) = fill_table(&recs, &long);
        let mut origin_locators: Vec<Locator> = Vec::with_capacity(if keep_locators { n + catch.len() } else { 0 });
        let mut take_locator = |p: u32| {
            if keep_locators {
                let l = locators.get_mut(p as usize).map(|l| std::mem::replace(l, Locator::LastGood));
                origin_locators.push(l.unwrap_or(Locator::LastGood));
            }
        };
        if keep_locators {
            for r in &recs {
                take_locator(r.pos);
            }
        }
        let mut catchalls: Vec<Entry> = Vec::new();
        for (entry, source, p) in catch {
            if catchalls.last() != Some(&entry) {
                starts.push(origin_sources.len() as u32);
                catchalls.push(entry);
            }
            origin_sources.push(source);
            take_locator(p);
        }
        starts.push(origin_sources.len() as u32);

        // Few distinct domains, many entries: each thread keeps a short list, with
        // a check against the last domain seen, instead of hashing every entry.
        let mut domains: Vec<String> = (0..addresses.len())
            .into_par_iter()
            .with_min_len(1 << 14)
            .fold(Vec::<&str>::new, |mut seen, i| {
                if let Some(d) = addresses.get(i).map(EntryRef::domain)
                    && seen.last() != Some(&d)
                    && !seen.contains(&d)
                {
                    seen.push(d);
                }
                seen
            })
            .map(|v| v.into_iter().collect::<HashSet<&str>>())
            .reduce(HashSet::new, |mut a, b| {
                a.extend(b);
                a
            })
            .into_iter()
            .chain(catchalls.iter().map(Entry::domain))
            .map(String::from)
            .collect();
        domains.sort_unstable();
        domains.dedup();
        RecipientList {
            addresses,
            catchalls,
            starts,
            origin_sources,
            origin_locators,
            source_names: source_names.into(),
            domains,
        }
    }
}

/// Builds the address table from sorted records, with each address's first
/// origin (`starts`) and every record's source. The records are cut into parts
/// at address boundaries; each part's addresses and bytes are counted, then
/// every part fills its own stretch of the result on its own core (the fresh
/// pages are faulted in by all cores, and the copying is shared).
fn fill_table(recs: &[Rec], long: &LongAddresses) -> (AddressTable, Vec<u32>, Vec<u16>) {
    let n = recs.len();
    let first: Vec<bool> = (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|i| i == 0 || recs[i - 1].cmp_text(&recs[i], long) != std::cmp::Ordering::Equal)
        .collect();
    let parts = rayon::current_num_threads().max(1) * 4;
    let mut cuts = vec![0usize];
    for k in 1..parts {
        let last = cuts[cuts.len() - 1];
        let mut c = (n * k / parts).max(last);
        while c < n && !first[c] {
            c += 1;
        }
        if c > last && c < n {
            cuts.push(c);
        }
    }
    cuts.push(n);
    // (addresses, bytes) of each part.
    let sizes: Vec<(usize, usize)> = cuts
        .par_windows(2)
        .map(|w| (w[0]..w[1]).filter(|&i| first[i]).fold((0, 0), |(u, b), i| (u + 1, b + recs[i].text_len(long))))
        .collect();
    let (addresses, bytes) = sizes.iter().fold((0, 0), |(u, b), s| (u + s.0, b + s.1));
    let mut text = vec![0u8; bytes];
    let mut ends = vec![0u32; addresses];
    let mut ats = vec![0u16; addresses];
    let mut starts = vec![0u32; addresses];
    let mut origin_sources = vec![0u16; n];
    let mut jobs = Vec::with_capacity(sizes.len());
    {
        let (mut t, mut e, mut a, mut s, mut o) =
            (&mut text[..], &mut ends[..], &mut ats[..], &mut starts[..], &mut origin_sources[..]);
        let mut byte_base = 0usize;
        for (w, &(u, b)) in cuts.windows(2).zip(&sizes) {
            let (t1, t2) = std::mem::take(&mut t).split_at_mut(b);
            let (e1, e2) = std::mem::take(&mut e).split_at_mut(u);
            let (a1, a2) = std::mem::take(&mut a).split_at_mut(u);
            let (s1, s2) = std::mem::take(&mut s).split_at_mut(u);
            let (o1, o2) = std::mem::take(&mut o).split_at_mut(w[1] - w[0]);
            jobs.push((w[0]..w[1], byte_base, t1, e1, a1, s1, o1));
            (t, e, a, s, o) = (t2, e2, a2, s2, o2);
            byte_base += b;
        }
    }
    jobs.into_par_iter().for_each(|(range, byte_base, t, e, a, s, o)| {
        let mut buf = [0u8; record::INLINE];
        let (mut filled, mut u) = (0usize, 0usize);
        let first_rec = range.start;
        for i in range {
            let r = &recs[i];
            if first[i] {
                if let Some((text, at)) = r.address(&mut buf, long) {
                    t[filled..filled + text.len()].copy_from_slice(text.as_bytes());
                    filled += text.len();
                    a[u] = at;
                }
                e[u] = (byte_base + filled) as u32;
                s[u] = i as u32;
                u += 1;
            }
            o[i - first_rec] = r.source;
        }
    });
    // The text is whole addresses back to back, each valid UTF-8.
    let text = String::from_utf8(text).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    (AddressTable::from_parts(text, ends, ats), starts, origin_sources)
}

/// Why the policy left an entry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drop {
    /// Its domain is not in `policy.domains`.
    Domain,
    /// It matched `policy.exclude[i]`.
    Exclude(usize),
}

/// `[policy]` compiled for fast matching (by [`PolicyConfig::compile`]).
#[derive(Clone, Default)]
pub struct Policy {
    domains: Option<HashSet<String>>,
    /// Characters that start an address extension; None = not configured.
    delimiter: Option<String>,
    include: Vec<Entry>,
    exclude: globset::GlobSet,
    /// The section as written: what `Debug` (and so the config fingerprint) shows.
    source: PolicyConfig,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

/// Name used for `policy.include` in provenance.
pub const INCLUDE_SOURCE: &str = "policy.include";
/// The pseudo-source of entries kept by `guard.removal_grace`.
pub const GRACE_SOURCE: &str = "removal-grace";

impl Policy {
    /// The recipient delimiter set ("" for none).
    pub fn recipient_delimiter(&self) -> &str {
        self.delimiter.as_deref().unwrap_or("")
    }

    /// Whether `policy.recipient_delimiter` was written (then it wins over the
    /// products' defaults).
    pub fn delimiter_configured(&self) -> bool {
        self.source.recipient_delimiter.is_some()
    }

    /// Takes the delimiters the sources' products use, when the config names none.
    pub fn default_delimiter(&mut self, from_sources: &str) {
        if self.delimiter.is_none() && !from_sources.is_empty() {
            self.delimiter = Some(from_sources.to_string());
        }
    }

    /// Whether `policy.domains` limits the list to named domains.
    pub fn limits_domains(&self) -> bool {
        self.domains.as_ref().is_some_and(|d| !d.is_empty())
    }

    /// Whether the policy keeps an entry, and if not, why.
    pub fn check(&self, e: &Entry) -> Result<(), Drop> {
        if let Some(d) = &self.domains
            && !d.contains(e.domain())
        {
            return Err(Drop::Domain);
        }
        if !self.exclude.is_empty()
            && let Some(&i) = self.exclude.matches(e.as_str()).first()
        {
            return Err(Drop::Exclude(i));
        }
        Ok(())
    }

    /// Whether the policy filters or adds entries (domains, exclude, include):
    /// rules a list of digests cannot follow.
    pub fn edits_entries(&self) -> bool {
        self.filters() || !self.include.is_empty()
    }

    /// Whether any filter (domains or exclude) is set.
    fn filters(&self) -> bool {
        self.domains.is_some() || !self.exclude.is_empty()
    }

    pub fn exclude_pattern(&self, i: usize) -> &str {
        self.source.exclude.get(i).map(String::as_str).unwrap_or("?")
    }

    pub fn includes(&self) -> &[Entry] {
        &self.include
    }

    /// Merges the validated entries of every source into the final list:
    /// `(sources ∩ domains) − exclude ∪ include`. Returns the list and, per source,
    /// how many entries the policy dropped.
    pub fn apply(&self, sources: Vec<(String, Vec<Located>)>) -> (RecipientList, Vec<usize>) {
        self.apply_with(sources, true)
    }

    /// [`Policy::apply`] without keeping locators (line numbers, objects): the
    /// sync path, which only needs which source produced what.
    pub fn apply_lean(&self, sources: Vec<(String, Vec<Located>)>) -> (RecipientList, Vec<usize>) {
        self.apply_with(sources, false)
    }

    fn apply_with(&self, sources: Vec<(String, Vec<Located>)>, keep_locators: bool) -> (RecipientList, Vec<usize>) {
        let mut names = Vec::with_capacity(sources.len() + 1);
        let mut kept = Vec::with_capacity(sources.len() + 1);
        let mut dropped = Vec::with_capacity(sources.len());
        for (name, entries) in sources {
            let before = entries.len();
            let v: Vec<Located> = if self.filters() {
                entries.into_par_iter().filter(|(e, _)| self.check(e).is_ok()).collect()
            } else {
                entries
            };
            dropped.push(before - v.len());
            names.push(name);
            kept.push(v);
        }
        names.push(INCLUDE_SOURCE.to_string());
        kept.push(self.include.iter().enumerate().map(|(i, e)| (e.clone(), Locator::Include(i as u32))).collect());
        (RecipientList::build(names, kept, keep_locators), dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use address::{AddressError, parse_address};

    fn raw(v: &str, line: u32) -> RawItem {
        let (value, kind) = match v.strip_prefix('@') {
            Some(_) => (v.to_string(), RawKind::CatchAll),
            None => (v.to_string(), RawKind::Address),
        };
        RawItem { value, kind, locator: Locator::Line(line) }
    }

    fn located(vals: &[&str]) -> Vec<Located> {
        let (ok, bad) = normalise(vals.iter().enumerate().map(|(i, v)| raw(v, i as u32 + 1)).collect());
        assert!(bad.is_empty(), "{bad:?}");
        ok
    }

    fn policy(domains: Option<&[&str]>, include: &[&str], exclude: &[&str]) -> Policy {
        let mut c = crate::section::Checker::new(std::path::Path::new("/"));
        let p = PolicyConfig {
            domains: domains.map(|d| d.iter().map(|s| s.to_string()).collect()),
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            recipient_delimiter: None,
        }
        .compile(&mut c);
        assert_eq!(c.into_errors(), []);
        p
    }

    #[test]
    fn normalise_splits_good_and_bad() {
        let (ok, bad) = normalise(vec![raw("A@X.com", 1), raw("bad value@x.com", 2), raw("@Y.com", 3)]);
        assert_eq!(ok.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(), ["a@x.com", "@y.com"]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].locator, Locator::Line(2));
        assert_eq!(bad[0].reason, AddressError::Whitespace.to_string());
    }

    #[test]
    fn union_with_provenance_and_filters() {
        let p = policy(
            Some(&["example.com", "example.org"]),
            &["postmaster@example.com"],
            &["*@legacy.example.com", "old-*"],
        );
        let a = located(&[
            "Alice@Example.com",
            "bob@example.org",
            "x@other.net",
            "old-bob@example.com",
            "z@legacy.example.com",
        ]);
        let b = located(&["alice@example.com", "@example.org", "carol@example.com"]);
        let (list, dropped) = p.apply(vec![("a".into(), a), ("b".into(), b)]);
        let got: Vec<&str> = list.entries().map(EntryRef::as_str).collect();
        assert_eq!(
            got,
            ["alice@example.com", "bob@example.org", "carol@example.com", "postmaster@example.com", "@example.org"]
        );
        assert_eq!(dropped, [3, 0]);
        assert_eq!(list.domains(), ["example.com", "example.org"]);
        assert_eq!(list.len(), 5);
        // alice came from both sources, in source order, with line numbers.
        assert_eq!(
            list.address_origins(0),
            [Origin { source: 0, locator: Locator::Line(1) }, Origin { source: 1, locator: Locator::Line(1) }]
        );
        assert_eq!(list.address_source_names(0), ["a", "b"]);
        assert_eq!(list.address_source_names(3), [INCLUDE_SOURCE]);
        assert_eq!(list.catchall_origins(0), [Origin { source: 1, locator: Locator::Line(2) }]);
    }

    #[test]
    fn sorted_order_interleaves_catchalls_with_their_sources() {
        let p = policy(None, &[], &[]);
        let (list, _) = p.apply(vec![
            ("a".into(), located(&["z@b.org", "m@a.com"])),
            ("b".into(), located(&["@b.org", "a@a.com", "@zz.org", "m@a.com"])),
        ]);
        let got: Vec<(&str, Vec<u16>)> = list.sorted_with_sources().map(|(e, s)| (e, s.to_vec())).collect();
        assert_eq!(
            got,
            [
                ("@b.org", vec![1]),
                ("@zz.org", vec![1]),
                ("a@a.com", vec![1]),
                ("m@a.com", vec![0, 1]),
                ("z@b.org", vec![0]),
            ]
        );
        assert_eq!(list.sorted().collect::<Vec<_>>(), ["@b.org", "@zz.org", "a@a.com", "m@a.com", "z@b.org"]);
    }

    #[test]
    fn exclude_glob_covers_catchall_of_its_domain() {
        let p = policy(None, &[], &["*@legacy.example.com"]);
        let (list, _) =
            p.apply(vec![("s".into(), located(&["@legacy.example.com", "a@legacy.example.com", "a@example.com"]))]);
        assert_eq!(list.entries().map(EntryRef::as_str).collect::<Vec<_>>(), ["a@example.com"]);
        assert_eq!(p.check(&parse_address("b@legacy.example.com").unwrap()), Err(Drop::Exclude(0)));
    }

    #[test]
    fn include_bypasses_nothing_but_is_always_present() {
        // Includes are added after filtering: an include outside policy.domains is
        // still published, because the operator listed it explicitly.
        let p = policy(Some(&["example.com"]), &["abuse@example.net", "@example.com"], &[]);
        let (list, _) = p.apply(vec![("s".into(), Vec::new())]);
        assert_eq!(list.entries().map(EntryRef::as_str).collect::<Vec<_>>(), ["abuse@example.net", "@example.com"]);
    }

    #[test]
    fn empty_sources_give_empty_list() {
        let (list, _) = policy(None, &[], &[]).apply(vec![("s".into(), Vec::new())]);
        assert!(list.is_empty());
        assert!(list.domains().is_empty());
        assert_eq!(list.address_origins(0), []);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The merge (inline sort records, long addresses in a side table) gives
        /// exactly the sorted set of a plain BTreeMap, with each entry's origins
        /// in source order and then in the order they appear.
        #[test]
        fn merge_matches_a_plain_ordered_map(
            sources in proptest::collection::vec(
                proptest::collection::vec((25usize..40, 0usize..3, 0usize..3, proptest::bool::weighted(0.1)), 0..60),
                1..4,
            )
        ) {
            // Addresses of 32 to 52 bytes, so they fall on both sides of the 40
            // inline bytes and often tie on them; few distinct values, so many
            // duplicates within and across sources.
            let domains = ["x.org", "example.com", "EXAMPLE.net"];
            let value = |len: usize, letter: usize, d: usize, catchall: bool| {
                if catchall {
                    format!("@{}", domains[d])
                } else {
                    format!("{}{}@{}", "a".repeat(len), ['b', 'c', 'd'][letter], domains[d])
                }
            };
            let mut want: std::collections::BTreeMap<String, Vec<(u16, u32)>> = Default::default();
            let mut input = Vec::new();
            for (si, src) in sources.iter().enumerate() {
                let vals: Vec<String> = src.iter().map(|&(len, l, d, c)| value(len, l, d, c)).collect();
                let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
                let ok = located(&refs);
                for (i, (e, _)) in ok.iter().enumerate() {
                    want.entry(e.as_str().to_string()).or_default().push((si as u16, i as u32 + 1));
                }
                input.push((format!("s{si}"), ok));
            }
            let (list, _) = policy(None, &[], &[]).apply(input);
            let got_names: Vec<&str> = list.sorted().collect();
            let want_names: Vec<&str> = want.keys().map(String::as_str).collect();
            proptest::prop_assert_eq!(got_names, want_names);
            let lines = |origins: Vec<Origin>| -> Vec<(u16, u32)> {
                origins
                    .into_iter()
                    .map(|o| match o.locator { Locator::Line(l) => (o.source, l), _ => (o.source, 0) })
                    .collect()
            };
            for (i, a) in list.addresses().iter().enumerate() {
                proptest::prop_assert_eq!(&lines(list.address_origins(i)), &want[a.as_str()]);
                proptest::prop_assert!(list.contains(a.as_str()));
            }
            for (i, c) in list.catchalls().iter().enumerate() {
                proptest::prop_assert_eq!(&lines(list.catchall_origins(i)), &want[c.as_str()]);
                proptest::prop_assert!(list.contains(c.as_str()));
            }
            proptest::prop_assert!(!list.contains("zz@nowhere.example"));
        }
    }
}
