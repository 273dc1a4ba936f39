//! The storage contract the journal is written against. Two implementations pass one
//! conformance suite: [`crate::MmapStorage`] (real files, mmap, fdatasync or io_uring) and
//! [`crate::SimStorage`] (in memory, with injected torn writes, lost unflushed data, bit flips
//! and failed flushes).
//!
//! A journal is a list of segments, each named by the seq of its first record. The contract:
//! - `create` returns only when the new segment (`len` bytes) and its name are durable; its
//!   bytes are zeros (`Created::Zeroed`) or, if it reuses a retired segment's file, that
//!   segment's old bytes (`Created::Recycled`);
//! - `write` copies bytes; they may be lost, wholly or in part (torn), until `flush` on that
//!   segment returns `Ok`;
//! - after `flush` returns `Ok`, every earlier write to that segment survives any crash
//!   (likewise for writes before `flush_start` once `flush_wait` returns `Ok`);
//! - a `flush` that returns `Err` may have lost any unflushed write, even ones that still read
//!   back (Linux drops dirty pages on writeback errors): the caller must never report them durable;
//! - `remove` deletes a segment durably (used only for segments no one needs); `retire` may
//!   instead keep its file for a later `create` to recycle, which takes it out of `segments`
//!   durably just the same;
//! - readers see every write made before the writer published it (they run on other threads).

use std::io;

/// What `Storage::create` made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// A zero-filled segment.
    Zeroed,
    /// A retired segment's file under the new name: its old bytes are still in it.
    Recycled,
}

pub trait Storage: Send + 'static {
    type Reader: StorageReader;

    /// A handle for reading from other threads.
    fn reader(&self) -> Self::Reader;

    /// Segment ids (each the seq of its first record), ascending.
    fn segments(&self) -> io::Result<Vec<u64>>;

    /// Creates a segment of `len` bytes, durably: zero-filled, or a retired one recycled.
    fn create(&mut self, segment: u64, len: u64) -> io::Result<Created>;

    /// A hint that segments of `len` bytes will be created: real storage starts preparing
    /// one in the background, so the first roll does not wait for it.
    fn prepare(&mut self, _len: u64) {}

    fn segment_len(&self, segment: u64) -> io::Result<u64>;

    /// Copies `bytes` into `segment` at `offset`. Not durable until `flush`.
    fn write(&mut self, segment: u64, offset: u64, bytes: &[u8]) -> io::Result<()>;

    /// Makes every earlier write to `segment` durable, blocking on the caller's thread.
    fn flush(&mut self, segment: u64) -> io::Result<()>;

    /// Starts making every earlier write to `segment` durable; `flush_wait` finishes. Writes
    /// made after the start are not covered. The default is a whole `flush`.
    fn flush_start(&mut self, segment: u64) -> io::Result<()> {
        self.flush(segment)
    }

    /// Waits for every started flush. An error means any of them may have failed.
    fn flush_wait(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Deletes `segment` durably.
    fn remove(&mut self, segment: u64) -> io::Result<()>;

    /// Takes `segment`, which no one needs any more, out of the journal durably, like
    /// `remove`; storage that recycles keeps its file for a later `create`.
    fn retire(&mut self, segment: u64) -> io::Result<()> {
        self.remove(segment)
    }
}

pub trait StorageReader: Clone + Send + Sync + 'static {
    type Segment: SegmentRead;

    fn segments(&self) -> io::Result<Vec<u64>>;

    /// Opens one segment for reading; the handle reads at any offset without seeking.
    fn open(&self, segment: u64) -> io::Result<Self::Segment>;

    /// A name for error messages (a file path for real storage).
    fn describe(&self, segment: u64) -> String;
}

// A segment has a length in bytes, not a count of elements that could be "empty".
#[allow(clippy::len_without_is_empty)]
pub trait SegmentRead: Send {
    fn len(&self) -> io::Result<u64>;

    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}
