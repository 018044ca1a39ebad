//! A small, seeded mutator for exercising decoders with hostile bytes: P2PLane's fuzz tests
//! run every decoder of untrusted input over a million of its outputs, and a decoder of
//! yours can be tested the same way.
//!
//! ```
//! use p2plane_codec::fuzz::Mutator;
//!
//! let corpus = vec![vec![0x05, 0xa1, 0x62, 0x4f, 0x6b, 0x07]];
//! let mut mutator = Mutator::new(42);
//! for _ in 0..1000 {
//!     let input = mutator.mutate(&corpus);
//!     assert!(input.len() <= 4 * 1024);
//! }
//! ```

/// Produces inputs from a corpus of seeds by flipping bits, writing boundary values,
/// inserting, deleting, duplicating and truncating bytes, and splicing seeds together. The
/// same seed number gives the same sequence of inputs.
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

/// The longest input [`Mutator::mutate`] returns.
pub const MAX_INPUT: usize = 4 * 1024;

const INTERESTING: [u8; 9] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x20, 0x1b];

impl Mutator {
    /// A mutator whose sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    /// The next pseudo-random number (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// A new input: a mutation of a random seed of `corpus` (random bytes if it is empty).
    pub fn mutate(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut input = if corpus.is_empty() {
            Vec::new()
        } else {
            corpus[self.below(corpus.len())].clone()
        };
        for _ in 0..=self.below(4) {
            let len = input.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    input[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    input[i] = INTERESTING[self.below(INTERESTING.len())];
                }
                2 => {
                    let i = self.below(len + 1);
                    let byte = self.next_u64() as u8;
                    input.insert(i, byte);
                }
                3 if len > 0 => {
                    let start = self.below(len);
                    let end = (start + 1 + self.below(8)).min(len);
                    input.drain(start..end);
                }
                4 if len > 0 => {
                    let start = self.below(len);
                    let end = (start + 1 + self.below(16)).min(len);
                    let copy = input[start..end].to_vec();
                    let at = self.below(input.len() + 1);
                    input.splice(at..at, copy);
                }
                5 => input.truncate(self.below(len + 1)),
                6 if !corpus.is_empty() => {
                    let other = &corpus[self.below(corpus.len())];
                    let cut = self.below(other.len() + 1);
                    input.truncate(self.below(len + 1));
                    input.extend_from_slice(&other[cut..]);
                }
                _ => {
                    for _ in 0..=self.below(8) {
                        input.push(self.next_u64() as u8);
                    }
                }
            }
        }
        input.truncate(MAX_INPUT);
        input
    }
}

/// The seeds stored in `dir` (every file is one), added to `seeds`.
pub fn load_corpus(dir: &std::path::Path, mut seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            if let Ok(bytes) = std::fs::read(&file) {
                seeds.push(bytes);
            }
        }
    }
    seeds
}
