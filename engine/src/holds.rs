//! The engine's active holds, with a record of which ones came or went since a snapshot
//! mirror last copied them (see `accounts.rs` for why a mirror). Reads go through `Deref` to
//! the map; the only ways to change it are [`Holds::insert`] and [`Holds::remove`] (a hold never
//! changes in place), so no change can miss the record.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;

use crate::changes::ChangeLog;
use crate::ids::HoldId;
use crate::state::Hold;
use crate::window::FoldHasherBuilder;

#[derive(Debug, Default)]
pub(crate) struct Holds {
    map: HashMap<HoldId, Hold, FoldHasherBuilder>,
    /// Holds inserted or removed since the last `sync_mirror`, while a mirror is kept.
    changes: ChangeLog<HoldId>,
}

impl Holds {
    pub(crate) fn with_capacity(capacity: usize) -> Holds {
        Holds {
            map: HashMap::with_capacity_and_hasher(capacity, FoldHasherBuilder::default()),
            ..Holds::default()
        }
    }

    pub(crate) fn insert(&mut self, hold: Hold) {
        self.changes.record(hold.id);
        self.map.insert(hold.id, hold);
    }

    pub(crate) fn remove(&mut self, id: HoldId) -> Option<Hold> {
        self.changes.record(id);
        self.map.remove(&id)
    }

    /// From now on, records the holds that come and go for `sync_mirror`: at most
    /// `changes_max` between two syncs (the holds' bound, say).
    pub(crate) fn record_changes(&mut self, changes_max: usize) {
        self.changes = ChangeLog::start(changes_max);
    }

    /// Brings `mirror` (the holds by id) in step: the holds that came or went since the last
    /// sync, or every hold when `whole` is set (a mirror the caller cannot vouch for), when
    /// changes are not being recorded, or when more came than were recorded.
    pub(crate) fn sync_mirror(&mut self, mirror: &mut BTreeMap<HoldId, Hold>, whole: bool) {
        if whole || !self.changes.is_complete() {
            mirror.clear();
            mirror.extend(self.map.iter().map(|(&id, hold)| (id, hold.clone())));
            self.changes.drain(|_| {});
            return;
        }
        self.changes.drain(|id| {
            match self.map.get(&id) {
                Some(hold) => mirror.insert(id, hold.clone()),
                None => mirror.remove(&id),
            };
        });
    }
}

impl Deref for Holds {
    type Target = HashMap<HoldId, Hold, FoldHasherBuilder>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// Equal holds make equal engines, whatever a mirror has been told.
impl PartialEq for Holds {
    fn eq(&self, other: &Holds) -> bool {
        self.map == other.map
    }
}

/// A clone records nothing: a mirror is kept by the engine that made it.
impl Clone for Holds {
    fn clone(&self) -> Holds {
        Holds {
            map: self.map.clone(),
            ..Holds::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::{Amount, Currency};
    use crate::calendar::Date;
    use crate::ids::{AccountId, Timestamp};

    fn hold(id: u64) -> Hold {
        Hold {
            id: HoldId(id),
            account: AccountId(1),
            destination: AccountId(2),
            amount: Amount(id),
            currency: Currency::IDR,
            expires_at: Timestamp(id),
            limit_date: Date::default(),
            limit_month_index: 0,
        }
    }

    fn same(holds: &Holds, mirror: &BTreeMap<HoldId, Hold>) -> bool {
        holds.len() == mirror.len() && mirror.iter().all(|(id, h)| holds.get(id) == Some(h))
    }

    #[test]
    fn a_mirror_follows_holds_that_come_and_go_and_is_recopied_past_the_bound() {
        // Proves `sync_mirror`: the copy equals the holds after inserts and removals (a hold
        // inserted and removed between two syncs included), and when more changes came than
        // the bound allows (then the copy is made whole); nothing is recorded before
        // `record_changes`, and a clone records nothing.
        let mut holds = Holds::with_capacity(8);
        holds.insert(hold(1));
        assert!(matches!(holds.changes, ChangeLog::Off));
        let mut mirror = BTreeMap::new();
        holds.record_changes(4);
        holds.sync_mirror(&mut mirror, true);
        assert!(same(&holds, &mirror));
        holds.insert(hold(2));
        holds.insert(hold(3));
        assert_eq!(holds.remove(HoldId(3)).map(|h| h.id), Some(HoldId(3)));
        holds.remove(HoldId(1));
        holds.sync_mirror(&mut mirror, false);
        assert!(same(&holds, &mirror), "{mirror:?}");
        for id in 4..10 {
            holds.insert(hold(id));
        }
        assert!(
            holds.changes.is_overflowed(),
            "six changes against a bound of four"
        );
        holds.sync_mirror(&mut mirror, false);
        assert!(same(&holds, &mirror));
        assert_eq!(holds.changes.recorded(), Some(&[][..]));
        // A copy the caller cannot vouch for is made whole.
        mirror.remove(&HoldId(5));
        holds.sync_mirror(&mut mirror, true);
        assert!(same(&holds, &mirror));
        let clone = holds.clone();
        assert!(matches!(clone.changes, ChangeLog::Off) && clone == holds);
    }
}
