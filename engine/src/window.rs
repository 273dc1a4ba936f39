//! A bounded, time-ordered table: items enter in timestamp order, are found by key, and leave
//! when they are older than the window or when the table is full. It backs the idempotency
//! window, refundable payments and finished holds.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::ids::Timestamp;

/// The most expired items removed per command: keeps one command's work bounded after an idle
/// gap. Each command adds at most one item per window, so removal still keeps pace.
pub const WINDOW_EXPIRIES_PER_COMMAND_MAX: usize = 64;

pub(crate) trait WindowItem {
    type Key: Copy + Eq + Hash;
    fn key(&self) -> Self::Key;
    fn at(&self) -> Timestamp;
}

#[derive(Clone, Debug)]
pub(crate) struct Window<T: WindowItem> {
    index: HashMap<T::Key, u64, FoldHasherBuilder>,
    items: VecDeque<T>,
    /// The absolute position of `items[0]`; positions never repeat.
    first_position: u64,
    /// Items dropped because the table was full before their time was up.
    pub(crate) evicted_early: u64,
}

/// Windows are equal when they hold the same items and the same early-eviction count. The
/// index and positions are bookkeeping derived from the items: a window rebuilt from a snapshot
/// numbers its positions from zero, yet holds the same state.
impl<T: WindowItem + PartialEq> PartialEq for Window<T> {
    fn eq(&self, other: &Window<T>) -> bool {
        self.items == other.items && self.evicted_early == other.evicted_early
    }
}

impl<T: WindowItem> Window<T> {
    /// An empty window with room for `capacity` items allocated up front: growing a large
    /// hash table later would rehash it all inside one command (a stall of seconds at
    /// millions of entries). Untouched capacity costs address space, not memory.
    pub(crate) fn with_capacity(capacity: u64) -> Window<T> {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Window {
            index: HashMap::with_capacity_and_hasher(capacity, FoldHasherBuilder::default()),
            items: VecDeque::with_capacity(capacity),
            first_position: 0,
            evicted_early: 0,
        }
    }

    /// Rebuilds a window from its items in order (from a snapshot).
    pub(crate) fn from_items(items: Vec<T>, evicted_early: u64, capacity: u64) -> Window<T> {
        let mut window = Window::with_capacity(capacity);
        window.evicted_early = evicted_early;
        for item in items {
            window.push_back(item);
        }
        window
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn items(&self) -> impl ExactSizeIterator<Item = &T> {
        self.items.iter()
    }

    /// The live item with this key: one whose time is not up at `now`.
    pub(crate) fn get(&self, key: T::Key, now: Timestamp, window_ns: u64) -> Option<&T> {
        let position = self.live_position(key, now, window_ns)?;
        self.items.get(self.offset(position))
    }

    pub(crate) fn get_mut(
        &mut self,
        key: T::Key,
        now: Timestamp,
        window_ns: u64,
    ) -> Option<&mut T> {
        let position = self.live_position(key, now, window_ns)?;
        let offset = self.offset(position);
        self.items.get_mut(offset)
    }

    fn live_position(&self, key: T::Key, now: Timestamp, window_ns: u64) -> Option<u64> {
        let position = *self.index.get(&key)?;
        let item = &self.items[self.offset(position)];
        (item.at().saturating_add_nanos(window_ns) > now).then_some(position)
    }

    fn offset(&self, position: u64) -> usize {
        let offset = position - self.first_position;
        assert!(
            offset < self.items.len() as u64,
            "window index points outside its items"
        );
        offset as usize
    }

    /// Adds an item at the back, first dropping the oldest items while the table is full.
    /// A stale (expired, not yet removed) item with the same key is superseded.
    pub(crate) fn push(&mut self, item: T, capacity: u64) {
        assert!(capacity > 0);
        if let Some(last) = self.items.back() {
            assert!(
                last.at() <= item.at(),
                "window items must arrive in time order"
            );
        }
        while self.items.len() as u64 >= capacity {
            self.pop_front();
            self.evicted_early += 1;
        }
        self.push_back(item);
    }

    fn push_back(&mut self, item: T) {
        let position = self.first_position + self.items.len() as u64;
        self.index.insert(item.key(), position);
        self.items.push_back(item);
    }

    /// Removes up to `WINDOW_EXPIRIES_PER_COMMAND_MAX` items whose time is up at `now`.
    pub(crate) fn expire(&mut self, now: Timestamp, window_ns: u64) {
        for _ in 0..WINDOW_EXPIRIES_PER_COMMAND_MAX {
            match self.items.front() {
                Some(item) if item.at().saturating_add_nanos(window_ns) <= now => self.pop_front(),
                _ => break,
            }
        }
    }

    fn pop_front(&mut self) {
        let Some(item) = self.items.pop_front() else {
            return;
        };
        let key = item.key();
        // A newer item may have superseded this key; only drop the index if it is ours.
        if self.index.get(&key) == Some(&self.first_position) {
            self.index.remove(&key);
        }
        self.first_position += 1;
    }

    /// Checks that the index and the items agree, that items are in time order and none is
    /// later than `last`, and each item passes `item_ok`; for `Engine::verify`.
    pub(crate) fn verify(
        &self,
        last: Timestamp,
        item_ok: impl Fn(&T) -> Result<(), String>,
    ) -> Result<(), String> {
        for (key, &position) in &self.index {
            let offset = position
                .checked_sub(self.first_position)
                .ok_or("stale index entry")?;
            let item = self
                .items
                .get(offset as usize)
                .ok_or("index past the end")?;
            if item.key() != *key {
                return Err("index names the wrong item".into());
            }
        }
        let ordered = self
            .items
            .iter()
            .zip(self.items.iter().skip(1))
            .all(|(a, b)| a.at() <= b.at());
        if !ordered || self.items.back().is_some_and(|item| item.at() > last) {
            return Err("items out of time order".into());
        }
        self.items.iter().try_for_each(item_ok)
    }
}

/// A fixed, fast hasher for keys that are already well distributed integers (engine-assigned
/// ids, gateway-hashed idempotency keys). Fixed so that nothing depends on a random seed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FoldHasher(u64);

pub(crate) type FoldHasherBuilder = BuildHasherDefault<FoldHasher>;

const FOLD_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        // Multiply and fold so the top bits (which hashbrown uses for its tag) are mixed too.
        let product = u128::from(self.0) * u128::from(FOLD_MULTIPLIER);
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value)
            .rotate_left(23)
            .wrapping_mul(FOLD_MULTIPLIER);
    }

    fn write_u128(&mut self, value: u128) {
        self.write_u64(value as u64);
        self.write_u64((value >> 64) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Item(u64, Timestamp);

    impl WindowItem for Item {
        type Key = u64;
        fn key(&self) -> u64 {
            self.0
        }
        fn at(&self) -> Timestamp {
            self.1
        }
    }

    #[test]
    fn items_leave_by_time_and_by_capacity() {
        let mut window = Window::with_capacity(10);
        for key in 0..5 {
            window.push(Item(key, Timestamp(key * 10)), 3);
        }
        // Capacity 3: keys 0 and 1 were evicted early.
        assert_eq!(window.evicted_early, 2);
        assert!(window.get(1, Timestamp(40), 100).is_none());
        assert_eq!(
            window.get(2, Timestamp(40), 100),
            Some(&Item(2, Timestamp(20)))
        );
        // Window 25 ns at t=46: key 2 (t=20) is out even before it is removed, key 3 is in.
        assert!(window.get(2, Timestamp(46), 25).is_none());
        assert!(window.get(3, Timestamp(46), 25).is_some());
        window.expire(Timestamp(46), 25);
        assert_eq!(window.len(), 2);
        window
            .verify(Timestamp(1_000), |_| Ok(()))
            .expect("consistent");
    }

    #[test]
    fn reused_key_supersedes_a_stale_item() {
        let mut window = Window::with_capacity(10);
        window.push(Item(7, Timestamp(0)), 10);
        assert!(window.get(7, Timestamp(100), 50).is_none());
        window.push(Item(7, Timestamp(100)), 10);
        window.expire(Timestamp(100), 50);
        assert_eq!(
            window.get(7, Timestamp(100), 50),
            Some(&Item(7, Timestamp(100)))
        );
        window
            .verify(Timestamp(1_000), |_| Ok(()))
            .expect("consistent");
    }
}
