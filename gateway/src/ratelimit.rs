//! Per-client rate limits: one token bucket per client id (from the bearer token), shared by all
//! handlers. A request takes as many tokens as it carries items, so a batch of 500 transfers
//! costs 500.
//!
//! Buckets are exact integer arithmetic: a token is [`UNITS_PER_TOKEN`] units and a limit of `r`
//! requests per second refills exactly `r` units per nanosecond, so no rate is rounded. The
//! clock is an argument (`now`), which keeps tests free of sleeps.
//!
//! The table is bounded by [`CLIENTS_TRACKED_MAX`], split evenly over [`SHARDS`] mutex-guarded
//! shards so concurrent handlers rarely contend. A full bucket is indistinguishable from a
//! client never seen, so when a shard is full its full (idle) buckets are dropped; if none is
//! idle, a new client is refused until the first one can be.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The most clients whose buckets are remembered at once.
pub const CLIENTS_TRACKED_MAX: usize = 100_000;
/// Independently locked parts of the table; a client's shard is chosen by hashing its id.
pub const SHARDS: usize = 16;
const CLIENTS_PER_SHARD_MAX: usize = CLIENTS_TRACKED_MAX / SHARDS;
/// One token in bucket units: a refill of `r` tokens per second is `r` units per nanosecond.
const UNITS_PER_TOKEN: u64 = 1_000_000_000;

const _: () = assert!(SHARDS.is_power_of_two());
const _: () = assert!(CLIENTS_TRACKED_MAX % SHARDS == 0);
// The largest bucket or cost (u32::MAX tokens) fits in u64 units.
const _: () = assert!((u32::MAX as u64).checked_mul(UNITS_PER_TOKEN).is_some());

/// The `rate_limit` section of the node's configuration, applied to each client separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Sustained rate; 0 means unlimited.
    pub requests_per_second: u32,
    /// Tokens a client can spend at once after being idle; 0 is taken as 1.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second: 10_000,
            burst: 20_000,
        }
    }
}

/// Token buckets for all clients. `Send + Sync`: share one behind an `Arc`.
pub struct RateLimiter {
    config: RateLimitConfig,
    /// Units added per nanosecond (= requests per second); 0 = unlimited.
    refill_units_per_nanosecond: u64,
    capacity_units: u64,
    clients_per_shard_max: usize,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Box<str>, Bucket>,
    /// Set when the shard was full and no bucket was idle: none can be idle before this instant
    /// (spending only delays it), so new clients are refused without rescanning until then.
    eviction_not_before: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    units: u64,
    /// When `units` was last brought up to date; never moves backwards.
    updated: Instant,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .field("clients_tracked", &self.clients_tracked())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter::with_clients_per_shard_max(config, CLIENTS_PER_SHARD_MAX)
    }

    fn with_clients_per_shard_max(
        config: RateLimitConfig,
        clients_per_shard_max: usize,
    ) -> RateLimiter {
        assert!(clients_per_shard_max > 0);
        RateLimiter {
            config,
            refill_units_per_nanosecond: u64::from(config.requests_per_second),
            capacity_units: u64::from(config.burst.max(1)) * UNITS_PER_TOKEN,
            clients_per_shard_max,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes `cost` tokens (a batch request costs its item count) for `client` at `now`: Ok, or
    /// Err(how long until enough tokens exist), nothing taken. A cost beyond the burst is
    /// allowed only when the bucket is full, and empties it, so a big batch is never starved.
    /// A new client that finds the table full is refused until an idle bucket can be dropped.
    pub fn check(&self, client: &str, cost: u32, now: Instant) -> Result<(), Duration> {
        if self.refill_units_per_nanosecond == 0 {
            return Ok(());
        }
        let needed_units = (u64::from(cost) * UNITS_PER_TOKEN).min(self.capacity_units);
        let mut shard = self.shard(client);
        if let Some(bucket) = shard.buckets.get_mut(client) {
            return self.take(bucket, needed_units, now);
        }
        if shard.buckets.len() >= self.clients_per_shard_max {
            self.evict_idle(&mut shard, now)?;
        }
        let mut bucket = Bucket {
            units: self.capacity_units,
            updated: now,
        };
        let taken = self.take(&mut bucket, needed_units, now);
        assert!(taken.is_ok(), "a full bucket admits any cost");
        shard.buckets.insert(client.into(), bucket);
        assert!(shard.buckets.len() <= self.clients_per_shard_max);
        Ok(())
    }

    /// How many clients have a bucket now (at most [`CLIENTS_TRACKED_MAX`]), e.g. for a gauge.
    pub fn clients_tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).buckets.len())
            .sum()
    }

    fn shard(&self, client: &str) -> MutexGuard<'_, Shard> {
        // Truncating the hash is fine: only its low bits pick the shard.
        let hash = xxhash_rust::xxh3::xxh3_64(client.as_bytes()) as usize;
        lock(&self.shards[hash & (SHARDS - 1)])
    }

    fn take(&self, bucket: &mut Bucket, needed_units: u64, now: Instant) -> Result<(), Duration> {
        *bucket = self.refilled(*bucket, now);
        match bucket.units.checked_sub(needed_units) {
            Some(left) => {
                bucket.units = left;
                Ok(())
            }
            None => Err(self.time_to_refill(needed_units - bucket.units)),
        }
    }

    /// `bucket` as of `now` (or as it is, if `now` is earlier than its last update: two
    /// handlers may read the clock in one order and lock the shard in the other).
    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let Some(elapsed) = now.checked_duration_since(bucket.updated) else {
            return bucket;
        };
        let elapsed_nanoseconds = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let missing_units = self.capacity_units - bucket.units;
        let units = if elapsed_nanoseconds >= self.nanoseconds_to_refill(missing_units) {
            self.capacity_units
        } else {
            // elapsed * rate < missing_units here, so neither overflows.
            bucket.units + elapsed_nanoseconds * self.refill_units_per_nanosecond
        };
        assert!(units <= self.capacity_units);
        Bucket {
            units,
            updated: now,
        }
    }

    fn nanoseconds_to_refill(&self, missing_units: u64) -> u64 {
        missing_units.div_ceil(self.refill_units_per_nanosecond)
    }

    fn time_to_refill(&self, missing_units: u64) -> Duration {
        Duration::from_nanos(self.nanoseconds_to_refill(missing_units))
    }

    /// Drops the shard's idle (full) buckets; if none is idle, Err(time until one can be).
    fn evict_idle(&self, shard: &mut Shard, now: Instant) -> Result<(), Duration> {
        let wait = shard
            .eviction_not_before
            .and_then(|not_before| not_before.checked_duration_since(now))
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            return Err(wait);
        }
        let mut soonest_idle_nanoseconds = u64::MAX;
        shard.buckets.retain(|_, bucket| {
            let missing_units = self.capacity_units - self.refilled(*bucket, now).units;
            let idle_in = self.nanoseconds_to_refill(missing_units);
            soonest_idle_nanoseconds = soonest_idle_nanoseconds.min(idle_in);
            idle_in > 0
        });
        if shard.buckets.len() < self.clients_per_shard_max {
            shard.eviction_not_before = None;
            return Ok(());
        }
        let wait = Duration::from_nanos(soonest_idle_nanoseconds);
        shard.eviction_not_before = now.checked_add(wait);
        Err(wait)
    }
}

/// A panic while a shard was locked cannot leave a bucket half-updated (each update is one
/// assignment), so a poisoned shard is still consistent.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILLISECOND: Duration = Duration::from_millis(1);

    fn new_limiter(requests_per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            requests_per_second,
            burst,
        })
    }

    #[test]
    fn burst_then_refusal() {
        // Proves a client gets exactly its burst at once, then a refusal naming the wait for one
        // token, and that other clients are unaffected.
        let limiter = new_limiter(10, 20);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(limiter.check("a", 1, t0), Ok(()));
        }
        assert_eq!(limiter.check("a", 1, t0), Err(100 * MILLISECOND));
        assert_eq!(limiter.check("b", 20, t0), Ok(()));
        assert_eq!(limiter.check("b", 1, t0), Err(100 * MILLISECOND));
    }

    #[test]
    fn refill_over_time() {
        // Proves tokens come back at the configured rate and stop at the burst.
        let limiter = new_limiter(10, 20);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", 20, t0), Ok(()));
        assert_eq!(
            limiter.check("a", 1, t0 + 99 * MILLISECOND),
            Err(MILLISECOND)
        );
        assert_eq!(limiter.check("a", 1, t0 + 100 * MILLISECOND), Ok(()));
        assert_eq!(
            limiter.check("a", 1, t0 + 100 * MILLISECOND),
            Err(100 * MILLISECOND)
        );
        let t1 = t0 + 1100 * MILLISECOND;
        assert_eq!(limiter.check("a", 10, t1), Ok(()));
        assert_eq!(limiter.check("a", 1, t1), Err(100 * MILLISECOND));
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(limiter.check("a", 20, t2), Ok(()));
        assert_eq!(limiter.check("a", 1, t2), Err(100 * MILLISECOND));
    }

    #[test]
    fn exact_arithmetic_for_rates_not_dividing_a_second() {
        // Proves a rate of 3/s refills one token in exactly ceil(1e9 / 3) ns, with no drift over
        // many refills.
        let limiter = new_limiter(3, 1);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", 1, t0), Ok(()));
        let one_token = Duration::from_nanos(333_333_334);
        assert_eq!(limiter.check("a", 1, t0), Err(one_token));
        assert_eq!(
            limiter.check("a", 1, t0 + Duration::from_nanos(333_333_333)),
            Err(Duration::from_nanos(1))
        );
        assert_eq!(limiter.check("a", 1, t0 + one_token), Ok(()));
        // From an emptied bucket that never fills up again (so no refill is capped away), the
        // k-th token is available exactly ceil(k * 1e9 / 3) ns later, not a nanosecond sooner,
        // for 3000 tokens in a row: fractions of a token carry over instead of drifting.
        let limiter = new_limiter(3, 10);
        assert_eq!(limiter.check("a", 10, t0), Ok(()));
        for token in 1..=3000u64 {
            let available = t0 + Duration::from_nanos((token * 1_000_000_000).div_ceil(3));
            let just_before = available - Duration::from_nanos(1);
            assert_eq!(
                limiter.check("a", 1, just_before),
                Err(Duration::from_nanos(1)),
                "token {token}"
            );
            assert_eq!(limiter.check("a", 1, available), Ok(()), "token {token}");
        }
    }

    #[test]
    fn batch_costs() {
        // Proves a batch takes its item count, and a cost above the burst is admitted only from
        // a full bucket, which it then empties.
        let limiter = new_limiter(10, 20);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", 15, t0), Ok(()));
        assert_eq!(limiter.check("a", 10, t0), Err(500 * MILLISECOND));
        assert_eq!(limiter.check("a", 0, t0), Ok(()));

        let small = new_limiter(10, 5);
        assert_eq!(small.check("big", 8, t0), Ok(()));
        assert_eq!(small.check("big", 1, t0), Err(100 * MILLISECOND));
        let t1 = t0 + 300 * MILLISECOND;
        assert_eq!(small.check("big", 8, t1), Err(200 * MILLISECOND));
        let t2 = t0 + 500 * MILLISECOND;
        assert_eq!(small.check("big", u32::MAX, t2), Ok(()));
        assert_eq!(small.check("big", 1, t2), Err(100 * MILLISECOND));
    }

    #[test]
    fn zero_burst_means_one() {
        // Proves a burst of 0 admits one request at a time rather than everything or nothing.
        let limiter = new_limiter(2, 0);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", 1, t0), Ok(()));
        assert_eq!(limiter.check("a", 1, t0), Err(500 * MILLISECOND));
    }

    #[test]
    fn unlimited() {
        // Proves 0 requests per second admits everything and tracks nobody.
        let limiter = new_limiter(0, 0);
        let t0 = Instant::now();
        for client in 0..1000 {
            assert_eq!(limiter.check(&client.to_string(), u32::MAX, t0), Ok(()));
        }
        assert_eq!(limiter.clients_tracked(), 0);
    }

    #[test]
    fn clock_read_out_of_order() {
        // Proves an earlier `now` after a later one neither panics nor mints tokens.
        let limiter = new_limiter(10, 1);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limiter.check("a", 1, t1), Ok(()));
        assert_eq!(limiter.check("a", 1, t0), Err(100 * MILLISECOND));
        assert_eq!(limiter.check("a", 1, t1 + 100 * MILLISECOND), Ok(()));
    }

    #[test]
    fn small_bound_evicts_idle_then_refuses() {
        // Proves a full shard drops idle buckets for a new client, refuses new clients with the
        // time until one is idle when none is, and keeps serving clients it already tracks.
        let limiter = RateLimiter::with_clients_per_shard_max(
            RateLimitConfig {
                requests_per_second: 2,
                burst: 2,
            },
            2,
        );
        let t0 = Instant::now();
        let mut refused = None;
        for client in 0..1000 {
            let name = format!("client-{client}");
            match limiter.check(&name, 1, t0) {
                Ok(()) => assert!(limiter.clients_tracked() <= 2 * SHARDS),
                Err(wait) => {
                    refused = Some((name, wait));
                    break;
                }
            }
        }
        let (name, wait) = refused.expect("some shard fills up");
        assert_eq!(wait, 500 * MILLISECOND);
        assert_eq!(
            limiter.check(&name, 1, t0 + 250 * MILLISECOND),
            Err(250 * MILLISECOND)
        );
        assert_eq!(limiter.check("client-0", 1, t0 + 250 * MILLISECOND), Ok(()));
        // At t0 + 500 ms the shard's other buckets (one token spent at t0) are full again.
        let tracked = limiter.clients_tracked();
        assert_eq!(limiter.check(&name, 1, t0 + 500 * MILLISECOND), Ok(()));
        assert!(limiter.clients_tracked() <= tracked);
    }

    #[test]
    fn table_never_exceeds_clients_tracked_max() {
        // Proves the real bound: more new busy clients than CLIENTS_TRACKED_MAX are refused
        // rather than tracked, and accepted again once buckets go idle.
        let limiter = new_limiter(1, 2);
        let t0 = Instant::now();
        let attempts = CLIENTS_TRACKED_MAX + 10_000;
        let accepted = (0..attempts)
            .filter(|client| limiter.check(&client.to_string(), 1, t0).is_ok())
            .count();
        // xxh3 is unseeded, so which shard each name lands in is fixed: every shard fills.
        assert_eq!(accepted, CLIENTS_TRACKED_MAX);
        assert_eq!(limiter.clients_tracked(), accepted);
        assert_eq!(
            limiter.check("newcomer", 1, t0 + 500 * MILLISECOND).ok(),
            None
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(limiter.check("newcomer", 1, t1), Ok(()));
        assert!(limiter.clients_tracked() < accepted);
    }

    #[test]
    fn concurrent_handlers_share_one_bucket() {
        // Proves two threads hammering one client at one instant get exactly the burst between
        // them (no lost or duplicated tokens).
        let limiter = new_limiter(1, 1000);
        let t0 = Instant::now();
        let admitted: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .filter(|_| limiter.check("a", 1, t0).is_ok())
                            .count()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("worker finished"))
                .sum()
        });
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn config_defaults() {
        // Proves missing configuration fields take the documented defaults.
        let config: RateLimitConfig = serde_json::from_str("{}").expect("valid json");
        assert_eq!(config, RateLimitConfig::default());
        assert_eq!(config.requests_per_second, 10_000);
        assert_eq!(config.burst, 20_000);
        let config: RateLimitConfig =
            serde_json::from_str(r#"{"requests_per_second":0}"#).expect("valid json");
        assert_eq!(config.requests_per_second, 0);
        assert_eq!(config.burst, 20_000);
    }

    #[test]
    fn limiter_is_send_and_sync() {
        // Proves at compile time the limiter can be shared across tokio workers.
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RateLimiter>();
    }
}
