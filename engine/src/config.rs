//! Engine configuration. It is part of the engine's state (fixed at genesis, carried in every
//! snapshot) because the rules it sets decide outcomes, and replay must decide the same.

use crate::amount::Amount;
use crate::ids::NANOS_PER_DAY;

/// Outgoing limits of one customer tier, per Jakarta calendar day and month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TierLimits {
    pub daily_outgoing: Amount,
    pub monthly_outgoing: Amount,
}

/// The most tiers a configuration may define (tiers are `u8` indexes).
pub const TIERS_MAX: usize = 16;
/// The largest any count bound may be configured: tables are sized for their bound up front
/// (so they never rehash mid-command), and this keeps that within a machine's address space.
pub const CAPACITY_MAX: u64 = 100_000_000;

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct EngineConfig {
    /// Indexed by `Account::tier`.
    pub tiers: Vec<TierLimits>,
    /// Accounts of every kind, pockets included.
    pub accounts_max: u64,
    pub pockets_per_account_max: u8,
    pub holds_active_max: u64,
    /// The furthest ahead a hold's deadline may be.
    pub hold_duration_max_ns: u64,
    /// How long an idempotency key is remembered (DESIGN.md: default 24 h).
    pub idempotency_window_ns: u64,
    /// The most keys remembered at once; past it the oldest are forgotten early (counted in
    /// `EngineStats::idempotency_evicted_early`) so memory stays bounded under any load.
    pub idempotency_entries_max: u64,
    /// How long a payment stays refundable.
    pub refund_window_ns: u64,
    pub refundable_payments_max: u64,
    /// Finished holds remembered (for HOLD_EXPIRED / HOLD_NOT_ACTIVE answers) for the
    /// idempotency window, at most this many.
    pub finished_holds_max: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            tiers: vec![
                // 0: basic (unverified KYC).
                TierLimits {
                    daily_outgoing: Amount::whole(5_000_000),
                    monthly_outgoing: Amount::whole(20_000_000),
                },
                // 1: verified.
                TierLimits {
                    daily_outgoing: Amount::whole(100_000_000),
                    monthly_outgoing: Amount::whole(500_000_000),
                },
                // 2: premium.
                TierLimits {
                    daily_outgoing: Amount::whole(1_000_000_000),
                    monthly_outgoing: Amount::whole(10_000_000_000),
                },
                // 3: business (merchants).
                TierLimits {
                    daily_outgoing: Amount::whole(10_000_000_000),
                    monthly_outgoing: Amount::whole(100_000_000_000),
                },
            ],
            accounts_max: 10_000_000,
            pockets_per_account_max: 8,
            holds_active_max: 1_000_000,
            hold_duration_max_ns: 30 * NANOS_PER_DAY,
            idempotency_window_ns: NANOS_PER_DAY,
            idempotency_entries_max: 10_000_000,
            refund_window_ns: 180 * NANOS_PER_DAY,
            refundable_payments_max: 10_000_000,
            finished_holds_max: 1_000_000,
        }
    }
}

impl EngineConfig {
    /// Checks the configuration's own consistency; a bad one is a startup error, not a panic.
    pub fn validate(&self) -> Result<(), String> {
        if self.tiers.is_empty() || self.tiers.len() > TIERS_MAX {
            return Err(format!(
                "tiers: need 1..={TIERS_MAX}, got {}",
                self.tiers.len()
            ));
        }
        for (index, tier) in self.tiers.iter().enumerate() {
            if tier.daily_outgoing > tier.monthly_outgoing || tier.monthly_outgoing > Amount::MAX {
                return Err(format!(
                    "tier {index}: need daily <= monthly <= DECIMAL(19,4) max"
                ));
            }
        }
        let positive = [
            ("accounts_max", self.accounts_max),
            ("holds_active_max", self.holds_active_max),
            ("hold_duration_max_ns", self.hold_duration_max_ns),
            ("idempotency_window_ns", self.idempotency_window_ns),
            ("idempotency_entries_max", self.idempotency_entries_max),
            ("refund_window_ns", self.refund_window_ns),
            ("refundable_payments_max", self.refundable_payments_max),
            ("finished_holds_max", self.finished_holds_max),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be greater than zero"));
        }
        let counts = [
            ("accounts_max", self.accounts_max),
            ("holds_active_max", self.holds_active_max),
            ("idempotency_entries_max", self.idempotency_entries_max),
            ("refundable_payments_max", self.refundable_payments_max),
            ("finished_holds_max", self.finished_holds_max),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value > CAPACITY_MAX) {
            return Err(format!("{name} must be at most {CAPACITY_MAX}"));
        }
        Ok(())
    }
}
