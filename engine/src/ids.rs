//! Identifiers and time as the engine sees them. All are plain integers fixed before (or, for
//! engine-assigned ids, deterministically during) `apply`, so replay reproduces them exactly.

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash))]
        pub struct $name(pub $inner);
    };
}

id_type!(
    /// An account (customer, merchant, settlement or pocket). Assigned by the engine from 1 up.
    AccountId(u64)
);
id_type!(
    /// A posted transaction (one balanced movement). Assigned by the engine from 1 up.
    TxnId(u64)
);
id_type!(
    /// A hold (reservation of funds). Assigned by the engine from 1 up.
    HoldId(u64)
);
id_type!(
    /// The owner of an account (a customer or merchant id from KYC, e.g. a UUID).
    OwnerId(u128)
);
id_type!(
    /// A client's idempotency key, already scoped to the client and hashed to 128 bits by the
    /// gateway, so the engine stores a fixed-size value.
    IdempotencyKey(u128)
);
id_type!(
    /// Nanoseconds since the Unix epoch (UTC), decided before the command is journaled.
    Timestamp(u64)
);

impl Timestamp {
    pub const fn saturating_add_nanos(self, nanos: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(nanos))
    }
}

pub const NANOS_PER_SECOND: u64 = 1_000_000_000;
pub const NANOS_PER_HOUR: u64 = 3600 * NANOS_PER_SECOND;
pub const NANOS_PER_DAY: u64 = 24 * NANOS_PER_HOUR;
