//! The per-(block, node) random draw behind rendezvous hashing, computed with integer and basic IEEE-754
//! arithmetic only, so that every platform ranks nodes identically.

use sha2::{Digest, Sha256};

/// A block's placement key: the first 8 bytes (big-endian) of SHA-256 over its CID bytes.
///
/// Hashing the CID (rather than reading its multihash digest) gives a uniform key whatever hash function or
/// codec the CID uses, identity CIDs included. Two distinct CIDs share a key with odds of about 1 in 30 million
/// for a million blocks; [`crate::Placement::assign`] then treats them as one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockKey(pub u64);

impl BlockKey {
    /// The key of the block whose CID (binary form) is `cid`.
    pub fn of(cid: &[u8]) -> Self {
        Self(prefix_u64(&Sha256::digest(cid)))
    }
}

/// A node's key: like a block's, from SHA-256 of its name, so renaming a node is the only way to move its draws.
pub(crate) fn node_key(name: &str) -> u64 {
    prefix_u64(&Sha256::digest(name.as_bytes()))
}

fn prefix_u64(digest: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche, so `block ^ node` (both already SHA-256
/// prefixes) yields independent-looking draws for every pair.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

const TWO_POW_53: u64 = 1 << 53;
const TWO_POW_MINUS_53: f64 = 1.0 / TWO_POW_53 as f64;

/// The draw for one (block, node) pair: `u = m / 2^53` with `m` in `1..=2^53`, so `u` is in (0, 1].
#[derive(Clone, Copy)]
pub(crate) struct Draw(u64);

impl Draw {
    #[inline]
    pub(crate) fn new(block: u64, node: u64) -> Self {
        Self((fmix64(block ^ node) >> 11) + 1)
    }

    /// `1 - u`, exactly. A lower bound of [`Draw::exponential`] that costs one conversion, which lets the ranking
    /// skip the logarithm for nodes that cannot make the top.
    #[inline]
    pub(crate) fn lower_bound(self) -> f64 {
        // Below 2^53, so exact; through i64 because x86 converts signed integers in one instruction.
        (TWO_POW_53 - self.0) as i64 as f64 * TWO_POW_MINUS_53
    }

    /// `-ln(u)`: an Exp(1) variable. Never below [`Draw::lower_bound`] (the `max` guards rounding in the series,
    /// so skipping on the bound can never change a ranking).
    #[inline]
    pub(crate) fn exponential(self) -> f64 {
        (-ln(self.0 as i64 as f64 * TWO_POW_MINUS_53)).max(self.lower_bound())
    }
}

/// Natural logarithm of a positive normal `x`, from `+ - * /` alone.
///
/// `f64::ln` calls the platform's libm, which is not required to round identically everywhere; a placement that
/// differed in the last bit between an x86 and an ARM node would make them disagree on who holds a block.
/// Accuracy here is a few ulps, far more than ranking needs; identity across machines is the point.
pub(crate) fn ln(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const SQRT_2: f64 = std::f64::consts::SQRT_2;
    const MANTISSA: u64 = (1 << 52) - 1;
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // x = f * 2^exponent with f in [1, 2), then moved to [sqrt(1/2), sqrt(2)) so the series below converges fast.
    let mut f = f64::from_bits((bits & MANTISSA) | (1023 << 52));
    if f > SQRT_2 {
        f *= 0.5;
        exponent += 1;
    }
    // ln f = 2 atanh(z) = 2 (z + z^3/3 + z^5/5 + ...), |z| <= 0.172; eleven terms reach 1e-17.
    let z = (f - 1.0) / (f + 1.0);
    let z2 = z * z;
    let mut series = 2.0 / 23.0;
    for k in (0..11).rev() {
        series = series * z2 + 2.0 / (2 * k + 1) as f64;
    }
    exponent as f64 * LN_2 + z * series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_matches_libm_closely() {
        let mut worst: f64 = 0.0;
        for i in 1..100_000u64 {
            let x = fmix64(i) as f64 / u64::MAX as f64 + 1e-300;
            let (ours, libm) = (ln(x), x.ln());
            worst = worst.max((ours - libm).abs() / libm.abs().max(1e-300));
        }
        assert!(worst < 1e-14, "worst relative error {worst}");
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn exponential_never_below_its_bound() {
        for i in 0..100_000u64 {
            let draw = Draw::new(fmix64(i), 0x1234);
            assert!(draw.exponential() >= draw.lower_bound());
        }
        // The extremes: u = 1 and u = 2^-53.
        assert_eq!(Draw(TWO_POW_53).exponential(), 0.0);
        assert!((Draw(1).exponential() - 53.0 * std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn block_key_is_a_sha256_prefix() {
        // SHA-256("") = e3b0c442 98fc1c14 ...
        assert_eq!(BlockKey::of(b""), BlockKey(0xe3b0_c442_98fc_1c14));
    }
}
