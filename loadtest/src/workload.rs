//! What each operation does: a seeded PRNG, a Zipf-like account picker over a scattering
//! permutation, and the operation mix. Operation `i` is a pure function of (seed, i), so any
//! operation can be regenerated, two runs with one seed send the same requests, and the
//! scheduler thread never has to generate anything.
//!
//! f64 shapes which accounts and operations are picked; it never touches money. Amounts are
//! whole cents drawn as integers and turned into exact decimals.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::options::{Mix, Options};

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable from any u64, good enough for picking
/// accounts.
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

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..bound` (bound > 0) by multiply-shift.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// The SplitMix64 finaliser: a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ranks 0..n drawn with probability proportional to 1 / (rank + 1)^s by inverting a
/// cumulative table. s = 0 is uniform.
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(ranks: u32, exponent: f64) -> Zipf {
        assert!(ranks > 0, "a Zipf distribution needs at least one rank");
        assert!(
            exponent.is_finite() && exponent >= 0.0,
            "the exponent must be finite and >= 0"
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
        self.cumulative.len() as u32
    }

    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let last = self.cumulative.len() - 1;
        let target = rng.next_f64() * self.cumulative[last];
        self.cumulative.partition_point(|&c| c <= target).min(last) as u32
    }
}

/// A seeded uniform bijection of 0..n (Fisher-Yates): hot ranks land on scattered accounts.
pub fn permutation(n: u32, rng: &mut SplitMix64) -> Vec<u32> {
    let mut items: Vec<u32> = (0..n).collect();
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
    items
}

/// One movement between two of the run's accounts (indexes into the run's account list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    pub from: u32,
    pub to: u32,
    pub amount: Decimal,
}

/// One operation of the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// POST /v1/transfers.
    Transfer(Movement),
    /// POST /v1/holds (from → to), then POST /v1/holds/{id}/commit (the whole amount) or
    /// /release.
    Hold { movement: Movement, commit: bool },
    /// POST /v1/transfers/batch.
    Batch(Vec<Movement>),
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Transfer(_) => OpKind::Transfer,
            Op::Hold { .. } => OpKind::Hold,
            Op::Batch(_) => OpKind::Batch,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Transfer,
    Hold,
    Batch,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Transfer => "transfer",
            OpKind::Hold => "hold",
            OpKind::Batch => "batch",
        }
    }
}

/// Redraws of a destination equal to the source before taking the next rank instead.
const REDRAWS_MAX: u32 = 64;

/// Generates operation `i` from the seed alone.
#[derive(Clone, Debug)]
pub struct Workload {
    seed: u64,
    zipf: Zipf,
    scatter: Vec<u32>,
    mix: Mix,
    hold_commit_ratio: f64,
    amount_min_cents: u64,
    amount_max_cents: u64,
    batch_size: Option<u32>,
}

impl Workload {
    pub fn new(options: &Options, seed: u64) -> Workload {
        let mut rng = SplitMix64::new(mix64(seed ^ 0x5eed_5ca7_7e12_0000));
        let cents = |amount: Decimal| -> u64 {
            // Options::validate checked: positive, at most 2 decimal places.
            (amount * Decimal::ONE_HUNDRED)
                .trunc()
                .to_u64()
                .unwrap_or(u64::MAX)
        };
        Workload {
            seed,
            zipf: Zipf::new(options.accounts, options.zipf),
            scatter: permutation(options.accounts, &mut rng),
            mix: options.mix,
            hold_commit_ratio: options.hold_commit_ratio,
            amount_min_cents: cents(options.amount_min),
            amount_max_cents: cents(options.amount_max),
            batch_size: options.batch_size,
        }
    }

    /// Operation `index`: the same for the same seed, every time.
    pub fn op(&self, index: u64) -> Op {
        let mut rng = SplitMix64::new(mix64(self.seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93)));
        if let Some(size) = self.batch_size {
            return Op::Batch((0..size).map(|_| self.movement(&mut rng)).collect());
        }
        let movement = self.movement(&mut rng);
        match rng.below(u64::from(self.mix.total())) < u64::from(self.mix.transfer) {
            true => Op::Transfer(movement),
            false => Op::Hold {
                movement,
                commit: rng.next_f64() < self.hold_commit_ratio,
            },
        }
    }

    /// Two distinct accounts, each Zipf-distributed, in random order (so a hot account sends
    /// as often as it receives and balances random-walk around their funding).
    fn movement(&self, rng: &mut SplitMix64) -> Movement {
        let first = self.zipf.sample(rng);
        let mut second = (first + 1) % self.zipf.ranks();
        for _ in 0..REDRAWS_MAX {
            let candidate = self.zipf.sample(rng);
            if candidate != first {
                second = candidate;
                break;
            }
        }
        let (from, to) = match rng.next_u64() & 1 {
            0 => (first, second),
            _ => (second, first),
        };
        let span = self.amount_max_cents - self.amount_min_cents + 1;
        let cents = self.amount_min_cents + rng.below(span);
        Movement {
            from: self.scatter[from as usize],
            to: self.scatter[to as usize],
            amount: Decimal::new(cents as i64, 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn options(args: &[&str]) -> Options {
        Options::try_parse_from(
            ["payu-loadtest", "--data-dir", "d"]
                .iter()
                .chain(args.iter())
                .copied(),
        )
        .expect("options parse")
    }

    #[test]
    fn operations_are_a_function_of_seed_and_index() {
        // Resolution and the audit regenerate nothing, but reproducibility of runs relies on it.
        let workload = Workload::new(
            &options(&["--accounts", "100", "--mix", "transfer=50,hold=50"]),
            7,
        );
        let again = Workload::new(
            &options(&["--accounts", "100", "--mix", "transfer=50,hold=50"]),
            7,
        );
        let other = Workload::new(
            &options(&["--accounts", "100", "--mix", "transfer=50,hold=50"]),
            8,
        );
        let ops: Vec<Op> = (0..1000).map(|i| workload.op(i)).collect();
        assert_eq!(ops, (0..1000).map(|i| again.op(i)).collect::<Vec<_>>());
        assert_ne!(ops, (0..1000).map(|i| other.op(i)).collect::<Vec<_>>());
        let holds = ops.iter().filter(|op| op.kind() == OpKind::Hold).count();
        assert!((400..600).contains(&holds), "{holds} holds of 1000 at 50%");
    }

    #[test]
    fn movements_stay_within_bounds_and_never_loop() {
        let workload = Workload::new(
            &options(&[
                "--accounts",
                "2",
                "--zipf",
                "3",
                "--amount-min",
                "0.01",
                "--amount-max",
                "2.5",
            ]),
            1,
        );
        for index in 0..5000 {
            let Op::Transfer(m) = workload.op(index) else {
                panic!("transfers only")
            };
            assert_ne!(m.from, m.to);
            assert!(m.from < 2 && m.to < 2);
            assert!(
                m.amount >= Decimal::new(1, 2) && m.amount <= Decimal::new(250, 2),
                "{}",
                m.amount
            );
            assert!(m.amount.scale() <= 2);
        }
    }

    #[test]
    fn zipf_is_skewed_and_zero_is_uniform() {
        let mut rng = SplitMix64::new(3);
        let skewed = Zipf::new(1000, 1.0);
        let mut counts = [0u32; 1000];
        for _ in 0..100_000 {
            counts[skewed.sample(&mut rng) as usize] += 1;
        }
        // 1 / H(1000) ≈ 13.4% of draws go to rank 0, and about 100x fewer to rank 99.
        assert!(
            (11_000..16_000).contains(&counts[0]),
            "rank 0 drawn {}",
            counts[0]
        );
        assert!(counts[0] > 40 * counts[99].max(1));
        let uniform = Zipf::new(10, 0.0);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[uniform.sample(&mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn batches_carry_the_batch_size() {
        let workload = Workload::new(&options(&["--accounts", "10", "--batch-size", "17"]), 5);
        let Op::Batch(items) = workload.op(3) else {
            panic!("batch mode")
        };
        assert_eq!(items.len(), 17);
    }
}
