//! A bounded, time-ordered table: items enter in timestamp order, are found by key, and leave
//! when they are older than the window or when the table is full. It backs the idempotency
//! window, refundable payments and finished holds.

use std::collections::VecDeque;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use crate::changes::ChangeLog;
use crate::ids::Timestamp;

/// The most expired items removed per command: keeps one command's work bounded after an idle
/// gap. Each command adds at most one item per window, so removal still keeps pace.
pub const WINDOW_EXPIRIES_PER_COMMAND_MAX: usize = 64;

/// The index has at least this many slots per item of capacity (rounded up to a power of two),
/// so it is at most two-thirds full and a probe rarely leaves its first cache line.
const INDEX_SLOTS_PER_ITEM_MIN: (u64, u64) = (3, 2);
/// The smallest index, whatever the capacity.
const INDEX_SLOTS_MIN: usize = 8;

pub(crate) trait WindowItem {
    type Key: Copy + Eq + Hash;
    fn key(&self) -> Self::Key;
    fn at(&self) -> Timestamp;
}

/// Items in arrival order in a ring, found by key through an open-addressing index.
///
/// Each index slot is 8 bytes: the top 32 bits of the key's hash (its home slot and a tag)
/// and the low 32 bits of the item's position. Positions of items held differ by less than
/// the capacity (at most `CAPACITY_MAX`, below 2^32), so the low bits name one item. A lookup
/// reads one line of the index and, only on a tag match, the item; evicting the oldest item
/// finds its slot by value, without touching any other item. Deletion shifts the rest of the
/// probe run back (linear probing without tombstones), so the index never fills with dead
/// slots and never needs a rebuild.
#[derive(Clone, Debug)]
pub(crate) struct Window<T: WindowItem> {
    index: Vec<u64>,
    /// `index.len() - 1`; the length is a power of two.
    index_mask: usize,
    /// Bits of the hash that choose the home slot: `index.len() == 1 << index_bits`.
    index_bits: u32,
    /// The most items the index is sized for.
    capacity: u64,
    /// Slots in use: one per item, except items superseded by a later one with their key.
    used: usize,
    items: VecDeque<T>,
    /// The absolute position of `items[0]`; positions never repeat.
    first_position: u64,
    /// Items dropped because the table was full before their time was up.
    pub(crate) evicted_early: u64,
    /// Positions `get_mut` handed out since the last `sync_mirror`, for a snapshot mirror (at
    /// most `capacity`). Off for a window whose items never change.
    changes: ChangeLog<u64>,
}

/// A copy of a window's items, kept in step by [`Window::sync_mirror`] between snapshots.
#[derive(Debug)]
pub(crate) struct WindowMirror<T> {
    pub(crate) items: VecDeque<T>,
    /// The window position of `items[0]`.
    first_position: u64,
}

impl<T> WindowMirror<T> {
    /// Room for `capacity` items allocated up front (touched as used), so keeping the copy in
    /// step never regrows it.
    pub(crate) fn with_capacity(capacity: usize) -> WindowMirror<T> {
        WindowMirror {
            items: VecDeque::with_capacity(capacity),
            first_position: 0,
        }
    }
}

/// The index slots of a window sized for `capacity` items: at least `INDEX_SLOTS_PER_ITEM_MIN`
/// per item, a power of two (`usize::MAX` if there cannot be that many).
fn index_slots(capacity: u64) -> usize {
    let (numerator, denominator) = INDEX_SLOTS_PER_ITEM_MIN;
    usize::try_from(capacity.saturating_mul(numerator) / denominator + 1)
        .ok()
        .and_then(usize::checked_next_power_of_two)
        .unwrap_or(usize::MAX)
        .max(INDEX_SLOTS_MIN)
}

/// An empty index slot. A used slot never equals it: its tag has the low bit set.
const SLOT_EMPTY: u64 = 0;

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
    /// table later would rebuild it inside one command (a stall of seconds at millions of
    /// entries). Untouched capacity costs address space, not memory.
    pub(crate) fn with_capacity(capacity: u64) -> Window<T> {
        assert!(
            capacity < 1 << 31,
            "window capacity must leave positions distinct in 32 bits"
        );
        let slots = index_slots(capacity);
        Window {
            index: vec![SLOT_EMPTY; slots],
            index_mask: slots - 1,
            index_bits: slots.trailing_zeros(),
            capacity,
            used: 0,
            items: VecDeque::with_capacity(capacity as usize),
            first_position: 0,
            evicted_early: 0,
            changes: ChangeLog::Off,
        }
    }

    /// The bytes of address space `with_capacity(capacity)` reserves: its index, then its
    /// items.
    pub(crate) fn reserved_blocks(capacity: u64) -> [u128; 2] {
        let index = index_slots(capacity) as u128 * std::mem::size_of::<u64>() as u128;
        [index, capacity as u128 * std::mem::size_of::<T>() as u128]
    }

    /// Rebuilds a window from its items in order (from a snapshot). The index is sized for
    /// `capacity` or for the items, whichever is more, so a snapshot taken under a larger
    /// bound still restores whole.
    pub(crate) fn from_items(items: Vec<T>, evicted_early: u64, capacity: u64) -> Window<T> {
        let mut window = Window::with_capacity(capacity.max(items.len() as u64));
        window.evicted_early = evicted_early;
        for item in items {
            window.push_back(item);
        }
        window
    }

    /// From now on, records the items `get_mut` hands out, for `sync_mirror`.
    pub(crate) fn record_changes(&mut self) {
        self.changes = ChangeLog::start(self.capacity as usize);
    }

    /// Brings `mirror` in step: drops the items that left the window, copies the ones changed
    /// and the ones that entered since its last sync. Positions count every item ever pushed,
    /// so the copy can tell which items left and which are new. The copy is made again whole
    /// when `whole` is set (a mirror the caller cannot vouch for), when it does not overlap
    /// the window (another window's, or one that fell behind by more than the window holds),
    /// or when more changes came than were recorded.
    pub(crate) fn sync_mirror(&mut self, mirror: &mut WindowMirror<T>, whole: bool)
    where
        T: Clone,
    {
        let first = self.first_position;
        let end = first + self.items.len() as u64;
        let mirror_end = mirror.first_position + mirror.items.len() as u64;
        let lost = self.changes.is_overflowed();
        if whole || lost || mirror.first_position > first || mirror_end < first || mirror_end > end
        {
            mirror.items.clear();
            mirror.first_position = first;
        }
        let gone = (first - mirror.first_position) as usize;
        mirror.items.drain(..gone);
        mirror.first_position = first;
        self.changes.drain(|position| {
            let offset = position.wrapping_sub(first) as usize;
            if position >= first && offset < mirror.items.len() {
                mirror.items[offset].clone_from(&self.items[offset]);
            }
        });
        let held = mirror.items.len();
        mirror.items.extend(self.items.range(held..).cloned());
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn items(&self) -> impl ExactSizeIterator<Item = &T> {
        self.items.iter()
    }

    /// The live item with this key: one whose time is not up at `now`.
    pub(crate) fn get(&self, key: T::Key, now: Timestamp, window_ns: u64) -> Option<&T> {
        let offset = self.live_offset(key, now, window_ns)?;
        self.items.get(offset)
    }

    pub(crate) fn get_mut(
        &mut self,
        key: T::Key,
        now: Timestamp,
        window_ns: u64,
    ) -> Option<&mut T> {
        let offset = self.live_offset(key, now, window_ns)?;
        self.changes.record(self.first_position + offset as u64);
        self.items.get_mut(offset)
    }

    fn live_offset(&self, key: T::Key, now: Timestamp, window_ns: u64) -> Option<usize> {
        let (_, slot) = self.find_key(key)?;
        let offset = self.offset(slot);
        let item = &self.items[offset];
        (item.at().saturating_add_nanos(window_ns) > now).then_some(offset)
    }

    /// Loads the index slot where a probe for `key` starts (see `Engine::touch`).
    pub(crate) fn touch(&self, key: T::Key) {
        std::hint::black_box(self.index[self.home(self.tag(key))]);
    }

    /// The slot index and value holding `key`, if any.
    fn find_key(&self, key: T::Key) -> Option<(usize, u64)> {
        self.probe(self.tag(key), key).ok()
    }

    /// Walks the probe run from the tag's home: the slot index and value holding `key`, or
    /// the index of the empty slot that ends the run (where `key` would go).
    fn probe(&self, tag: u32, key: T::Key) -> Result<(usize, u64), usize> {
        let mut at = self.home(tag);
        loop {
            let slot = self.index[at];
            if slot == SLOT_EMPTY {
                return Err(at);
            }
            if slot_tag(slot) == tag && self.items[self.offset(slot)].key() == key {
                return Ok((at, slot));
            }
            at = (at + 1) & self.index_mask;
        }
    }

    /// The offset in `items` of the item a used slot names.
    fn offset(&self, slot: u64) -> usize {
        let offset = (slot as u32).wrapping_sub(self.first_position as u32) as usize;
        assert!(
            offset < self.items.len(),
            "window index points outside its items"
        );
        offset
    }

    /// The top 32 bits of the key's hash with the low bit set, so no tag is `SLOT_EMPTY`'s.
    fn tag(&self, key: T::Key) -> u32 {
        let hash = FoldHasherBuilder::default().hash_one(key);
        ((hash >> 32) as u32) | 1
    }

    /// The home slot of a tag: its top bits.
    fn home(&self, tag: u32) -> usize {
        (u64::from(tag) << 32 >> (64 - self.index_bits)) as usize
    }

    /// Adds an item at the back, first dropping the oldest items while the table is full.
    /// A stale (expired, not yet removed) item with the same key is superseded.
    pub(crate) fn push(&mut self, item: T, capacity: u64) {
        assert!(capacity > 0);
        assert!(
            capacity <= self.capacity,
            "window pushed beyond the capacity its index was sized for"
        );
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
        let key = item.key();
        let tag = self.tag(key);
        let position = self.first_position + self.items.len() as u64;
        let at = match self.probe(tag, key) {
            Ok((at, _)) => at, // a stale item with this key: the new one supersedes it
            Err(empty) => {
                // Items never outnumber `capacity`, and the index has half as many again.
                assert!(self.items.len() < self.index.len(), "window index full");
                self.used += 1;
                empty
            }
        };
        self.index[at] = slot_value(tag, position);
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
        let Some(item) = self.items.front() else {
            return;
        };
        // A newer item may have superseded this key: then no slot holds this position.
        let slot = slot_value(self.tag(item.key()), self.first_position);
        if let Some(at) = self.find_slot(slot) {
            self.remove_slot(at);
        }
        self.items.pop_front();
        self.first_position += 1;
    }

    /// The slot index holding exactly this slot value, if any.
    fn find_slot(&self, slot: u64) -> Option<usize> {
        let mut at = self.home(slot_tag(slot));
        loop {
            match self.index[at] {
                SLOT_EMPTY => return None,
                found if found == slot => return Some(at),
                _ => at = (at + 1) & self.index_mask,
            }
        }
    }

    /// Empties a slot and moves later slots of the run back into the hole when their home
    /// allows, so every key stays reachable from its home without crossing an empty slot.
    fn remove_slot(&mut self, mut hole: usize) {
        let mut at = hole;
        loop {
            at = (at + 1) & self.index_mask;
            let slot = self.index[at];
            if slot == SLOT_EMPTY {
                break;
            }
            let home = self.home(slot_tag(slot));
            // The slot may move to the hole unless its home lies cyclically in (hole, at].
            let distance_to_home = at.wrapping_sub(home) & self.index_mask;
            let distance_to_hole = at.wrapping_sub(hole) & self.index_mask;
            if distance_to_home >= distance_to_hole {
                self.index[hole] = slot;
                hole = at;
            }
        }
        self.index[hole] = SLOT_EMPTY;
        self.used -= 1;
    }

    /// Checks that the index and the items agree, that items are in time order and none is
    /// later than `last`, and each item passes `item_ok`; for `Engine::verify`.
    pub(crate) fn verify(
        &self,
        last: Timestamp,
        item_ok: impl Fn(&T) -> Result<(), String>,
    ) -> Result<(), String> {
        // Every item is indexed, or superseded by a later item with its key; and the slots
        // that name their own item are all the used slots, so none is stray. This walks the
        // items, not the index, which is sized for the bound and mostly empty.
        let mut self_named = 0usize;
        for (offset, item) in self.items.iter().enumerate() {
            let (_, slot) = self
                .find_key(item.key())
                .ok_or("item missing from the index")?;
            match self.offset(slot).cmp(&offset) {
                std::cmp::Ordering::Less => {
                    return Err("index names an older item than one it holds".into());
                }
                std::cmp::Ordering::Equal => self_named += 1,
                std::cmp::Ordering::Greater => {}
            }
        }
        if self_named != self.used {
            return Err("index holds slots that name no item".into());
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

/// A used slot: the tag, and the low 32 bits of the position.
fn slot_value(tag: u32, position: u64) -> u64 {
    (u64::from(tag) << 32) | u64::from(position as u32)
}

fn slot_tag(slot: u64) -> u32 {
    (slot >> 32) as u32
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
    fn reserved_blocks_match_what_a_window_allocates() {
        for capacity in [0, 1, 5, 6, 7, 1000, 1 << 20, 10_000_000] {
            let window: Window<Item> = Window::with_capacity(capacity);
            let allocated = [
                window.index.capacity() * std::mem::size_of::<u64>(),
                window.items.capacity() * std::mem::size_of::<Item>(),
            ];
            assert_eq!(
                Window::<Item>::reserved_blocks(capacity),
                allocated.map(|bytes| bytes as u128),
                "capacity {capacity}"
            );
        }
        // A bound no machine can hold is a number, not a panic.
        let [index, items] = Window::<Item>::reserved_blocks(u64::MAX);
        assert!(index + items > u64::MAX as u128);
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
    fn a_mirror_follows_pushes_evictions_and_changes_and_is_recopied_when_changes_overflow() {
        // Proves `sync_mirror`: the copy equals the window after items come, leave by time
        // and by capacity, and change through `get_mut`, including when the changes between
        // two syncs outnumber the window's capacity (then the copy is made whole).
        let items = |window: &Window<Item>| window.items().cloned().collect::<Vec<_>>();
        let copied = |mirror: &WindowMirror<Item>| mirror.items.iter().cloned().collect::<Vec<_>>();
        let mut window = Window::with_capacity(4);
        window.record_changes();
        let mut mirror = WindowMirror::with_capacity(4);
        window.sync_mirror(&mut mirror, false);
        for key in 0..6 {
            window.push(Item(key, Timestamp(key * 10)), 4);
            if let Some(item) = window.get_mut(key.saturating_sub(1), Timestamp(key * 10), 100) {
                item.1 = Timestamp(item.1.0 + 1); // changed in place, as a refund does
            }
            window.sync_mirror(&mut mirror, false);
            assert_eq!(copied(&mirror), items(&window), "after key {key}");
        }
        window.expire(Timestamp(43), 10);
        assert_eq!(window.len(), 2);
        for _ in 0..5 {
            window.get_mut(5, Timestamp(50), 100).expect("live").1.0 += 1;
        }
        assert!(window.changes.is_overflowed());
        window.sync_mirror(&mut mirror, false);
        assert_eq!(copied(&mirror), items(&window));
        assert_eq!(window.changes.recorded(), Some(&[][..]));
        // A copy the caller cannot vouch for is made whole.
        mirror.items[0].0 = 99;
        window.sync_mirror(&mut mirror, true);
        assert_eq!(copied(&mirror), items(&window));
    }

    /// Random pushes, expiries and lookups over few keys and a small index (so probe runs
    /// collide, wrap around the end and shift back on removal), against a plain list that
    /// finds the newest live item by a linear search.
    #[test]
    fn agrees_with_a_linear_search() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        #[derive(Clone, Debug)]
        enum Op {
            Push { key: u64, advance: u64 },
            Expire { advance: u64 },
            Get { key: u64 },
        }
        let op = prop_oneof![
            4 => (0..24u64, 0..4u64).prop_map(|(key, advance)| Op::Push { key, advance }),
            1 => (0..6u64).prop_map(|advance| Op::Expire { advance }),
            3 => (0..24u64).prop_map(|key| Op::Get { key }),
        ];
        let cases = (1..12u64, 1..30u64, proptest::collection::vec(op, 1..300));
        let mut runner = TestRunner::new(Config::with_cases(512));
        runner
            .run(&cases, |(capacity, window_ns, ops)| {
                let mut window = Window::with_capacity(capacity);
                let mut model: VecDeque<Item> = VecDeque::new();
                let mut now = 0u64;
                for op in ops {
                    match op {
                        Op::Push { key, advance } => {
                            now += advance;
                            window.push(Item(key, Timestamp(now)), capacity);
                            while model.len() as u64 >= capacity {
                                model.pop_front();
                            }
                            model.push_back(Item(key, Timestamp(now)));
                        }
                        Op::Expire { advance } => {
                            now += advance;
                            window.expire(Timestamp(now), window_ns);
                            let mut removed = 0;
                            while removed < WINDOW_EXPIRIES_PER_COMMAND_MAX
                                && model
                                    .front()
                                    .is_some_and(|item| item.1.0 + window_ns <= now)
                            {
                                model.pop_front();
                                removed += 1;
                            }
                        }
                        Op::Get { key } => {
                            let newest = model.iter().rev().find(|item| item.0 == key);
                            let live = newest.filter(|item| item.1.0 + window_ns > now);
                            prop_assert_eq!(window.get(key, Timestamp(now), window_ns), live);
                        }
                    }
                    prop_assert!(window.items().eq(model.iter()));
                    window
                        .verify(Timestamp(now), |_| Ok(()))
                        .map_err(TestCaseError::fail)?;
                }
                Ok(())
            })
            .expect("the window agrees with the linear search");
    }

    #[test]
    fn positions_past_32_bits_still_name_their_items() {
        // Slots keep only the low 32 bits of a position; a window that has seen 2^32 items
        // must still find, evict and verify across the wrap.
        let mut window = Window::with_capacity(4);
        window.first_position = u64::from(u32::MAX) - 2;
        for key in 0..12u64 {
            window.push(Item(key, Timestamp(key)), 4);
            window
                .verify(Timestamp(key), |_| Ok(()))
                .expect("consistent across the wrap");
        }
        assert!(window.first_position > u64::from(u32::MAX));
        assert!(window.get(7, Timestamp(11), 100).is_none(), "evicted");
        for key in 8..12u64 {
            assert_eq!(
                window.get(key, Timestamp(11), 100),
                Some(&Item(key, Timestamp(key)))
            );
        }
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
