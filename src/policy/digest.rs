//! Salted SHA-256 digests: what the hashed outputs (`exim-sha256`,
//! `json-sha256`) and hashed bundles hold instead of addresses, and how a
//! hashed bundle's digests travel through an edge's sync unchanged.
//!
//! A digest is the lowercase hex SHA-256 of the salt followed by the canonical
//! entry (`alice@example.com`, or `@example.org` for a catch-all), as Exim's
//! `${sha256:SALT$local_part@$domain}` computes it. Hashed lists are sorted by
//! digest, never by address: an order taken from the clear text would tell a
//! reader of the file where in the alphabet each address lies.
//!
//! On an edge, a digest is carried as an [`Entry`] in a reserved domain
//! ([`Entry::digest`]), so the guard, state files, last-known-good copies and
//! `why` handle it like any entry; the hashed outputs write it as it came.

use rayon::prelude::*;

use super::RecipientList;
use super::address::Entry;

/// Lowercase hex SHA-256 of `salt` followed by `value`.
pub fn salted_sha256(salt: &str, value: &str) -> String {
    sha256_hex(&[salt.as_bytes(), value.as_bytes()])
}

/// Lowercase hex SHA-256 of the parts, one after the other.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut s = String::with_capacity(64);
    for b in ctx.finish().as_ref() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What a hub publishes so that an edge can tell whether it holds the same
/// salt, without the salt: the digest of a string that is no entry. (It tells
/// an attacker no more than a catch-all's digest does, whose domain is public.)
pub fn salt_check(salt: &str) -> String {
    salted_sha256(salt, "rcptsync salt check")
}

/// The digest of one entry: itself when it is a digest already (a hashed
/// bundle's), else the salted hash of its text.
pub fn digest_of(entry: &Entry, salt: &str) -> String {
    match entry.as_digest() {
        Some((hex, _)) => hex.to_string(),
        None => salted_sha256(salt, entry.as_str()),
    }
}

/// The entry under which a list holding digests keeps `entry` (an address or
/// a catch-all): its digest entry. For `why` and the guard's canaries.
pub fn digest_entry(entry: &Entry, salt: &str) -> Option<Entry> {
    Entry::digest(&salted_sha256(salt, entry.as_str()), entry.is_catchall())
}

/// Where a digest's entry is in its list, for its sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `list.addresses()[i]`.
    Address(usize),
    /// `list.catchalls()[i]`.
    CatchAll(usize),
}

/// A list as digests, each group sorted by digest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Digests of the catch-alls (`@domain`).
    pub catchalls: Vec<(String, Slot)>,
    /// Digests of the addresses.
    pub addresses: Vec<(String, Slot)>,
}

impl Digests {
    /// Hashes every entry of `list` with `salt` (on all cores), passing
    /// digest entries through as they are.
    pub fn of(list: &RecipientList, salt: &str) -> Digests {
        let mut catchalls: Vec<(String, Slot)> =
            list.catchalls().iter().enumerate().map(|(i, c)| (digest_of(c, salt), Slot::CatchAll(i))).collect();
        let mut addresses = Vec::with_capacity(list.addresses().len());
        let hashed: Vec<(String, bool)> = list
            .addresses()
            .iter()
            .collect::<Vec<_>>()
            .into_par_iter()
            .with_min_len(4096)
            .map(|a| match a.as_digest() {
                Some((hex, catchall)) => (hex.to_string(), catchall),
                None => (salted_sha256(salt, a.as_str()), false),
            })
            .collect();
        for (i, (hex, catchall)) in hashed.into_iter().enumerate() {
            if catchall { catchalls.push((hex, Slot::Address(i))) } else { addresses.push((hex, Slot::Address(i))) }
        }
        catchalls.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
        addresses.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Digests { catchalls, addresses }
    }

    /// The catch-alls' digests, in order.
    pub fn catchall_hexes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.catchalls.iter().map(|(h, _)| h.as_str())
    }

    /// The addresses' digests, in order.
    pub fn address_hexes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.addresses.iter().map(|(h, _)| h.as_str())
    }
}
