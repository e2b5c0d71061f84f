//! The merge's sort records: each address with its text inline.
//!
//! Sorting pointers to strings scattered over the heap, then copying the strings
//! into the final table in sorted order, reads memory at random: a cache miss
//! per entry once the strings outgrow the CPU cache (about a million entries on
//! a 32 MB L3), so the merge grew faster than the list. A record instead carries
//! the first 40 bytes of its address (nearly every real address fits), so the
//! sort compares records and the table is filled by reading them in order.
//! Longer addresses keep the rest in a side table, read only when 40 bytes tie.

use std::cmp::Ordering;

use super::address::Entry;

/// Bytes of an address kept in the record.
pub const INLINE: usize = 40;
const WORDS: usize = INLINE / 8;
/// `len` of an address longer than [`INLINE`].
const LONG: u8 = u8::MAX;

/// One address from one source: 48 bytes.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// The first [`INLINE`] bytes as big-endian words, zero padded: validated
    /// entries never contain NUL, so comparing the words compares the bytes.
    words: [u64; WORDS],
    /// Position among all merged entries: orders an entry's origins, and finds
    /// its locator and (when long) its full text.
    pub pos: u32,
    pub source: u16,
    /// The address's length, or [`LONG`].
    len: u8,
    /// Offset of the '@' (inline addresses only).
    at: u8,
}

impl Rec {
    pub fn new(e: &Entry, source: u16, pos: u32) -> Rec {
        let text = e.as_str().as_bytes();
        let mut buf = [0u8; INLINE];
        let n = text.len().min(INLINE);
        buf[..n].copy_from_slice(&text[..n]);
        let mut words = [0u64; WORDS];
        for (w, chunk) in words.iter_mut().zip(buf.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_be_bytes(b);
        }
        let (len, at) = match u8::try_from(e.local_part().len()) {
            Ok(at) if text.len() <= INLINE => (text.len() as u8, at),
            _ => (LONG, 0),
        };
        Rec { words, pos, source, len, at }
    }

    pub fn is_long(&self) -> bool {
        self.len == LONG
    }

    /// The address and the offset of its '@': decoded into `buf` when inline,
    /// else from the side table (`None` only if a long address is missing there).
    pub fn address<'b>(&self, buf: &'b mut [u8; INLINE], long: &'b LongAddresses) -> Option<(&'b str, u16)> {
        if self.is_long() {
            return long.get(self.pos).map(|e| (e.as_str(), e.local_part().len() as u16));
        }
        for (chunk, w) in buf.chunks_exact_mut(8).zip(self.words) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        // The bytes are those of a &str, up to its end: always UTF-8.
        std::str::from_utf8(&buf[..usize::from(self.len)]).ok().map(|s| (s, u16::from(self.at)))
    }

    /// The address's length in bytes (as [`Rec::address`] gives it).
    pub fn text_len(&self, long: &LongAddresses) -> usize {
        if self.is_long() { long.get(self.pos).map_or(0, |e| e.as_str().len()) } else { usize::from(self.len) }
    }

    /// Orders by address.
    pub fn cmp_text(&self, other: &Rec, long: &LongAddresses) -> Ordering {
        // Word by word: nearly always decided by the first or second word.
        for (a, b) in self.words.iter().zip(&other.words) {
            if a != b {
                return a.cmp(b);
            }
        }
        match (self.is_long(), other.is_long()) {
            // Equal words, no NUL in either: the same address.
            (false, false) => Ordering::Equal,
            // Equal words: the inline one is the long one's first 40 bytes.
            (false, true) => Ordering::Less,
            (true, false) => Ordering::Greater,
            (true, true) => long.text(self.pos).cmp(long.text(other.pos)),
        }
    }
}

/// The addresses longer than [`INLINE`], by record position.
#[derive(Debug, Default)]
pub struct LongAddresses(Vec<(u32, Entry)>);

impl LongAddresses {
    /// Adds the address of the record at `pos`; positions come in increasing
    /// order, so a lookup is a bisection.
    pub fn push(&mut self, pos: u32, e: Entry) {
        self.0.push((pos, e));
    }

    pub fn get(&self, pos: u32) -> Option<&Entry> {
        self.0.binary_search_by_key(&pos, |(p, _)| *p).ok().map(|i| &self.0[i].1)
    }

    fn text(&self, pos: u32) -> &str {
        self.get(pos).map_or("", Entry::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::address::parse_address;

    fn rec(s: &str, pos: u32) -> Rec {
        Rec::new(&parse_address(s).unwrap(), 0, pos)
    }

    #[test]
    fn records_order_like_their_text_across_the_inline_limit() {
        let long_local = "x".repeat(INLINE - "@example.com".len());
        let texts: Vec<String> = vec![
            "a@b.c".into(),
            "a@b.cd".into(),
            "ab@c.d".into(),
            "a.b@example.com".into(),
            format!("{long_local}@example.com"),    // exactly 40 bytes
            format!("{long_local}@example.com.au"), // 43: long, shares the 40
            format!("{long_local}@example.com.ar"), // long, ties on 40 bytes
            format!("{long_local}x@example.com"),
            "0@digits.example".into(),
            "z@z.z".into(),
        ];
        let recs: Vec<Rec> = texts.iter().enumerate().map(|(i, t)| rec(t, i as u32)).collect();
        let mut long = LongAddresses::default();
        for r in recs.iter().filter(|r| r.is_long()) {
            long.push(r.pos, parse_address(&texts[r.pos as usize]).unwrap());
        }
        for a in &recs {
            for b in &recs {
                let want = texts[a.pos as usize].cmp(&texts[b.pos as usize]);
                assert_eq!(a.cmp_text(b, &long), want, "{} vs {}", texts[a.pos as usize], texts[b.pos as usize]);
            }
        }
        let mut buf = [0u8; INLINE];
        for r in &recs {
            let t = &texts[r.pos as usize];
            assert_eq!(r.is_long(), t.len() > INLINE, "{t}");
            assert_eq!(r.text_len(&long), t.len());
            let (s, at) = r.address(&mut buf, &long).unwrap();
            assert_eq!(s, t);
            assert_eq!(usize::from(at), t.rfind('@').unwrap());
        }
        assert_eq!(std::mem::size_of::<Rec>(), 48);
    }
}
