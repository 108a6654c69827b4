//! A small mutation fuzzer for the parsers' property tests (issue 18): each
//! input is a seed of the corpus with one to four random edits — byte flips,
//! insertions of bytes parsers care about, deletions, duplications, splices
//! from another seed, truncation, and little-endian integers overwritten
//! with edge values (the length and count fields of binary headers). The
//! target runs under `catch_unwind`; any panic fails the test with the
//! input that caused it. `TUNEGATE_FUZZ_ITERS` sets the inputs per target
//! (default 300, the short version CI runs; BENCHMARKS.md records the long
//! run). Shared by path between crates' tests (no crate of its own).

#![allow(dead_code)]

use rand::{Rng, SeedableRng};

const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\"'{}[]:,\n\r\t-.0123456789eE\\/#&*!|>%@~ ";
const EDGES: &[u64] = &[0, 1, 2, 7, 8, 255, 256, 0x7fff_ffff, 0xffff_ffff, 0x1_0000_0000, u64::MAX / 2, u64::MAX];

pub fn iterations() -> usize {
    std::env::var("TUNEGATE_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

pub fn mutate(rng: &mut impl Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let n = b.len();
        match rng.gen_range(0..8) {
            0 if n > 0 => {
                let i = rng.gen_range(0..n);
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let i = rng.gen_range(0..=n);
                let c = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                b.insert(i, c);
            }
            2 if n > 0 => {
                let i = rng.gen_range(0..n);
                let j = (i + rng.gen_range(1..=16)).min(n);
                b.drain(i..j);
            }
            3 if n > 0 => {
                let i = rng.gen_range(0..n);
                let j = (i + rng.gen_range(1..=64)).min(n);
                let chunk = b[i..j].to_vec();
                let at = rng.gen_range(0..=b.len());
                b.splice(at..at, chunk);
            }
            4 => {
                let other = &seeds[rng.gen_range(0..seeds.len())];
                if !other.is_empty() && n > 0 {
                    let (i, j) = (rng.gen_range(0..n), rng.gen_range(0..other.len()));
                    b.truncate(i);
                    b.extend_from_slice(&other[j..]);
                }
            }
            5 if n > 0 => b.truncate(rng.gen_range(0..n)),
            6 if n >= 8 => {
                let at = rng.gen_range(0..=n - 8) & !3;
                let v = EDGES[rng.gen_range(0..EDGES.len())];
                if rng.gen_bool(0.5) {
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                } else {
                    b[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
                }
            }
            _ => {
                let i = rng.gen_range(0..=n);
                let c: u8 = rng.gen();
                b.insert(i, c);
            }
        }
    }
    b
}

/// Runs `target` on `iterations()` mutated inputs (seeded: the same inputs
/// every run); panics with the first input that panicked. Prints one JSON
/// line: the target, inputs, panics, and how many the target accepted.
pub fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8]) -> bool + std::panic::RefUnwindSafe) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x7e57_0000 ^ name.len() as u64);
    let n = iterations();
    let (mut accepted, mut panics) = (0usize, vec![]);
    for s in seeds {
        assert!(std::panic::catch_unwind(|| target(s)).is_ok(), "{name}: a seed panics");
    }
    for _ in 0..n {
        let input = mutate(&mut rng, seeds);
        match std::panic::catch_unwind(|| target(&input)) {
            Ok(ok) => accepted += ok as usize,
            Err(e) => panics.push((input, e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())),
        }
    }
    println!("{{\"fuzz\":\"{name}\",\"inputs\":{n},\"panics\":{},\"accepted\":{accepted}}}", panics.len());
    if let Some((input, msg)) = panics.first() {
        panic!("{name}: {} of {n} inputs panicked; the first ({} bytes): {msg}\n{:?}", panics.len(), input.len(), String::from_utf8_lossy(input));
    }
}
