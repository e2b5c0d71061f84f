//! A mutation fuzzer that runs on stable Rust inside `cargo test`, so CI runs
//! every target without nightly or cargo-fuzz.
//!
//! Each target starts from its committed seed corpus (`fuzz/corpus/TARGET/`,
//! every file run as it is first, so past findings stay regression tests), then
//! mutates the seeds for a bounded time: `RCPTSYNC_FUZZ_SECS` per target
//! (default 2). A panic or a broken property saves the input under
//! `target/fuzz-findings/` and fails the test with the path; copy the file into
//! the corpus once the bug is fixed.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Tokens that tend to break parsers of addresses, maps, templates and JSON.
const DICTIONARY: &[&str] = &[
    "\n", "\r\n", "\r", "\0", "\t", " ", " OK", "@", "@@", "\"", "\\", "{{", "}}", "{%", "%}", "{#", "#}", ",", "[",
    "]", "{", "}", ":", "smtp:", "SMTP:", "X500:", "=", "*", "#", ".", "..", "xn--", "é", "ß", "\u{200b}", "\u{202e}",
    "\u{fffd}", "null", "true", "-1", "1e309", "\"\"", "[]", "{}", "\\u0000", "\\n", "<", ">", "'", "`", "$", "%", "|",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let tok = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, tok.iter().copied());
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece: Vec<u8> = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            4 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            5 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(400);
                input.splice(at..at, std::iter::repeat_n(b'a', n));
            }
            _ => {
                let at = rng.below(len + 1);
                input.insert(at, rng.next() as u8);
            }
        }
    }
    input.truncate(64 << 10);
}

/// Runs `check` on every seed of `target`, then on mutations of them until the
/// time budget is spent. `check` panics (or returns Err) on a broken property.
pub fn run(target: &str, check: impl Fn(&[u8]) -> Result<(), String>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    let secs: f64 = std::env::var("RCPTSYNC_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let seed = std::env::var("RCPTSYNC_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    }) | 1;
    let attempt = |input: &[u8], what: &str| {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| check(input)));
        let problem = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        };
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings");
        let _ = std::fs::create_dir_all(&out);
        let file = out.join(format!("{target}-{:016x}", xxhash_rust::xxh3::xxh3_64(input)));
        let _ = std::fs::write(&file, input);
        panic!(
            "fuzz target {target}: {what} breaks a property: {problem}\ninput saved to {} (RCPTSYNC_FUZZ_SEED={seed})",
            file.display()
        );
    };
    for (name, s) in &seeds {
        attempt(s, &format!("seed {name}"));
    }
    let pool: Vec<Vec<u8>> = seeds.into_iter().map(|(_, s)| s).collect();
    let mut rng = Rng(seed);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        let mut input = pool[rng.below(pool.len())].clone();
        mutate(&mut rng, &mut input, &pool);
        attempt(&input, &format!("mutation {n}"));
        n += 1;
    }
    eprintln!("fuzz target {target}: {} seeds and {n} mutations in {secs} s", pool.len());
}

/// The property every connector mapping must keep: whatever the directory
/// holds, what survives validation is a plain address (no whitespace or
/// control characters, so no injected map lines) and validation is stable.
pub fn check_validated(items: Vec<crate::policy::RawItem>) -> Result<(), String> {
    let (ok, _) = crate::policy::normalise(items);
    for (e, _) in ok {
        let s = e.as_str();
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("accepted entry {s:?} holds whitespace or a control character"));
        }
        let again = crate::policy::address::Entry::parse(s);
        match again {
            Ok(e2) if e2.as_str() == s => {}
            other => return Err(format!("accepted entry {s:?} does not parse back to itself: {other:?}")),
        }
    }
    Ok(())
}

/// Each line a raw value, as the file source would give it (`@d` a catch-all).
pub fn lines_as_items(input: &[u8]) -> Vec<crate::policy::RawItem> {
    use crate::policy::{Locator, RawItem, RawKind};
    String::from_utf8_lossy(input)
        .split('\n')
        .enumerate()
        .map(|(i, v)| RawItem { value: v.to_string(), kind: RawKind::of(v), locator: Locator::Line(i as u32) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_address_parser() {
        run("address", |input| check_validated(lines_as_items(input)));
    }
}
