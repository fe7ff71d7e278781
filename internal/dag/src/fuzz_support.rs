//! Fuzzing bounded in time, for the normal test suite (cargo-fuzz needs nightly): inputs are random bytes and
//! mutations of valid encodings (bit flips, special bytes, truncations, insertions, spliced copies, deletions)
//! from a fixed-seed generator, so a failure reproduces; each target runs at least [`MIN_CASES`] cases and then
//! until its time budget or [`MAX_CASES`]. A panic fails the test with the input that caused it.
//!
//! Shared by the decoders' crates with `#[path]` (a test-only file, not part of any crate's API).

#![allow(dead_code)]

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// Cases every target runs whatever the machine's speed.
pub(crate) const MIN_CASES: usize = 2_000;
/// Cases no target runs more than.
pub(crate) const MAX_CASES: usize = 200_000;
/// The time budget of one target.
pub(crate) const BUDGET: Duration = Duration::from_secs(3);

/// xorshift64*: small, fixed-seed, good enough to pick mutations.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number below `n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Random bytes (one case in eight) or one of `seeds` with one to six mutations.
pub(crate) fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if seeds.is_empty() || rng.below(8) == 0 {
        let len = rng.below(600);
        return rng.bytes(len);
    }
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0x00, 0xff, 0x80, 0x7f, 0x01, rng.next() as u8][rng.below(6)];
            }
            2 => v.truncate(rng.below(len + 1)),
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let extra = rng.bytes(n);
                v.splice(i..i, extra);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = a + rng.below((len - a).min(256) + 1);
                let chunk = v[a..b].to_vec();
                let i = rng.below(len + 1);
                v.splice(i..i, chunk);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = a + rng.below((len - a).min(64) + 1);
                v.drain(a..b);
            }
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

/// Runs `check` on mutated inputs; fails naming the input of the first panic. Returns the cases run.
pub(crate) fn fuzz(name: &str, seed: u64, seeds: &[Vec<u8>], mut check: impl FnMut(&[u8])) -> usize {
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut cases = 0;
    while cases < MAX_CASES && (cases < MIN_CASES || start.elapsed() < BUDGET) {
        let input = mutate(&mut rng, seeds);
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!("{name}: case {cases} panicked ({what}) on input {hex}");
        }
        cases += 1;
    }
    eprintln!("{name}: {cases} cases in {:?}, no panic", start.elapsed());
    cases
}
