//! Readers tail the journal by seq on their own threads (the replicator, the Kafka publisher,
//! recovery, tools). They read only durable records, through their own file handles, so they
//! never block or slow the writer. Each holds a slot recording the seq it needs next, and
//! retention never removes a segment a reader still needs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::journal::{JournalError, READERS_MAX, Shared, io_error};
use crate::record::{HEADER_LEN, RecordHeader, record_len};
use crate::segment::{Cursor, Found, SEGMENT_HEADER_LEN};
use crate::storage::StorageReader;

/// One record as read: the header and the record's bytes (header and payload, no padding).
#[derive(Debug)]
pub struct RecordRef<'a> {
    pub header: RecordHeader,
    pub bytes: &'a [u8],
}

impl RecordRef<'_> {
    /// The payload; 16-byte aligned in memory, so rkyv can read it in place.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }
}

pub struct Reader<R: StorageReader> {
    storage: R,
    shared: Arc<Shared>,
    slot: usize,
    next_seq: u64,
    segment: u64,
    offset: u64,
    /// The seq of the record that belongs at `offset`: a segment is named by its first seq,
    /// and its records follow one another. Only a record with this seq is taken for the one
    /// there (see `peek`).
    offset_seq: u64,
    cursor: Option<Cursor<R::Segment>>,
}

impl<R: StorageReader> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("next_seq", &self.next_seq)
            .field("segment", &self.segment)
            .finish()
    }
}

impl<R: StorageReader> Reader<R> {
    pub(crate) fn register(
        storage: R,
        shared: Arc<Shared>,
        from_seq: u64,
    ) -> Result<Reader<R>, JournalError> {
        let slot = shared
            .readers
            .iter()
            .position(|s| {
                s.compare_exchange(0, from_seq, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or(JournalError::ReadersFull)?;
        let mut reader = Reader {
            storage,
            shared,
            slot,
            next_seq: from_seq,
            segment: 0,
            offset: 0,
            offset_seq: 0,
            cursor: None,
        };
        reader.seek(from_seq)?;
        Ok(reader)
    }

    /// The seq `next` returns next.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Positions at the segment holding `seq`; `next` skips forward to it.
    fn seek(&mut self, seq: u64) -> Result<(), JournalError> {
        let segments = self
            .storage
            .segments()
            .map_err(io_error(|| "listing segments"))?;
        let segment = segments.iter().rev().find(|&&first| first <= seq).copied();
        let first = segments.first().copied().unwrap_or(1);
        let segment = segment.ok_or(JournalError::Unavailable {
            seq,
            first,
            next: seq,
        })?;
        self.open_segment(segment)
    }

    fn open_segment(&mut self, segment: u64) -> Result<(), JournalError> {
        let describe = self.storage.describe(segment);
        let file = self
            .storage
            .open(segment)
            .map_err(io_error(|| format!("opening {describe}")))?;
        self.cursor = Some(Cursor::new(file).map_err(io_error(|| format!("reading {describe}")))?);
        self.segment = segment;
        self.offset = SEGMENT_HEADER_LEN;
        self.offset_seq = segment;
        Ok(())
    }

    /// The next durable record, or `None` when the reader has caught up with the durable seq.
    // Not `Iterator::next`: the record borrows the reader's buffer (a lending iterator).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<RecordRef<'_>>, JournalError> {
        loop {
            if self.next_seq > self.shared.durable_seq.load(Ordering::Acquire) {
                return Ok(None);
            }
            let (header, length) = match self.peek()? {
                Some(found) => found,
                None => {
                    self.open_segment(self.next_seq)?;
                    continue;
                }
            };
            let offset = self.offset;
            self.offset += record_len(length) as u64;
            self.offset_seq = header.seq + 1;
            if header.seq < self.next_seq {
                continue; // skipping forward to the seq asked for
            }
            self.next_seq = header.seq + 1;
            self.shared.readers[self.slot].store(self.next_seq, Ordering::Release);
            let cursor = self.cursor.as_mut().expect("positioned by seek");
            let bytes = cursor
                .bytes(offset, HEADER_LEN + length)
                .map_err(io_error(|| "reading record"))?;
            return Ok(Some(RecordRef { header, bytes }));
        }
    }

    /// The header at the current position, or `None` at the end of this segment's data.
    /// Called only when the record at `next_seq` is durable, so it is in this segment or
    /// starts the next one.
    fn peek(&mut self) -> Result<Option<(RecordHeader, usize)>, JournalError> {
        let mut peeked = self.look()?;
        if !matches!(peeked, Peeked::Record(header) if header.seq == self.offset_seq) {
            // The buffer may have been read before this durable record was written (when the
            // reader had caught up, or while the writer was copying it): read it again before
            // taking zeros for the end of the segment, a half-copied record for damage, or a
            // record of another seq for corruption. In a recycled segment that record can be a
            // whole, valid one of the file's earlier life (an older seq), read just past the
            // records then written; taken for a record this reader was skipping over, it would
            // have put every later read out of step.
            self.cursor.as_mut().expect("positioned by seek").refresh();
            peeked = self.look()?;
        }
        match peeked {
            Peeked::Record(header) if header.seq == self.offset_seq => {
                Ok(Some((header, header.length as usize)))
            }
            Peeked::Record(header) => Err(self.corrupt(format!(
                "seq {} where {} was expected",
                header.seq, self.offset_seq
            ))),
            Peeked::End => Ok(None),
            Peeked::Invalid(reason) => Err(self.corrupt(reason)),
        }
    }

    fn look(&mut self) -> Result<Peeked, JournalError> {
        let cursor = self.cursor.as_mut().expect("positioned by seek");
        let found = cursor
            .record_at(self.offset)
            .map_err(io_error(|| "reading record"))?;
        Ok(match found {
            Found::Record { header, .. } => Peeked::Record(header),
            Found::End => Peeked::End,
            Found::Invalid(error) => Peeked::Invalid(error.to_string()),
        })
    }

    fn corrupt(&self, reason: String) -> JournalError {
        JournalError::Corrupt {
            file: self.storage.describe(self.segment),
            offset: self.offset,
            reason,
        }
    }

    /// Waits up to `timeout` for more durable records; true if there are some.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.shared.wait_beyond(self.next_seq - 1, timeout)
    }
}

/// What `Reader::look` found, owned (a `Found` borrows the cursor's buffer).
enum Peeked {
    Record(RecordHeader),
    End,
    Invalid(String),
}

impl<R: StorageReader> Drop for Reader<R> {
    fn drop(&mut self) {
        self.shared.readers[self.slot].store(0, Ordering::Release);
    }
}

const _: () = assert!(READERS_MAX > 0);
