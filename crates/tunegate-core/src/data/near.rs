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
//!
//! Similar is not the same case. Real data is full of look-alikes: addresses
//! that differ in the house number, one question template over many
//! products, the same sentence about different people. Their shingles
//! overlap as much as a true duplicate's, but the words that differ carry the
//! answer. So a pair above the threshold is a near duplicate only when
//! [`same_case`] holds: the words that differ between the two texts (outside
//! their longest common subsequence) change their form, never their content:
//! case, spacing and punctuation are already gone; a typo pairs off with the
//! word it misspells; what is left may only be filler added or dropped
//! (`please`, `re`, `the`: [`FILLER`]), never a word that replaces another,
//! holds a digit or a comparison sign, is capitalised inside the raw text (a
//! name), or occurs in either case's expected output.

use std::collections::{BTreeSet, HashMap, HashSet};

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

/// Comparison signs, kept as words when deciding whether two inputs are the
/// same case: in a catalogue "packings of <= 1 kg" and "> 1 kg" are two
/// products, though their words are the same.
const SIGNS: &[char] = &['<', '>', '=', '≤', '≥'];

/// [`normalize_text`] that keeps runs of comparison signs as words: the text
/// that decides what is the same case (exact groups, [`same_case`]).
pub fn case_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev = ' '; // ' ' separator, 'a' word, '<' signs
    for c in s.chars() {
        let kind = if c.is_alphanumeric() {
            'a'
        } else if SIGNS.contains(&c) {
            '<'
        } else {
            ' '
        };
        if kind != ' ' {
            if kind != prev && !out.is_empty() {
                out.push(' ');
            }
            if kind == 'a' {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        }
        prev = kind;
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

    /// The exact Jaccard similarity of two texts: on word shingles when both
    /// are long, on character shingles when both are short, the higher of the
    /// two in between; `None` when the two cannot be compared (a very short
    /// and a very long text).
    pub fn jaccard(&self, other: &Shingles) -> Option<f64> {
        let words = match (&self.words, &other.words) {
            (Some(a), Some(b)) => Some(jaccard_sorted(a, b)),
            _ => None,
        };
        let chars = match (&self.chars, &other.chars) {
            (Some(a), Some(b)) => Some(jaccard_sorted(a, b)),
            _ => None,
        };
        // Both kinds where both exist (10 to 19 words): the higher one, so a
        // typo, which breaks three word shingles but few character ones,
        // does not hide a duplicate.
        match (words, chars) {
            (Some(w), Some(c)) => Some(w.max(c)),
            (w, c) => w.or(c),
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

/// The tokens of a raw text that are names: capitalised, and not the first
/// word of the text or of a sentence (where every word is capitalised).
fn name_tokens(raw: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut sentence_start = true;
    let mut word = String::new();
    let flush = |word: &mut String, sentence_start: &mut bool, out: &mut HashSet<String>| {
        if word.is_empty() {
            return;
        }
        let first = word.chars().next().unwrap_or(' ');
        if first.is_uppercase() && !*sentence_start {
            out.insert(word.to_lowercase());
        }
        *sentence_start = false;
        word.clear();
    };
    for c in raw.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut sentence_start, &mut out);
            if matches!(c, '.' | '!' | '?' | '\n' | ':' | ';') {
                sentence_start = true;
            }
        }
    }
    flush(&mut word, &mut sentence_start, &mut out);
    out
}

/// Optimal string alignment distance (Levenshtein plus adjacent
/// transpositions), stopping early once it exceeds `max`.
fn edit_distance(a: &str, b: &str, max: usize) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > max {
        return max + 1;
    }
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=b.len() {
        d[0][j] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// A misspelling of the same word: letters only, at least 4 of them, the
/// same first letter, one edit apart (two from 8 letters on), and neither
/// word inside the other (`bleached` / `unbleached` is a prefix, not a typo).
fn is_typo(x: &str, y: &str) -> bool {
    let n = x.chars().count().min(y.chars().count());
    let letters = |s: &str| s.chars().all(char::is_alphabetic);
    n >= 4 && letters(x) && letters(y) && x.chars().next() == y.chars().next() && !x.contains(y) && !y.contains(x) && edit_distance(x, y, 2) <= if n >= 8 { 2 } else { 1 }
}

/// Words whose addition or removal changes the form of a message, not what
/// it says: greetings, politeness, reply prefixes, articles and fillers.
/// Any other word added ("photovoltaic luminaires", "not made up", "right
/// testis") makes another case. Negations are deliberately absent.
const FILLER: &[&str] = &[
    "a", "an", "the", "please", "pls", "plz", "kindly", "thanks", "thank", "thx", "you", "hi", "hello", "hey", "dear", "re", "fw", "fwd", "just", "really", "very",
    "so", "also", "too", "again", "well", "oh", "ok", "okay", "um", "uh", "lol", "asap", "urgent", "urgently", "now", "here", "there", "and", "or", "of", "to", "for",
    "in", "on", "at", "is", "are", "was", "be", "i", "me", "my", "we", "us", "our", "it", "this", "that",
];

/// The words of `a` and of `b` outside their longest common subsequence.
fn diff_words(a: &[&str], b: &[&str]) -> (Vec<String>, Vec<String>) {
    let (n, m) = (a.len(), b.len());
    let mut l = vec![vec![0u16; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            l[i][j] = if a[i] == b[j] { l[i + 1][j + 1] + 1 } else { l[i + 1][j].max(l[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut oa, mut ob) = (0, 0, vec![], vec![]);
    while i < n && j < m {
        if a[i] == b[j] {
            i += 1;
            j += 1;
        } else if l[i + 1][j] >= l[i][j + 1] {
            oa.push(a[i].to_string());
            i += 1;
        } else {
            ob.push(b[j].to_string());
            j += 1;
        }
    }
    oa.extend(a[i..].iter().map(|s| s.to_string()));
    ob.extend(b[j..].iter().map(|s| s.to_string()));
    (oa, ob)
}

/// Whether two texts (raw, as written) are the same case: the words that
/// differ between them only change the form. See the module docs for the
/// rule; `answer` holds the normalised tokens of both cases' expected
/// outputs.
pub fn same_case(a: &str, b: &str, answer: &HashSet<String>) -> bool {
    let (na, nb) = (case_text(a), case_text(b));
    if na == nb {
        return true;
    }
    // The words of each text outside their longest common subsequence:
    // what one says that the other does not, in order.
    let (ta, tb): (Vec<&str>, Vec<&str>) = (na.split(' ').collect(), nb.split(' ').collect());
    let (mut only_a, mut only_b) = diff_words(&ta, &tb);
    // Typos pair off first: a misspelt word is the same word.
    let mut i = 0;
    while i < only_a.len() {
        match only_b.iter().position(|y| is_typo(&only_a[i], y)) {
            Some(j) => {
                only_a.remove(i);
                only_b.remove(j);
            }
            None => i += 1,
        }
    }
    if !only_a.is_empty() && !only_b.is_empty() {
        // A word replaced by another: the texts say different things.
        return false;
    }
    // What is left was added to one text: form only when it is filler.
    let names: HashSet<String> = name_tokens(a).into_iter().chain(name_tokens(b)).collect();
    only_a.iter().chain(&only_b).all(|t| FILLER.contains(&t.as_str()) && !answer.contains(t) && !names.contains(t))
}

/// The normalised tokens of a text, as a set (for [`same_case`]'s `answer`).
pub fn token_set(text: &str) -> HashSet<String> {
    normalize_text(text).split(' ').filter(|t| !t.is_empty()).map(str::to_string).collect()
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
    /// Builds the structure for `texts` at a Jaccard `threshold`, with no
    /// expected outputs to consult (see [`Similarity::build_cases`]).
    pub fn build(texts: &[String], threshold: f64) -> Similarity {
        Self::build_cases(texts, &[], threshold)
    }

    /// Builds the structure for cases: `texts` their inputs, `answers` their
    /// expected outputs as text (same order; may be empty). A pair above the
    /// threshold is kept only when [`same_case`] holds for the two groups'
    /// first texts, with the answer tokens of every member of both.
    pub fn build_cases(texts: &[String], answers: &[String], threshold: f64) -> Similarity {
        // Exact groups: by normalised text; a text that normalises to nothing
        // ("???") is grouped by its trimmed raw text instead.
        let mut key_to_group: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = vec![];
        let mut group_of = Vec::with_capacity(texts.len());
        let mut norms: Vec<String> = vec![];
        for (i, t) in texts.iter().enumerate() {
            let n = normalize_text(t);
            let key = if n.is_empty() { format!("\u{0}raw:{}", t.trim()) } else { case_text(t) };
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
        let answer_tokens = |g: usize| -> HashSet<String> { groups[g].iter().filter_map(|&i| answers.get(i)).flat_map(|a| token_set(a)).collect() };
        let pairs = candidates
            .into_iter()
            .filter_map(|(a, b)| {
                let j = shingles[a].jaccard(&shingles[b])?;
                if j < threshold {
                    return None;
                }
                let answer: HashSet<String> = answer_tokens(a).into_iter().chain(answer_tokens(b)).collect();
                same_case(&texts[groups[a][0]], &texts[groups[b][0]], &answer).then_some((a, b, j))
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

/// Near-duplicate clusters of cases (`texts` their inputs, `answers` their
/// expected outputs as text, or empty): every index appears in exactly one
/// cluster (singletons included), clusters ordered by first index.
pub fn clusters(texts: &[String], answers: &[String], threshold: f64) -> Vec<Vec<usize>> {
    let sim = Similarity::build_cases(texts, answers, threshold);
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
        let c = clusters(&texts, &[], DEFAULT_NEAR_THRESHOLD);
        assert_eq!(c, vec![vec![0, 1, 2], vec![3], vec![4]]);
    }

    fn pair_clusters(a: &str, b: &str, answers: &[&str]) -> bool {
        let texts = vec![a.to_string(), b.to_string()];
        let answers: Vec<String> = answers.iter().map(|s| s.to_string()).collect();
        clusters(&texts, &answers, DEFAULT_NEAR_THRESHOLD).len() == 1
    }

    #[test]
    fn look_alikes_are_not_the_same_case() {
        let families = [
            // Addresses that differ in the house number.
            ("2296 COMPASS POINTE SOUTH WYND NE LELAND 28451", "2415 COMPASS POINTE SOUTH WYND NE LELAND 28451"),
            ("104 South Boulevard, Evanston", "704 South Boulevard, Evanston"),
            // One question template over different products.
            ("How much does Plan-D4 cost per month?", "How much does Plan-G1 cost per month?"),
            ("How much does the kitchen blender cost per month?", "How much does the kitchen toaster cost per month?"),
            // A catalogue: the same words, another range.
            ("Coconut oil fractions, in immediate packings of <= 1 kg", "Coconut oil fractions, in immediate packings of > 1 kg"),
            ("Woven fabrics of cotton, in three-thread or four-thread twill, bleached", "Woven fabrics of cotton, in three-thread or four-thread twill, unbleached"),
            ("Carpets of knotted pile construction, made up, of wool or fine animal hair", "Carpets of knotted pile construction, not made up, of wool or fine animal hair"),
            ("Sawing machines for working metals (excl. machines for working in the hand and circular saws)", "Circular saws for working metals (excl. machines for working in the hand)"),
            ("Photovoltaic luminaires and lighting fittings, solely for LED light sources", "Luminaires and lighting fittings, solely for LED light sources"),
            // The same sentence about different people.
            ("Alice Smith moved to Denver last spring with her family", "Maria Lopez moved to Denver last spring with her family"),
            ("The refund was sent to Alice on Monday morning", "The refund was sent to Maria on Monday morning"),
            ("Please call me back, this is Jonathan", "Please call me back, this is"),
        ];
        for (a, b) in families {
            let sim = Shingles::of(&normalize_text(a)).jaccard(&Shingles::of(&normalize_text(b))).unwrap_or(0.0);
            assert!(!same_case(a, b, &HashSet::new()), "{a:?} vs {b:?} (Jaccard {sim:.2})");
            assert!(!pair_clusters(a, b, &[]), "{a:?} vs {b:?}");
        }
        // A content word added makes another case; filler does not, unless
        // it is (part of) an expected output.
        assert!(!same_case("I have a question about my billing address", "I have a question about my address", &HashSet::new()));
        let (a, b) = ("I have a question about my postal address urgent", "I have a question about my postal address");
        assert!(same_case(a, b, &HashSet::new()));
        assert!(!pair_clusters(a, b, &["urgent", "later"]));
    }

    #[test]
    fn true_near_duplicates_still_are() {
        let pairs = [
            ("317 conniston road west palm beach", "317 Conniston Road, West Palm Beach"),
            ("I was charged TWICE for my order!!", "i was charged twice for my order"),
            ("I was charged twice for my annual subscription order and I would like a refund", "I was chraged twice for my annual subscription order and I would like a refund"),
            ("The parcel arrived damaged and the box was soaked", "The parcel arrived damaged and the box was soaked please"),
            ("Where is my package, it has been ten days since the order shipped", "Where is my pakage it has been ten days since the order shipped"),
        ];
        for (a, b) in pairs {
            assert!(same_case(a, b, &HashSet::new()), "{a:?} vs {b:?}");
            assert!(pair_clusters(a, b, &["shipping"]), "{a:?} vs {b:?}");
        }
        assert_eq!(edit_distance("charged", "chraged", 2), 1);
        assert!(!is_typo("d4", "g1") && !is_typo("blender", "toaster") && is_typo("package", "pakage") && !is_typo("bleached", "unbleached"));
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
