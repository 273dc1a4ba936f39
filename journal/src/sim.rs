//! Simulated storage for tests: memory only, deterministic (seeded), with the faults a real
//! disk and kernel can produce: torn writes and lost unflushed data at a crash, bit flips, and
//! failed flushes that silently drop the unflushed data (as Linux does on writeback errors).
//!
//! Each segment has a `durable` image (what survives a crash) and a `volatile` image (what
//! reads see, like the page cache). Writes go to `volatile` and are remembered as pending;
//! `flush` copies pending writes to `durable`; `crash` keeps a seeded random subset of pending
//! sectors, some of them torn, and resets `volatile` to `durable`.
//!
//! With `recycling`, retired segments keep their bytes in a bounded pool and `create` reuses
//! them (`Created::Recycled`), as real storage reuses retired files.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Created, SegmentRead, Storage, StorageReader};

/// The unit a crash keeps or loses (a disk sector).
pub const SIM_SECTOR_BYTES: u64 = 512;

#[derive(Debug, Default)]
struct SimSegment {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    /// Sector indexes written since the last successful flush.
    pending: std::collections::BTreeSet<u64>,
}

#[derive(Debug)]
struct SimDisk {
    segments: BTreeMap<u64, SimSegment>,
    /// Retired segments kept for `create` to reuse, at most `recycled_max`.
    recycled: Vec<SimSegment>,
    recycled_max: usize,
    rng: u64,
    fail_next_flushes: u32,
}

/// Shared handle: the storage, its readers and the test's fault controls see one disk.
#[derive(Clone, Debug)]
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
}

impl SimStorage {
    pub fn new(seed: u64) -> SimStorage {
        let disk = SimDisk {
            segments: BTreeMap::new(),
            recycled: Vec::new(),
            recycled_max: 0,
            rng: seed | 1,
            fail_next_flushes: 0,
        };
        SimStorage {
            disk: Arc::new(Mutex::new(disk)),
        }
    }

    /// Keeps up to `max` retired segments for `create` to reuse, stale bytes and all.
    pub fn recycling(self, max: usize) -> SimStorage {
        self.disk().recycled_max = max;
        self
    }

    fn disk(&self) -> MutexGuard<'_, SimDisk> {
        // A panic while holding the lock is a test failure already; keep the disk readable.
        self.disk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Power loss: every pending sector is kept, lost, or torn (a seeded random prefix kept).
    pub fn crash(&self) {
        let mut disk = self.disk();
        let mut rng = disk.rng;
        for segment in disk.segments.values_mut() {
            for sector in std::mem::take(&mut segment.pending) {
                let start = (sector * SIM_SECTOR_BYTES) as usize;
                let end = (start + SIM_SECTOR_BYTES as usize).min(segment.volatile.len());
                let kept = match next(&mut rng) % 3 {
                    0 => end,                                               // written
                    1 => start,                                             // lost
                    _ => start + (next(&mut rng) as usize % (end - start)), // torn
                };
                segment.durable[start..kept].copy_from_slice(&segment.volatile[start..kept]);
            }
            segment.volatile.clone_from(&segment.durable);
        }
        disk.rng = rng;
    }

    /// The next `count` flushes fail; their pending data is dropped from the durable image
    /// (but still reads back, as after a Linux writeback error).
    pub fn fail_next_flushes(&self, count: u32) {
        self.disk().fail_next_flushes = count;
    }

    /// Flips one bit of both images, as a media error would.
    pub fn flip_bit(&self, segment: u64, offset: u64, bit: u8) {
        let mut disk = self.disk();
        if let Some(s) = disk.segments.get_mut(&segment) {
            let at = offset as usize;
            if at < s.durable.len() {
                s.durable[at] ^= 1 << (bit % 8);
                s.volatile[at] ^= 1 << (bit % 8);
            }
        }
    }

    /// Overwrites bytes durably (to plant garbage or zeros in tests).
    pub fn overwrite(&self, segment: u64, offset: u64, bytes: &[u8]) {
        let mut disk = self.disk();
        if let Some(s) = disk.segments.get_mut(&segment) {
            let start = (offset as usize).min(s.durable.len());
            let end = (start + bytes.len()).min(s.durable.len());
            s.durable[start..end].copy_from_slice(&bytes[..end - start]);
            s.volatile[start..end].copy_from_slice(&bytes[..end - start]);
        }
    }
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*: small, seeded, good enough for fault choices.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn not_found(segment: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("sim segment {segment} does not exist"),
    )
}

impl Storage for SimStorage {
    type Reader = SimStorage;

    fn reader(&self) -> SimStorage {
        self.clone()
    }

    fn segments(&self) -> io::Result<Vec<u64>> {
        Ok(self.disk().segments.keys().copied().collect())
    }

    fn create(&mut self, segment: u64, len: u64) -> io::Result<Created> {
        let mut disk = self.disk();
        let reuse = disk
            .recycled
            .iter()
            .position(|s| s.volatile.len() as u64 == len);
        let (fresh, created) = match reuse {
            Some(index) => (disk.recycled.swap_remove(index), Created::Recycled),
            None => {
                let image = vec![0u8; len as usize];
                let fresh = SimSegment {
                    durable: image.clone(),
                    volatile: image,
                    pending: Default::default(),
                };
                (fresh, Created::Zeroed)
            }
        };
        disk.segments.insert(segment, fresh);
        Ok(created)
    }

    fn segment_len(&self, segment: u64) -> io::Result<u64> {
        let disk = self.disk();
        let s = disk
            .segments
            .get(&segment)
            .ok_or_else(|| not_found(segment))?;
        Ok(s.volatile.len() as u64)
    }

    fn write(&mut self, segment: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut disk = self.disk();
        let s = disk
            .segments
            .get_mut(&segment)
            .ok_or_else(|| not_found(segment))?;
        let start = offset as usize;
        let end = start + bytes.len();
        if end > s.volatile.len() {
            return Err(io::Error::other("write past the end of the segment"));
        }
        s.volatile[start..end].copy_from_slice(bytes);
        if !bytes.is_empty() {
            let (first, last) = (
                offset / SIM_SECTOR_BYTES,
                (end as u64 - 1) / SIM_SECTOR_BYTES,
            );
            s.pending.extend(first..=last);
        }
        Ok(())
    }

    fn flush(&mut self, segment: u64) -> io::Result<()> {
        let mut disk = self.disk();
        let failing = disk.fail_next_flushes > 0;
        if failing {
            disk.fail_next_flushes -= 1;
        }
        let s = disk
            .segments
            .get_mut(&segment)
            .ok_or_else(|| not_found(segment))?;
        let pending = std::mem::take(&mut s.pending);
        if failing {
            return Err(io::Error::other(
                "sim: injected flush failure (unflushed data dropped)",
            ));
        }
        for sector in pending {
            let start = (sector * SIM_SECTOR_BYTES) as usize;
            let end = (start + SIM_SECTOR_BYTES as usize).min(s.volatile.len());
            s.durable[start..end].copy_from_slice(&s.volatile[start..end]);
        }
        Ok(())
    }

    fn remove(&mut self, segment: u64) -> io::Result<()> {
        self.disk()
            .segments
            .remove(&segment)
            .map(|_| ())
            .ok_or_else(|| not_found(segment))
    }

    fn retire(&mut self, segment: u64) -> io::Result<()> {
        let mut disk = self.disk();
        let retired = disk
            .segments
            .remove(&segment)
            .ok_or_else(|| not_found(segment))?;
        if disk.recycled.len() < disk.recycled_max {
            disk.recycled.push(retired);
        }
        Ok(())
    }
}

impl StorageReader for SimStorage {
    type Segment = SimSegmentReader;

    fn segments(&self) -> io::Result<Vec<u64>> {
        Ok(self.disk().segments.keys().copied().collect())
    }

    fn open(&self, segment: u64) -> io::Result<SimSegmentReader> {
        if !self.disk().segments.contains_key(&segment) {
            return Err(not_found(segment));
        }
        Ok(SimSegmentReader {
            storage: self.clone(),
            segment,
        })
    }

    fn describe(&self, segment: u64) -> String {
        format!("sim segment {segment:020}")
    }
}

#[derive(Debug)]
pub struct SimSegmentReader {
    storage: SimStorage,
    segment: u64,
}

impl SegmentRead for SimSegmentReader {
    fn len(&self) -> io::Result<u64> {
        let disk = self.storage.disk();
        let s = disk
            .segments
            .get(&self.segment)
            .ok_or_else(|| not_found(self.segment))?;
        Ok(s.volatile.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let disk = self.storage.disk();
        let s = disk
            .segments
            .get(&self.segment)
            .ok_or_else(|| not_found(self.segment))?;
        let start = offset as usize;
        let bytes = s.volatile.get(start..start + buf.len());
        buf.copy_from_slice(bytes.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?);
        Ok(())
    }
}
