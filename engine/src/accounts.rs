//! The engine's accounts, with a record of which ones changed since a snapshot mirror last
//! copied them.
//!
//! A snapshot used to copy every account on the engine thread: at a million accounts (96 bytes
//! each) that stopped every reply for tens of milliseconds per snapshot. The engine thread now
//! keeps a mirror of the accounts in step after every batch, copying only the accounts the
//! batch changed (a transfer changes two), and a snapshot hands the mirror over instead of
//! copying. Reads go through `Deref` to the slice; the only ways to change an account are
//! [`Accounts::get_mut`] and [`Accounts::push`], so no change can miss the record.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::Account;

/// Hands out mirror ids: an id names one mirror's copy, made by one engine. 0 means none.
static MIRROR_IDS: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a mirror about to be copied whole.
fn next_mirror_id() -> u64 {
    MIRROR_IDS.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Default)]
pub(crate) struct Accounts {
    /// Indexed by `AccountId - 1`.
    items: Vec<Account>,
    /// The mirror whose copy `changed` brings up to date; 0: none, and nothing is recorded.
    mirror: u64,
    /// Indexes of accounts changed since that mirror's last sync, each once: at most one entry
    /// per account, so bounded by `EngineConfig::accounts_max`. Accounts pushed since are not
    /// listed; they reach the mirror by its length.
    changed: Vec<u32>,
    /// One bit per account: whether its index is in `changed`.
    marked: Vec<u64>,
}

impl Accounts {
    pub(crate) fn with_capacity(capacity: usize) -> Accounts {
        Accounts {
            items: Vec::with_capacity(capacity),
            ..Accounts::default()
        }
    }

    pub(crate) fn push(&mut self, account: Account) {
        self.items.push(account);
    }

    /// For a restore, before any mirror exists.
    pub(crate) fn extend(&mut self, accounts: impl IntoIterator<Item = Account>) {
        self.items.extend(accounts);
    }

    /// The account at `index`, to be changed: recorded for the mirror first.
    pub(crate) fn get_mut(&mut self, index: usize) -> &mut Account {
        if self.mirror != 0 {
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            if self.marked.len() <= word {
                self.marked.resize(word + 1, 0);
            }
            if self.marked[word] & bit == 0 {
                self.marked[word] |= bit;
                // Account indexes fit u32: `accounts_max` is at most `CAPACITY_MAX`.
                self.changed.push(index as u32);
            }
        }
        &mut self.items[index]
    }

    /// Brings `copy` (the accounts of mirror `id`) in step: only the accounts changed since its
    /// last sync, plus the new ones. A copy these changes are not recorded for (a new one, id
    /// 0; another mirror's; another engine's; or one this engine stopped recording for) is
    /// made again whole, under a new id, and changes are recorded for it from then on.
    /// Returns the id the copy has now.
    pub(crate) fn sync_mirror(&mut self, id: u64, copy: &mut Vec<Account>) -> u64 {
        if id == 0 || id != self.mirror || copy.len() > self.items.len() {
            return self.copy_whole(copy);
        }
        let held = copy.len();
        for &index in &self.changed {
            let index = index as usize;
            if index < held {
                copy[index].clone_from(&self.items[index]);
            }
            self.marked[index / 64] = 0;
        }
        self.changed.clear();
        copy.extend_from_slice(&self.items[held..]);
        id
    }

    /// Copies every account into `copy` (keeping its allocation) and records changes for a
    /// fresh id from now on.
    fn copy_whole(&mut self, copy: &mut Vec<Account>) -> u64 {
        copy.clear();
        copy.extend_from_slice(&self.items);
        self.changed.clear();
        self.marked.clear();
        self.mirror = next_mirror_id();
        self.mirror
    }
}

impl Deref for Accounts {
    type Target = [Account];

    fn deref(&self) -> &[Account] {
        &self.items
    }
}

/// Equal accounts make equal engines, whatever a mirror has been told.
impl PartialEq for Accounts {
    fn eq(&self, other: &Accounts) -> bool {
        self.items == other.items
    }
}

/// A clone records changes for no mirror: a mirror is kept by the engine that made it.
impl Clone for Accounts {
    fn clone(&self) -> Accounts {
        Accounts {
            items: self.items.clone(),
            ..Accounts::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::{Amount, Currency};
    use crate::calendar::Date;
    use crate::command::{AccountKind, AccountStatus};
    use crate::ids::{AccountId, OwnerId};

    fn account(balance: i128) -> Account {
        Account {
            balance,
            held: 0,
            overdraft_limit: Amount::ZERO,
            spent_day: Amount::ZERO,
            spent_month: Amount::ZERO,
            spent_date: Date::default(),
            currency: Currency::IDR,
            kind: AccountKind::Customer,
            status: AccountStatus::Active,
            tier: 0,
            open_pockets: 0,
            spent_month_index: 0,
            parent: AccountId(0),
            owner: OwnerId(1),
        }
    }

    #[test]
    fn a_synced_mirror_equals_the_accounts_and_copies_only_what_changed() {
        let mut accounts = Accounts::default();
        accounts.extend((0..200).map(account));
        // Nothing is recorded before a mirror exists.
        accounts.get_mut(3).balance += 1;
        assert!(accounts.changed.is_empty());
        let mut copy = Vec::new();
        let id = accounts.sync_mirror(0, &mut copy);
        assert_eq!(copy, &accounts[..]);
        for index in [5, 130, 5, 199, 64] {
            accounts.get_mut(index).balance += 10;
        }
        assert_eq!(accounts.changed, vec![5, 130, 199, 64], "each index once");
        accounts.push(account(-7));
        // Changed after it was pushed: still reaches the copy (by its length).
        accounts.get_mut(200).held += 2;
        assert_eq!(
            accounts.sync_mirror(id, &mut copy),
            id,
            "kept in step, not copied"
        );
        assert_eq!(copy, &accounts[..]);
        assert!(accounts.changed.is_empty() && accounts.marked.iter().all(|w| *w == 0));
        // Indexes are recorded again after a sync.
        accounts.get_mut(5).balance -= 3;
        assert_eq!(accounts.changed, vec![5]);
        assert_eq!(accounts.sync_mirror(id, &mut copy), id);
        assert_eq!(copy, &accounts[..]);
    }

    #[test]
    fn a_mirror_the_changes_are_not_kept_for_is_copied_again_whole() {
        let mut accounts = Accounts::default();
        accounts.extend((0..10).map(account));
        let (mut old_copy, mut new_copy) = (Vec::new(), Vec::new());
        let old = accounts.sync_mirror(0, &mut old_copy);
        let new = accounts.sync_mirror(0, &mut new_copy);
        assert_ne!(old, new);
        accounts.get_mut(2).balance = 99;
        // The older mirror's copy missed nothing, but changes are kept for the newer one.
        let renamed = accounts.sync_mirror(old, &mut old_copy);
        assert!(renamed != old && renamed != new);
        assert_eq!(old_copy, &accounts[..]);
        // ...so the newer one is now the stranger, and is copied whole too.
        accounts.get_mut(4).balance = 98;
        new_copy[7].balance = -1; // whatever it held is replaced
        assert_ne!(accounts.sync_mirror(new, &mut new_copy), new);
        assert_eq!(new_copy, &accounts[..]);
        // Another engine's accounts (a clone records for no mirror) never trust the id.
        let mut clone = accounts.clone();
        clone.get_mut(1).balance = 5;
        let mut copy = old_copy.clone();
        assert_ne!(clone.sync_mirror(renamed, &mut copy), renamed);
        assert_eq!(copy, &clone[..]);
        assert!(clone == clone.clone() && clone != accounts);
    }
}
