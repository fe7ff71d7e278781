//! Fuzzing bounded in time, for the normal test suite, driven by proptest (cargo-fuzz needs nightly): inputs are
//! random bytes and valid encodings with one to six edits (bit flips, special bytes, truncations, insertions, copied
//! spans, deletions), generated from a fixed seed so a failure reproduces, and shrunk to a small failing input when
//! one panics. Each target runs at least [`MIN_CASES`] cases and then until its time budget ([`budget`]) or
//! [`MAX_CASES`]. A panic fails the test with the (shrunk) input that caused it, in hex.
//!
//! Shared by the decoders' crates with `#[path]` (a test-only file, not part of any crate's API).

#![allow(dead_code)]

use std::cell::RefCell;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// Cases every target runs whatever the machine's speed.
pub(crate) const MIN_CASES: usize = 2_000;
/// Cases no target runs more than.
pub(crate) const MAX_CASES: usize = 200_000;
/// Cases per proptest run; runs follow each other, each from its own fixed seed, until the budget is spent.
const CASES_PER_RUN: usize = 1_000;

/// The time budget of one target: `XNODE_FUZZ_SECONDS` (default 3), so a longer campaign needs no code change.
pub(crate) fn budget() -> Duration {
    std::env::var("XNODE_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64)
}

/// xorshift64*: small and fixed-seed, for tests that build their own inputs around the fuzzer.
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

/// One change to a valid encoding. Positions are proptest `Index`es, scaled to the input's length when applied.
#[derive(Clone, Debug)]
enum Edit {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    CopySpan { from: Index, len: usize, to: Index },
    Delete(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let special = prop_oneof![Just(0x00u8), Just(0xff), Just(0x80), Just(0x7f), Just(0x01), any::<u8>()];
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Edit::FlipBit(i, bit)),
        (any::<Index>(), special).prop_map(|(i, b)| Edit::SetByte(i, b)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..=16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 0usize..=256, any::<Index>()).prop_map(|(from, len, to)| Edit::CopySpan { from, len, to }),
        (any::<Index>(), 1usize..=64).prop_map(|(i, n)| Edit::Delete(i, n)),
    ]
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = v.len();
        match e {
            Edit::FlipBit(i, bit) if len > 0 => {
                let i = i.index(len);
                v[i] ^= 1 << bit;
            }
            Edit::SetByte(i, b) if len > 0 => {
                let i = i.index(len);
                v[i] = *b;
            }
            Edit::Truncate(i) => v.truncate(i.index(len + 1)),
            Edit::Insert(i, bytes) => {
                let i = i.index(len + 1);
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::CopySpan { from, len: n, to } if len > 0 => {
                let a = from.index(len);
                let chunk = v[a..(a + n).min(len)].to_vec();
                let i = to.index(len + 1);
                v.splice(i..i, chunk);
            }
            Edit::Delete(i, n) if len > 0 => {
                let a = i.index(len);
                v.drain(a..(a + n).min(len));
            }
            _ => {}
        }
    }
    v
}

/// Random bytes (one case in eight) or one of `seeds` with one to six edits.
fn input(seeds: &[Vec<u8>]) -> BoxedStrategy<Vec<u8>> {
    let random = prop::collection::vec(any::<u8>(), 0..600);
    if seeds.is_empty() {
        return random.boxed();
    }
    let seeds = seeds.to_vec();
    let mutated = (any::<Index>(), prop::collection::vec(edit(), 1..=6))
        .prop_map(move |(pick, edits)| apply(seeds[pick.index(seeds.len())].clone(), &edits));
    prop_oneof![1 => random, 7 => mutated].boxed()
}

/// Runs `check` on generated inputs; fails naming the shrunk input of the first panic. Returns the cases run.
pub(crate) fn fuzz(name: &str, seed: u64, seeds: &[Vec<u8>], check: impl FnMut(&[u8])) -> usize {
    // Shrinking re-runs a failing case hundreds of times: keep the default hook's message and backtrace for each
    // out of the log (each test runs in its own process under nextest), and report the shrunk input once below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let outcome = run(seed, seeds, check);
    std::panic::set_hook(hook);
    match outcome {
        Ok(cases) => {
            eprintln!("{name}: {cases} cases in {:?}, no panic", start.elapsed());
            cases
        }
        Err(failure) => panic!("{name}: {failure}"),
    }
}

/// Proptest runs of [`CASES_PER_RUN`] cases, each from its own fixed seed, until the budget is spent.
fn run(seed: u64, seeds: &[Vec<u8>], check: impl FnMut(&[u8])) -> Result<usize, String> {
    let strategy = input(seeds);
    let check = RefCell::new(check);
    let (start, budget) = (Instant::now(), budget());
    let mut cases = 0;
    let mut run = 0u64;
    while cases < MAX_CASES && (cases < MIN_CASES || start.elapsed() < budget) {
        let config = Config {
            cases: CASES_PER_RUN as u32,
            failure_persistence: None,
            max_shrink_iters: 4_096,
            max_shrink_time: 30_000,
            ..Config::default()
        };
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&run.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
        let outcome = runner.run(&strategy, |input| {
            (check.borrow_mut())(&input);
            Ok::<(), TestCaseError>(())
        });
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                return Err(format!("run {run} panicked ({why}) on input (shrunk) {hex}"));
            }
            Err(TestError::Abort(why)) => return Err(format!("proptest aborted: {why}")),
        }
        cases += CASES_PER_RUN;
        run += 1;
    }
    Ok(cases)
}
