//! Deterministic workloads: a seeded PRNG, a Zipf-like sampler and a scattering permutation,
//! combined into a pre-generated list of transfer picks.
//!
//! Everything here is generated before any timing starts, so the measured loops only read a
//! flat array. The same seed always gives the same picks, on every machine, which lets two runs
//! (or two scenarios of one run) be compared on identical work.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, passes BigCrush, and trivially seeded from
/// any `u64`. Statistical quality beyond that does not matter for choosing benchmark accounts.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// A uniform float in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A value in [0, bound) by multiply-shift; the bias (below 2^-32 for 32-bit bounds) is
    /// irrelevant for a benchmark workload.
    pub fn below(&mut self, bound: u32) -> u32 {
        assert!(bound > 0);
        ((u64::from(self.next_u64() as u32) * u64::from(bound)) >> 32) as u32
    }
}

/// The SplitMix64 finaliser: a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Samples ranks 0..n (rank r + 1 in the usual 1-based notation) with probability proportional
/// to 1 / (r + 1)^s, by inverting a precomputed cumulative table with a binary search.
///
/// f64 is fine here: it shapes which accounts are picked, it never touches money.
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// Panics on an exponent that is negative or not finite, or on zero ranks: the CLI checks
    /// both before calling.
    pub fn new(ranks: u32, exponent: f64) -> Zipf {
        assert!(ranks > 0, "a Zipf distribution needs at least one rank");
        assert!(
            exponent.is_finite() && exponent >= 0.0,
            "Zipf exponent must be finite and >= 0"
        );
        let mut total = 0.0;
        let cumulative = (1..=ranks)
            .map(|rank| {
                total += f64::from(rank).powf(-exponent);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    pub fn ranks(&self) -> u32 {
        // Built from a u32 count of ranks.
        self.cumulative.len() as u32
    }

    /// A 0-based rank: 0 is the most popular.
    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let total = self.cumulative[self.cumulative.len() - 1];
        let target = rng.next_f64() * total;
        let rank = self.cumulative.partition_point(|&c| c <= target);
        // Rounding can put `target` at the very top; clamp to the last rank.
        rank.min(self.cumulative.len() - 1) as u32
    }
}

/// A uniformly random bijection of 0..n (Fisher-Yates), so that popular ranks land on
/// scattered account indexes instead of a few adjacent cache lines.
pub fn permutation(n: u32, rng: &mut SplitMix64) -> Vec<u32> {
    let mut items: Vec<u32> = (0..n).collect();
    for i in (1..items.len()).rev() {
        // i + 1 <= n fits in u32.
        let j = rng.below(i as u32 + 1) as usize;
        items.swap(i, j);
    }
    items
}

/// One pre-generated transfer: customer indexes (0-based) and the amount in whole IDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub from: u32,
    pub to: u32,
    pub amount_idr: u32,
}

/// The largest amount one benchmark transfer moves, in whole IDR. Small next to each account's
/// opening balance, so nearly every transfer is accepted even on the hottest account.
pub const PICK_AMOUNT_IDR_MAX: u32 = 100_000;

/// How often `to` is redrawn when it equals `from` before falling back to a neighbour rank;
/// keeps generation bounded even for two accounts and a steep exponent.
const REDRAWS_MAX: u32 = 64;

#[derive(Clone, Copy, Debug)]
pub struct WorkloadOptions {
    pub accounts: u32,
    pub transfers: u64,
    pub zipf_exponent: f64,
    pub seed: u64,
}

/// Generates `transfers` picks over `accounts` customers: both sides Zipf-distributed by rank,
/// ranks scattered by a seeded permutation, and `from != to`.
pub fn generate_picks(options: WorkloadOptions) -> Vec<Pick> {
    assert!(
        options.accounts >= 2,
        "transfers need two distinct accounts"
    );
    let mut rng = SplitMix64::new(options.seed);
    let zipf = Zipf::new(options.accounts, options.zipf_exponent);
    let scatter = permutation(options.accounts, &mut rng);
    (0..options.transfers)
        .map(|_| {
            let (from, to) = pick_pair(&zipf, &mut rng);
            Pick {
                from: scatter[from as usize],
                to: scatter[to as usize],
                amount_idr: 1 + rng.below(PICK_AMOUNT_IDR_MAX),
            }
        })
        .collect()
}

/// Two distinct ranks, each Zipf-distributed, in random order.
///
/// Redrawing `to` until it differs from `from` makes a hot rank a little likelier to send than
/// to receive (it cannot receive from itself); over millions of transfers that drift would
/// drain the hottest accounts. A fair coin for the direction makes both sides identically
/// distributed, so balances only random-walk around their opening value.
fn pick_pair(zipf: &Zipf, rng: &mut SplitMix64) -> (u32, u32) {
    let first = zipf.sample(rng);
    let mut second = (first + 1) % zipf.ranks();
    for _ in 0..REDRAWS_MAX {
        let candidate = zipf.sample(rng);
        if candidate != first {
            second = candidate;
            break;
        }
    }
    match rng.next_u64() & 1 {
        0 => (first, second),
        _ => (second, first),
    }
}

/// How many distinct customers appear on either side of the picks.
pub fn distinct_accounts(picks: &[Pick], accounts: u32) -> u64 {
    let mut seen = vec![0u64; (accounts as usize).div_ceil(64)];
    for pick in picks {
        for index in [pick.from, pick.to] {
            seen[index as usize / 64] |= 1 << (index % 64);
        }
    }
    seen.iter().map(|word| u64::from(word.count_ones())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_toward_low_ranks() {
        // With s = 1 over 10 000 ranks, rank 1 should be drawn about 1000x as often as rank 1000.
        let zipf = Zipf::new(10_000, 1.0);
        let mut rng = SplitMix64::new(7);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..200_000 {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        let top = counts[0];
        let thousandth = counts[999];
        assert!(
            top > 15_000 && top < 25_000,
            "rank 1 drawn {top} times, expected about 20 000"
        );
        assert!(
            top > 100 * thousandth.max(1),
            "rank 1: {top}, rank 1000: {thousandth}"
        );
    }

    #[test]
    fn zipf_with_exponent_zero_is_uniform() {
        // s = 0 gives every rank weight 1: no rank should stand out.
        let zipf = Zipf::new(10, 0.0);
        let mut rng = SplitMix64::new(3);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "counts {counts:?}"
        );
    }

    #[test]
    fn picks_are_deterministic_per_seed_and_never_self_transfers() {
        // Same seed, same picks; another seed, other picks; from != to even for two accounts.
        let options = WorkloadOptions {
            accounts: 1000,
            transfers: 5000,
            zipf_exponent: 1.0,
            seed: 42,
        };
        let first = generate_picks(options);
        assert_eq!(first, generate_picks(options));
        assert_ne!(
            first,
            generate_picks(WorkloadOptions {
                seed: 43,
                ..options
            })
        );
        assert!(
            first
                .iter()
                .all(|p| p.from != p.to && p.from < 1000 && p.to < 1000)
        );
        assert!(
            first
                .iter()
                .all(|p| (1..=PICK_AMOUNT_IDR_MAX).contains(&p.amount_idr))
        );
        let steep = WorkloadOptions {
            accounts: 2,
            transfers: 1000,
            zipf_exponent: 8.0,
            seed: 1,
        };
        assert!(generate_picks(steep).iter().all(|p| p.from != p.to));
    }

    #[test]
    fn hot_ranks_send_as_often_as_they_receive() {
        // Without the direction coin, rank 1 of 100 at s = 1 sends about 20 % more than it
        // receives; with it, the two counts agree within 2 % (sampling noise is about 0.3 %).
        let zipf = Zipf::new(100, 1.0);
        let mut rng = SplitMix64::new(11);
        let (mut sent, mut received) = (0i64, 0i64);
        for _ in 0..1_000_000 {
            let (from, to) = pick_pair(&zipf, &mut rng);
            sent += i64::from(from == 0);
            received += i64::from(to == 0);
        }
        assert!(
            (sent - received).abs() < sent / 50,
            "rank 1 sent {sent}, received {received}"
        );
    }

    #[test]
    fn permutation_is_a_bijection_that_moves_things() {
        // Every index appears exactly once, and the order is not the identity.
        let mut rng = SplitMix64::new(9);
        let scatter = permutation(100_000, &mut rng);
        let mut seen = vec![false; scatter.len()];
        for &index in &scatter {
            assert!(!seen[index as usize], "index {index} appears twice");
            seen[index as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        let fixed = scatter
            .iter()
            .enumerate()
            .filter(|&(i, &v)| i as u32 == v)
            .count();
        assert!(fixed < 10, "{fixed} fixed points: barely shuffled");
    }

    #[test]
    fn distinct_accounts_counts_both_sides_once() {
        // Accounts 0, 1 and 5 appear; 1 appears twice but counts once.
        let picks = [
            Pick {
                from: 0,
                to: 1,
                amount_idr: 1,
            },
            Pick {
                from: 1,
                to: 5,
                amount_idr: 1,
            },
        ];
        assert_eq!(distinct_accounts(&picks, 70), 3);
    }
}
