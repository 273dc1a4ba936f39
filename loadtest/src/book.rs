//! The client's own books: every movement the node acknowledged (with its transaction id),
//! every operation whose outcome is not known yet, and holds still open. The audit compares
//! the node's ledger with these books, so they record only what the node *said*, never what
//! the tool merely asked for.

use std::collections::BTreeSet;

use rust_decimal::Decimal;

/// A movement the node acknowledged with a 2xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    /// `None` only for items of a batch whose outcome was learned from a replay, which answers
    /// counts without transaction ids.
    pub txn: Option<u64>,
    pub debit: u64,
    pub credit: u64,
    pub amount: Decimal,
}

/// An operation whose first answer was unknown (5xx, timeout, connection error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Transfer {
        index: u64,
    },
    Batch {
        index: u64,
    },
    /// The hold's reservation itself.
    HoldReserve {
        index: u64,
    },
    /// The reservation succeeded as hold `hold`; its commit or release is in doubt.
    HoldFinish {
        index: u64,
        hold: u64,
    },
}

/// A hold that was reserved and is not known to be finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenHold {
    pub hold: u64,
    pub account: u64,
    pub amount: Decimal,
}

#[derive(Clone, Debug, Default)]
pub struct Book {
    pub acked: Vec<Acked>,
    pub pending: Vec<Pending>,
    pub open_holds: Vec<OpenHold>,
    /// Accounts with a hold reservation whose outcome could not be learned: their `held`
    /// cannot be predicted (their balance still can: a reservation moves no money).
    pub held_unknown: BTreeSet<u64>,
    /// Accounts whose balance cannot be predicted because an operation touching them could
    /// not be resolved.
    pub balance_unknown: BTreeSet<u64>,
    /// Operations resent to learn their outcome.
    pub resent: u64,
    /// Resends the node answered as replays of an earlier attempt (`idempotent-replayed`).
    pub replayed: u64,
    /// Hold reservations whose outcome the node would not tell (see `held_unknown`).
    pub unresolved_holds: u64,
    /// Operations whose outcome stayed unknown after resolution, with the reason.
    pub unresolved: Vec<String>,
    /// 2xx answers that do not match what was asked (wrong accounts or amount): each is a
    /// failure of the node, reported by the audit.
    pub mismatches: Vec<String>,
}

/// Acknowledgements [`Book::reserve`] makes room for at once, at most: 2^25 of them take
/// 1.5 GiB of address space, touched only as they are booked.
pub const ACKED_RESERVE_MAX: u64 = 1 << 25;

impl Book {
    /// Makes room for `acks` more acknowledgements (at most [`ACKED_RESERVE_MAX`] in all).
    /// Growing by doubling instead copies the whole book while every lane waits for its
    /// lock: at 2^18 and 2^19 entries (12 and 25 MB) that stalled a 24k/s load for 80-140 ms,
    /// failing a ramp step's p99.
    pub fn reserve(&mut self, acks: u64) {
        let room = acks.min(ACKED_RESERVE_MAX.saturating_sub(self.acked.len() as u64));
        self.acked.reserve(usize::try_from(room).unwrap_or(0));
    }

    pub fn ack(&mut self, acked: Acked) {
        self.acked.push(acked);
    }

    pub fn mismatch(&mut self, text: String) {
        // Bounded: one is enough to fail the audit; a few show the pattern.
        if self.mismatches.len() < 100 {
            self.mismatches.push(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(n: u64) -> Acked {
        Acked {
            txn: Some(n),
            debit: 1,
            credit: 2,
            amount: Decimal::ONE,
        }
    }

    /// Proves: after `reserve(n)`, booking n acknowledgements never moves the book (no
    /// doubling copy in the middle of a phase), and a reservation never exceeds the bound.
    #[test]
    fn a_reserved_book_takes_its_acknowledgements_without_growing() {
        let mut book = Book::default();
        book.ack(acked(0));
        book.reserve(100_000);
        let (start, capacity) = (book.acked.as_ptr(), book.acked.capacity());
        assert!(capacity > 100_000);
        for n in 0..100_000 {
            book.ack(acked(n));
        }
        assert_eq!(book.acked.as_ptr(), start, "the book was reallocated");
        assert_eq!(book.acked.capacity(), capacity);

        let mut book = Book::default();
        book.reserve(u64::MAX);
        assert_eq!(book.acked.capacity() as u64, ACKED_RESERVE_MAX);
    }
}
