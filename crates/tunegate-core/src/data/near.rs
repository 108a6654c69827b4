//! Near-duplicate detection: normalised text, shingles, MinHash signatures,
//! LSH banding for candidates, exact Jaccard to confirm.
//!
//! Why this shape: comparing every pair is quadratic (50k examples = 1.25
//! billion pairs); MinHash + LSH finds the pairs likely to be similar in
//! near-linear time, and the exact Jaccard on the shingle sets then confirms
//! each candidate, so the threshold means what it says and no pair is
//! reported on a hash coincidence.
//!
//! The rules, all fixed so results are deterministic across runs and machines:
//! - normalisation: lower case, every non-alphanumeric character becomes a
//!   space, whitespace collapsed (so "Charged TWICE!!" equals "charged twice");
//! - shingles: word 3-shingles for texts of [`SHORT_TEXT_WORDS`] words or
//!   more; character 5-shingles for shorter texts, where a single changed word
//!   would wipe out most word shingles. A pair is compared on word shingles
//!   when both texts are long, else on character shingles;
//! - [`NUM_HASHES`] = 128 MinHash functions from a fixed seed, LSH with 32
//!   bands of 4 rows: a pair at Jaccard 0.8 becomes a candidate with
//!   probability above 0.9999999, a pair at 0.3 with about 0.23;
//! - the default threshold is Jaccard >= [`DEFAULT_NEAR_THRESHOLD`] (0.8), the
//!   value commonly used for near-duplicate removal in training corpora.

use std::collections::{BTreeSet, HashMap};

/// Default Jaccard similarity from which two inputs count as near duplicates.
pub const DEFAULT_NEAR_THRESHOLD: f64 = 0.8;
/// Texts with fewer words than this use character 5-shingles.
pub const SHORT_TEXT_WORDS: usize = 10;
pub const NUM_HASHES: usize = 128;
const BANDS: usize = 32;
const ROWS: usize = NUM_HASHES / BANDS;
const SEED: u64 = 0x7475_6e65_6761_7465; // "tunegate"

/// Lower case, punctuation to spaces, whitespace collapsed.
pub fn normalize_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.extend(c.to_lowercase());
        } else {
            space = true;
        }
    }
    out
}

/// FNV-1a: a fixed, dependency-free 64-bit hash (std's hasher is allowed to
/// change between Rust releases, which would change results).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: turns `x + seed` into a well-mixed hash, one
/// cheap "permutation" per MinHash function.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash_seeds() -> Vec<u64> {
    let mut s = SEED;
    (0..NUM_HASHES)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(s)
        })
        .collect()
}

/// The shingle sets of one normalised text (sorted, de-duplicated hashes).
#[derive(Debug, Clone, Default)]
pub struct Shingles {
    /// Word 3-shingles, for texts of at least [`SHORT_TEXT_WORDS`] words.
    pub words: Option<Vec<u64>>,
    /// Character 5-shingles, for texts under 2 x [`SHORT_TEXT_WORDS`] words
    /// (a short text can only be near a text of similar length).
    pub chars: Option<Vec<u64>>,
}

impl Shingles {
    pub fn of(normalized: &str) -> Shingles {
        if normalized.is_empty() {
            return Shingles::default();
        }
        let words: Vec<&str> = normalized.split(' ').collect();
        let n = words.len();
        let word_sh = (n >= SHORT_TEXT_WORDS).then(|| {
            let mut v: Vec<u64> = words.windows(3).map(|w| fnv1a(w.join(" ").as_bytes())).collect();
            v.sort_unstable();
            v.dedup();
            v
        });
        let char_sh = (n < 2 * SHORT_TEXT_WORDS).then(|| {
            let chars: Vec<char> = normalized.chars().collect();
            let mut v: Vec<u64> = if chars.len() <= 5 {
                vec![fnv1a(normalized.as_bytes())]
            } else {
                chars.windows(5).map(|w| fnv1a(w.iter().collect::<String>().as_bytes())).collect()
            };
            v.sort_unstable();
            v.dedup();
            v
        });
        Shingles { words: word_sh, chars: char_sh }
    }

    /// The exact Jaccard similarity of two texts by the pairing rule: word
    /// shingles when both are long, else character shingles; `None` when the
    /// two cannot be compared (a very short and a very long text).
    pub fn jaccard(&self, other: &Shingles) -> Option<f64> {
        match (&self.words, &other.words, &self.chars, &other.chars) {
            (Some(a), Some(b), _, _) => Some(jaccard_sorted(a, b)),
            (_, _, Some(a), Some(b)) => Some(jaccard_sorted(a, b)),
            _ => None,
        }
    }
}

fn jaccard_sorted(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    inter as f64 / (a.len() + b.len() - inter) as f64
}

fn signature(shingles: &[u64], seeds: &[u64]) -> Vec<u64> {
    seeds.iter().map(|&s| shingles.iter().map(|&x| mix(x.wrapping_add(s))).min().unwrap_or(u64::MAX)).collect()
}

/// The similarity structure of a list of texts.
///
/// Texts equal after normalisation form one *group* (`groups`, `group_of`);
/// near-duplicate relations are between groups (`pairs`), so a text repeated
/// a thousand times costs one comparison, not half a million.
#[derive(Debug, Clone)]
pub struct Similarity {
    /// Indices of the texts of each group, ascending; groups ordered by their
    /// first text.
    pub groups: Vec<Vec<usize>>,
    pub group_of: Vec<usize>,
    /// Near-duplicate group pairs `(a, b, jaccard)` with `a < b`, sorted.
    pub pairs: Vec<(usize, usize, f64)>,
}

impl Similarity {
    /// Builds the structure for `texts` at a Jaccard `threshold`.
    pub fn build(texts: &[String], threshold: f64) -> Similarity {
        // Exact groups: by normalised text; a text that normalises to nothing
        // ("???") is grouped by its trimmed raw text instead.
        let mut key_to_group: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = vec![];
        let mut group_of = Vec::with_capacity(texts.len());
        let mut norms: Vec<String> = vec![];
        for (i, t) in texts.iter().enumerate() {
            let n = normalize_text(t);
            let key = if n.is_empty() { format!("\u{0}raw:{}", t.trim()) } else { n.clone() };
            let g = *key_to_group.entry(key).or_insert_with(|| {
                groups.push(vec![]);
                norms.push(n);
                groups.len() - 1
            });
            groups[g].push(i);
            group_of.push(g);
        }
        let shingles: Vec<Shingles> = norms.iter().map(|n| Shingles::of(n)).collect();
        let seeds = hash_seeds();
        let mut candidates: BTreeSet<(usize, usize)> = BTreeSet::new();
        for words in [true, false] {
            let mut buckets: HashMap<(usize, u64), Vec<usize>> = HashMap::new();
            for (g, sh) in shingles.iter().enumerate() {
                let set = if words { &sh.words } else { &sh.chars };
                let Some(set) = set else { continue };
                let sig = signature(set, &seeds);
                for b in 0..BANDS {
                    let key = sig[b * ROWS..(b + 1) * ROWS].iter().fold(SEED, |h, &x| mix(h ^ x));
                    buckets.entry((b, key)).or_default().push(g);
                }
            }
            for members in buckets.values() {
                for (i, &a) in members.iter().enumerate() {
                    for &b in &members[i + 1..] {
                        candidates.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        let pairs = candidates
            .into_iter()
            .filter_map(|(a, b)| {
                let j = shingles[a].jaccard(&shingles[b])?;
                (j >= threshold).then_some((a, b, j))
            })
            .collect();
        Similarity { groups, group_of, pairs }
    }
}

/// Union-find with path halving and union by size: near-duplicate clusters
/// are the connected components of the "is near" relation.
#[derive(Debug, Clone)]
pub struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind { parent: (0..n).collect(), size: vec![1; n] }
    }

    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    pub fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a;
        self.size[a] += self.size[b];
    }

    /// The components with their members ascending, ordered by first member.
    pub fn components(&mut self) -> Vec<Vec<usize>> {
        let n = self.parent.len();
        let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..n {
            let r = self.find(i);
            by_root.entry(r).or_default().push(i);
        }
        let mut out: Vec<Vec<usize>> = by_root.into_values().collect();
        out.sort_by_key(|c| c[0]);
        out
    }
}

/// Near-duplicate clusters of `texts`: every index appears in exactly one
/// cluster (singletons included), clusters ordered by first index.
pub fn clusters(texts: &[String], threshold: f64) -> Vec<Vec<usize>> {
    let sim = Similarity::build(texts, threshold);
    let mut uf = UnionFind::new(texts.len());
    for g in &sim.groups {
        for &i in &g[1..] {
            uf.union(g[0], i);
        }
    }
    for &(a, b, _) in &sim.pairs {
        uf.union(sim.groups[a][0], sim.groups[b][0]);
    }
    uf.components()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_punctuation_and_spacing() {
        assert_eq!(normalize_text("  I was CHARGED twice!!  "), "i was charged twice");
        assert_eq!(normalize_text("refund... please?"), "refund please");
        assert_eq!(normalize_text("???"), "");
    }

    #[test]
    fn near_duplicates_are_found_and_far_texts_are_not() {
        let texts: Vec<String> = [
            "I was charged twice for my order last week",
            "i was charged twice for my order last week!!",
            "I was charged twice for my order last week please",
            "The app crashes when I open the settings page",
            "Where is my parcel? It has been ten days",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = clusters(&texts, DEFAULT_NEAR_THRESHOLD);
        assert_eq!(c, vec![vec![0, 1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn deterministic() {
        let texts: Vec<String> = (0..200).map(|i| format!("message number {} about order {}", i % 37, i % 11)).collect();
        let a = Similarity::build(&texts, 0.8);
        let b = Similarity::build(&texts, 0.8);
        assert_eq!(a.pairs, b.pairs);
        assert_eq!(a.groups, b.groups);
    }
}
