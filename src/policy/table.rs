//! The final list's addresses, stored back to back in one buffer.
//!
//! Validated entries arrive as a million separate heap strings in source order.
//! Every pass after the merge (fingerprint, each template, state files, domain
//! set) walks them in sorted order, and chasing scattered pointers dominated
//! those passes. The merge therefore copies each address once, in sorted order,
//! into one buffer; later passes read memory sequentially.

use super::address::Entry;

/// A borrowed, validated entry (address or catch-all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryRef<'a> {
    text: &'a str,
    at: u16,
}

impl<'a> EntryRef<'a> {
    pub fn as_str(self) -> &'a str {
        self.text
    }

    pub fn local_part(self) -> &'a str {
        &self.text[..self.at as usize]
    }

    pub fn domain(self) -> &'a str {
        &self.text[self.at as usize + 1..]
    }

    pub fn is_catchall(self) -> bool {
        self.at == 0
    }

    /// For a digest entry (a hashed bundle's), the digest and whether it is a
    /// catch-all's.
    pub fn as_digest(self) -> Option<(&'a str, bool)> {
        super::address::split_digest(self.text)
    }
}

impl Entry {
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef { text: self.as_str(), at: self.local_part().len() as u16 }
    }
}

/// Sorted, unique addresses in one buffer.
#[derive(Debug, Clone, Default)]
pub struct AddressTable {
    text: String,
    /// End offset of entry i in `text` (entry i starts at `ends[i-1]`, or 0).
    ends: Vec<u32>,
    /// Offset of the '@' inside entry i.
    ats: Vec<u16>,
}

impl AddressTable {
    /// A table from its parts: `text` holds the entries back to back, `ends[i]`
    /// where entry i ends, `ats[i]` the offset of its '@'.
    pub fn from_parts(text: String, ends: Vec<u32>, ats: Vec<u16>) -> AddressTable {
        AddressTable { text, ends, ats }
    }

    /// Appends an entry; the caller keeps the table sorted and unique.
    #[cfg(test)]
    pub fn push(&mut self, e: &Entry) {
        let r = e.as_ref();
        self.text.push_str(r.text);
        self.ends.push(self.text.len() as u32);
        self.ats.push(r.at);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<EntryRef<'_>> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(EntryRef { text: &self.text[start..end], at: self.ats[i] })
    }

    pub fn last(&self) -> Option<EntryRef<'_>> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = EntryRef<'_>> + DoubleEndedIterator + Clone + '_ {
        (0..self.len()).map(move |i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
            EntryRef { text: &self.text[start..self.ends[i] as usize], at: self.ats[i] }
        })
    }

    /// Position of `s`, as `slice::binary_search`.
    pub fn binary_search(&self, s: &str) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).map(|e| e.as_str().cmp(s)) {
                Some(std::cmp::Ordering::Less) => lo = mid + 1,
                Some(std::cmp::Ordering::Greater) => hi = mid,
                Some(std::cmp::Ordering::Equal) => return Ok(mid),
                None => break,
            }
        }
        Err(lo)
    }

    /// Total bytes of all entries.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::address::{parse_address, parse_catchall};

    #[test]
    fn push_get_iter_search() {
        let mut t = AddressTable::default();
        for a in ["a@x.com", "bob@y.org", "c.d@z.net"] {
            t.push(&parse_address(a).unwrap());
        }
        assert_eq!(t.len(), 3);
        let e = t.get(1).unwrap();
        assert_eq!((e.as_str(), e.local_part(), e.domain(), e.is_catchall()), ("bob@y.org", "bob", "y.org", false));
        assert_eq!(t.iter().map(EntryRef::as_str).collect::<Vec<_>>(), ["a@x.com", "bob@y.org", "c.d@z.net"]);
        assert_eq!(t.binary_search("bob@y.org"), Ok(1));
        assert_eq!(t.binary_search("b@y.org"), Err(1));
        assert_eq!(t.binary_search("zz@z.net"), Err(3));
        assert_eq!(t.last().unwrap().as_str(), "c.d@z.net");
        assert!(t.get(3).is_none());
        let c = parse_catchall("@x.com").unwrap();
        assert!(c.as_ref().is_catchall() && c.as_ref().domain() == "x.com");
    }
}
