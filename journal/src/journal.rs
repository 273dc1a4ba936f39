//! The journal: a gap-free, hash-chained, append-only log of records across segments, with
//! group commit (`append` many, `flush` once) and crash recovery on `open`.
//!
//! Recovery tells a torn tail from corruption with the records' durable watermarks. A flush
//! covers everything written before it, so loss after a crash can only hit records written
//! after the last successful flush, and no later record can vouch for them. If a damaged or
//! missing record at seq n is followed anywhere by a valid record whose watermark is >= n,
//! then n had been durable: that is corruption, a hard error naming file and offset. Otherwise
//! the damage is a torn tail: it is zeroed and recovery ends before it.
//!
//! A recycled segment (segment.rs) holds stale bytes after its data. Recovery ends its data at
//! the first record that does not continue the log, as at a torn tail, and looks for the same
//! evidence in the stale rest; without any, it only writes the end marker there again.
//!
//! Recovery reads what readers see, which after a killed process or a failed flush includes
//! writes that never reached the disk. So before reporting the recovered records durable it
//! writes again, and flushes, every record no later watermark vouches for.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::reader::Reader;
use crate::record::{
    HEADER_LEN, PAYLOAD_BYTES_MAX, RECORD_ALIGN, RecordHeader, RecordKind, record_hash, record_len,
    restamp_watermark,
};
use crate::segment::{
    Cursor, END_MARKER_ALIGN, Found, SEGMENT_HEADER_LEN, SegmentHeader, end_marker_len,
};
use crate::storage::{Created, SegmentRead, Storage, StorageReader};

/// Readers (replicator, Kafka publisher, tools) that may tail one journal at once.
pub const READERS_MAX: usize = 16;
/// The default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 << 20;
/// The smallest segment that holds a header and one 4 KiB record (tests use small ones).
pub const SEGMENT_BYTES_MIN: u64 = 8 << 10;
/// The zeros of the longest end marker (`end_marker_len`).
static END_MARKER_ZEROS: [u8; (END_MARKER_ALIGN as usize) + HEADER_LEN] =
    [0; (END_MARKER_ALIGN as usize) + HEADER_LEN];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    pub segment_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> JournalConfig {
        JournalConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

#[derive(Debug)]
pub enum JournalError {
    Io {
        context: String,
        source: io::Error,
    },
    /// Damage before durable data: the operator must look (`payu journal verify`).
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// A flush failed earlier; nothing more is accepted or reported durable. Reopen to recover.
    Poisoned,
    PayloadTooLarge {
        len: usize,
        max: usize,
    },
    /// A record offered by replication that does not continue this journal.
    Rejected(String),
    /// A reader asked for a seq that retention already removed, or that never existed.
    Unavailable {
        seq: u64,
        first: u64,
        next: u64,
    },
    ReadersFull,
    InvalidConfig(String),
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Io { context, source } => write!(f, "{context}: {source}"),
            JournalError::Corrupt {
                file,
                offset,
                reason,
            } => {
                write!(f, "journal corrupt in {file} at offset {offset}: {reason}")
            }
            JournalError::Poisoned => {
                f.write_str("journal stopped after a failed flush; reopen it")
            }
            JournalError::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes exceeds the maximum of {max}")
            }
            JournalError::Rejected(reason) => write!(f, "replicated record rejected: {reason}"),
            JournalError::Unavailable { seq, first, next } => {
                write!(
                    f,
                    "seq {seq} is not in the journal (it holds {first}..{next})"
                )
            }
            JournalError::ReadersFull => write!(f, "all {READERS_MAX} reader slots are in use"),
            JournalError::InvalidConfig(reason) => write!(f, "invalid journal config: {reason}"),
        }
    }
}

impl std::error::Error for JournalError {}

/// Wraps an I/O error with context, built only if there is an error (recovery and readers
/// call this once per record).
pub(crate) fn io_error<C: Into<String>>(
    context: impl FnOnce() -> C,
) -> impl FnOnce(io::Error) -> JournalError {
    move |source| JournalError::Io {
        context: context().into(),
        source,
    }
}

/// What `open` found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The oldest seq still stored (1 unless retention removed segments).
    pub first_seq: u64,
    /// The last valid record's seq (0 for an empty journal).
    pub last_seq: u64,
    /// Bytes of torn tail zeroed (in a recycled segment: the end marker written over it).
    pub truncated_bytes: u64,
    /// Segments after the torn tail that were removed.
    pub removed_segments: Vec<u64>,
}

/// State the writer publishes to readers on other threads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) durable_seq: AtomicU64,
    pub(crate) first_seq: AtomicU64,
    /// Each reader's next seq; 0 marks a free slot.
    pub(crate) readers: [AtomicU64; READERS_MAX],
    flushed: Mutex<u64>,
    flushed_signal: Condvar,
}

impl Shared {
    fn publish(&self, durable_seq: u64) {
        self.durable_seq.store(durable_seq, Ordering::Release);
        let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        *flushed = durable_seq;
        self.flushed_signal.notify_all();
    }

    /// Waits until a record after `seq` is durable, or `timeout` passes.
    pub(crate) fn wait_beyond(&self, seq: u64, timeout: Duration) -> bool {
        let flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
        let (flushed, _) = self
            .flushed_signal
            .wait_timeout_while(flushed, timeout, |durable| *durable <= seq)
            .unwrap_or_else(|p| p.into_inner());
        *flushed > seq
    }
}

#[derive(Debug)]
pub struct Journal<S: Storage> {
    storage: S,
    config: JournalConfig,
    /// Segment ids ascending; the last one is being appended to.
    segments: Vec<u64>,
    write_offset: u64,
    /// The segment being appended to is recycled: it gets an end marker after its data.
    tail_recycled: bool,
    /// Segments written since the last flush.
    dirty: BTreeSet<u64>,
    next_seq: u64,
    last_hash: u128,
    last_epoch: u64,
    durable_seq: u64,
    /// The seq a started group commit will make durable.
    flushing: Option<u64>,
    poisoned: bool,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
}

impl<S: Storage> Journal<S> {
    /// Opens a journal, creating it if the storage is empty, and recovers it: the torn tail
    /// (if any) is zeroed, every remaining record is checked (CRC, seq, hash chain).
    pub fn open(storage: S, config: JournalConfig) -> Result<(Journal<S>, Recovery), JournalError> {
        if config.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(JournalError::InvalidConfig(format!(
                "segment_bytes must be at least {SEGMENT_BYTES_MIN}"
            )));
        }
        let mut journal = Journal {
            storage,
            config,
            segments: Vec::new(),
            write_offset: SEGMENT_HEADER_LEN,
            tail_recycled: false,
            dirty: BTreeSet::new(),
            next_seq: 1,
            last_hash: 0,
            last_epoch: 0,
            durable_seq: 0,
            flushing: None,
            poisoned: false,
            shared: Arc::new(Shared {
                durable_seq: AtomicU64::new(0),
                first_seq: AtomicU64::new(1),
                readers: std::array::from_fn(|_| AtomicU64::new(0)),
                flushed: Mutex::new(0),
                flushed_signal: Condvar::new(),
            }),
            scratch: Vec::new(),
        };
        let recovery = journal.recover()?;
        journal.storage.prepare(config.segment_bytes);
        Ok((journal, recovery))
    }

    fn recover(&mut self) -> Result<Recovery, JournalError> {
        self.segments = self
            .storage
            .segments()
            .map_err(io_error(|| "listing segments"))?;
        let mut recovery = Recovery {
            first_seq: 1,
            last_seq: 0,
            truncated_bytes: 0,
            removed_segments: Vec::new(),
        };
        if self.segments.is_empty() {
            self.start_segment(1)?;
            self.flush()?;
            return Ok(recovery);
        }
        recovery.first_seq = self.segments[0];
        self.next_seq = self.segments[0];
        let reader = self.storage.reader();
        let mut unconfirmed = Unconfirmed::default();
        let mut index = 0;
        while index < self.segments.len() {
            match self.scan_segment(&reader, index, &mut unconfirmed, &mut recovery)? {
                Scan::Complete => index += 1,
                Scan::Damaged { offset, reason } => {
                    self.repair_tail(&reader, index, offset, &reason, &mut recovery)?;
                    break;
                }
            }
        }
        self.confirm(&reader, &unconfirmed)?;
        recovery.last_seq = self.flush()?;
        self.shared
            .first_seq
            .store(recovery.first_seq, Ordering::Release);
        Ok(recovery)
    }

    /// Writes again every record (and segment header) that no watermark vouches for, so the
    /// flush that follows makes durable what recovery is about to report durable: what it read
    /// may have been only in the page cache.
    fn confirm(
        &mut self,
        reader: &S::Reader,
        unconfirmed: &Unconfirmed,
    ) -> Result<(), JournalError> {
        let mut ranges: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for &(segment, offset, end) in &unconfirmed.records {
            ranges.entry(segment).or_insert((offset, end)).1 = end;
        }
        for &segment in self.segments.iter().filter(|&&s| s > unconfirmed.watermark) {
            ranges.entry(segment).or_insert((0, SEGMENT_HEADER_LEN)).0 = 0;
        }
        for (segment, (start, end)) in ranges {
            let mut bytes = vec![0u8; (end - start) as usize];
            reader
                .open(segment)
                .and_then(|s| s.read_at(start, &mut bytes))
                .map_err(io_error(|| format!("reading {}", reader.describe(segment))))?;
            self.storage
                .write(segment, start, &bytes)
                .map_err(io_error(|| format!("rewriting segment {segment}")))?;
            self.dirty.insert(segment);
        }
        Ok(())
    }

    /// Validates one segment's header and records, advancing the chain state. On return the
    /// write position is at the end of this segment's data.
    fn scan_segment(
        &mut self,
        reader: &S::Reader,
        index: usize,
        unconfirmed: &mut Unconfirmed,
        recovery: &mut Recovery,
    ) -> Result<Scan, JournalError> {
        let id = self.segments[index];
        let describe = || reader.describe(id);
        let segment = reader
            .open(id)
            .map_err(io_error(|| format!("opening {}", describe())))?;
        let mut cursor =
            Cursor::new(segment).map_err(io_error(|| format!("reading {}", describe())))?;
        let header_bytes = cursor
            .header()
            .map_err(io_error(|| format!("reading {}", describe())))?;
        match SegmentHeader::decode(&header_bytes) {
            Ok(h)
                if h.first_seq == id
                    && h.first_seq == self.next_seq
                    && h.length == cursor.length() =>
            {
                if index > 0 && h.prev_hash != self.last_hash {
                    return Ok(Scan::Damaged {
                        offset: 0,
                        reason: "segment header breaks the hash chain".into(),
                    });
                }
                self.last_hash = h.prev_hash;
                self.tail_recycled = h.recycled;
            }
            Ok(h) => {
                let reason = format!(
                    "segment header says first seq {} and {} bytes; expected seq {} and {} bytes",
                    h.first_seq,
                    h.length,
                    self.next_seq,
                    cursor.length()
                );
                return Ok(Scan::Damaged { offset: 0, reason });
            }
            Err(reason) => return Ok(Scan::Damaged { offset: 0, reason }),
        }
        let last = index + 1 == self.segments.len();
        let mut offset = SEGMENT_HEADER_LEN;
        loop {
            let found = cursor
                .record_at(offset)
                .map_err(io_error(|| format!("reading {}", describe())))?;
            match found {
                Found::End => break,
                Found::Invalid(error) => {
                    if self.data_ends_here(reader, index, last)? {
                        break; // stray bytes in the unused end: cleared or marked below
                    }
                    return Ok(Scan::Damaged {
                        offset,
                        reason: error.to_string(),
                    });
                }
                Found::Record { header, bytes } => {
                    if let Err(reason) = self.check_continues(&header) {
                        if self.data_ends_here(reader, index, last)? {
                            break;
                        }
                        return Ok(Scan::Damaged { offset, reason });
                    }
                    let header_bytes: &[u8; HEADER_LEN] =
                        bytes[..HEADER_LEN].try_into().expect("len");
                    self.last_hash = record_hash(header_bytes, &bytes[HEADER_LEN..]);
                    self.last_epoch = header.epoch;
                    self.next_seq += 1;
                    let end = offset + record_len(header.length as usize) as u64;
                    unconfirmed.push(&header, id, offset, end);
                    offset = end;
                }
            }
        }
        self.write_offset = offset;
        if last && self.tail_recycled {
            // Stale records after the data are expected; a record that vouches for a lost
            // durable one is not (the damage path below reports it as corruption).
            if find_durable_evidence(reader, &self.segments[index..], offset, self.next_seq)?
                .is_some()
            {
                let reason = "the data of a recycled segment ends".to_string();
                return Ok(Scan::Damaged { offset, reason });
            }
            recovery.truncated_bytes += self.mark_end(&mut cursor, id, offset)?;
            return Ok(Scan::Complete);
        }
        // Bytes after the end of the last segment's data are a torn tail (sectors of lost
        // records that did reach the disk) or damage: left there, they would lie in wait for
        // a later recovery that finds them at the end of a full segment.
        if last
            && cursor
                .any_nonzero_from(offset)
                .map_err(io_error(|| format!("reading {}", describe())))?
        {
            let reason = "bytes after the end of the data".to_string();
            return Ok(Scan::Damaged { offset, reason });
        }
        // A segment ends early only where the next record did not fit; a missing next
        // segment is the end of the journal, a next segment must start right here.
        if let Some(&next) = self.segments.get(index + 1) {
            if next != self.next_seq {
                let reason = format!(
                    "next segment starts at seq {next}, expected {}",
                    self.next_seq
                );
                return Ok(Scan::Damaged { offset, reason });
            }
            match self.tail_recycled {
                true => _ = self.mark_end(&mut cursor, id, offset)?,
                false => self.clear_gap(&mut cursor, id, offset)?,
            }
        }
        Ok(Scan::Complete)
    }

    /// Writes a recycled segment's end marker at `offset` unless one is there, and returns
    /// the bytes written. Stale bytes after it stay: nothing reads past the marker.
    fn mark_end<R: SegmentRead>(
        &mut self,
        cursor: &mut Cursor<R>,
        segment: u64,
        offset: u64,
    ) -> Result<u64, JournalError> {
        let len = end_marker_len(offset, cursor.length());
        let marked = cursor
            .bytes(offset, len as usize)
            .map_err(io_error(|| format!("reading segment {segment}")))?
            .iter()
            .all(|&b| b == 0);
        if marked {
            return Ok(0);
        }
        self.storage
            .write(segment, offset, &END_MARKER_ZEROS[..len as usize])
            .map_err(io_error(|| format!("marking the end of segment {segment}")))?;
        self.dirty.insert(segment);
        Ok(len)
    }

    /// Whether bytes at the scan position that are not the next record end the data of the
    /// segment at `index`: in the last segment if it is recycled (stale bytes follow its data;
    /// the evidence check after the scan tells a torn tail from damage), elsewhere if the next
    /// segment starts right here.
    fn data_ends_here(
        &self,
        reader: &S::Reader,
        index: usize,
        last: bool,
    ) -> Result<bool, JournalError> {
        Ok((last && self.tail_recycled) || self.next_segment_continues(reader, index)?)
    }

    /// Whether the segment after `index` starts exactly where the scan stands (its first seq
    /// is the next seq and its header chains from the last record). Then this segment's data
    /// has ended, and bytes at the scan position are not a record: a record that did not fit
    /// here was written at the start of that next segment.
    fn next_segment_continues(
        &self,
        reader: &S::Reader,
        index: usize,
    ) -> Result<bool, JournalError> {
        let Some(&next) = self.segments.get(index + 1) else {
            return Ok(false);
        };
        let describe = || reader.describe(next);
        let segment = reader
            .open(next)
            .map_err(io_error(|| format!("opening {}", describe())))?;
        let header = Cursor::new(segment)
            .and_then(|mut cursor| cursor.header())
            .map_err(io_error(|| format!("reading {}", describe())))?;
        Ok(matches!(
            SegmentHeader::decode(&header),
            Ok(h) if h.first_seq == next && next == self.next_seq && h.prev_hash == self.last_hash
        ))
    }

    /// Zeroes stray bytes in the unused end of a segment the journal continued after. The
    /// writer never writes there (a record that does not fit goes to the next segment), so
    /// they are damage to unused space: harmless, but cleared so that nothing after the
    /// recovered records is ever garbage.
    fn clear_gap<R: SegmentRead>(
        &mut self,
        cursor: &mut Cursor<R>,
        segment: u64,
        offset: u64,
    ) -> Result<(), JournalError> {
        let stray = cursor
            .any_nonzero_from(offset)
            .map_err(io_error(|| format!("reading segment {segment}")))?;
        if stray {
            let zeros = vec![0u8; (cursor.length() - offset) as usize];
            self.storage
                .write(segment, offset, &zeros)
                .map_err(io_error(|| format!("zeroing segment {segment}")))?;
            self.dirty.insert(segment);
        }
        Ok(())
    }

    fn check_continues(&self, header: &RecordHeader) -> Result<(), String> {
        if header.seq != self.next_seq {
            return Err(format!(
                "record seq {} where {} was expected",
                header.seq, self.next_seq
            ));
        }
        if header.prev_hash != self.last_hash {
            return Err(format!("record {} breaks the hash chain", header.seq));
        }
        if header.epoch < self.last_epoch {
            return Err(format!(
                "record {} has epoch {} after {}",
                header.seq, header.epoch, self.last_epoch
            ));
        }
        Ok(())
    }

    /// Damage at (`index`, `offset`): a hard error if a later valid record shows the damaged
    /// seq was durable, otherwise the torn tail is zeroed and later segments removed.
    fn repair_tail(
        &mut self,
        reader: &S::Reader,
        index: usize,
        offset: u64,
        reason: &str,
        recovery: &mut Recovery,
    ) -> Result<(), JournalError> {
        let id = self.segments[index];
        let evidence =
            find_durable_evidence(reader, &self.segments[index..], offset, self.next_seq)?;
        if let Some(evidence) = evidence {
            return Err(JournalError::Corrupt {
                file: reader.describe(id),
                offset,
                reason: format!(
                    "{reason}; yet {evidence}, so seq {} had been durable",
                    self.next_seq
                ),
            });
        }
        for &later in &self.segments[index + 1..] {
            self.storage
                .remove(later)
                .map_err(io_error(|| format!("removing segment {later}")))?;
            recovery.removed_segments.push(later);
        }
        self.segments.truncate(index + 1);
        if offset == 0 {
            // The segment's own header is damaged and nothing in it was durable: start it over.
            self.storage
                .remove(id)
                .map_err(io_error(|| format!("removing segment {id}")))?;
            recovery.removed_segments.push(id);
            self.segments.pop();
            recovery.truncated_bytes += self.config.segment_bytes;
            // The segment before ended where the next must start (`scan_segment` checked
            // its unused end): it needs no end marker from the roll.
            self.tail_recycled = false;
            self.start_segment(self.next_seq)?;
        } else {
            let length = self
                .storage
                .segment_len(id)
                .map_err(io_error(|| format!("sizing segment {id}")))?;
            let zeros = vec![0u8; (length - offset) as usize];
            self.storage
                .write(id, offset, &zeros)
                .map_err(io_error(|| format!("zeroing segment {id}")))?;
            self.dirty.insert(id);
            recovery.truncated_bytes += zeros.len() as u64;
            self.write_offset = offset;
        }
        self.flush()?;
        if recovery.first_seq > self.next_seq {
            recovery.first_seq = self.next_seq;
        }
        Ok(())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), JournalError> {
        self.write_end_marker()?; // the segment being left, if recycled
        let length = self.config.segment_bytes;
        let created = self
            .storage
            .create(first_seq, length)
            .map_err(io_error(|| format!("creating segment {first_seq}")))?;
        let recycled = created == Created::Recycled;
        let header = SegmentHeader {
            first_seq,
            length,
            prev_hash: self.last_hash,
            recycled,
        }
        .encode();
        self.storage
            .write(first_seq, 0, &header)
            .map_err(io_error(|| format!("writing segment {first_seq}")))?;
        self.segments.push(first_seq);
        self.dirty.insert(first_seq);
        self.write_offset = SEGMENT_HEADER_LEN;
        self.tail_recycled = recycled;
        self.write_end_marker()
    }

    /// In a recycled segment, zeros after the appended data (`end_marker_len`): readers and
    /// recovery find the end there as in a zero-filled segment. Not advanced past: the next
    /// append overwrites it. Written before every flush and at the roll to the next segment.
    fn write_end_marker(&mut self) -> Result<(), JournalError> {
        let Some(&segment) = self.segments.last() else {
            return Ok(());
        };
        if !self.tail_recycled {
            return Ok(());
        }
        let len = end_marker_len(self.write_offset, self.config.segment_bytes) as usize;
        if let Err(source) =
            self.storage
                .write(segment, self.write_offset, &END_MARKER_ZEROS[..len])
        {
            self.poisoned = true;
            return Err(JournalError::Io {
                context: format!("marking the end of segment {segment}"),
                source,
            });
        }
        self.dirty.insert(segment);
        Ok(())
    }

    /// The largest payload this journal accepts: its padded record fits an empty segment.
    pub fn payload_max(&self) -> usize {
        let align = RECORD_ALIGN as u64;
        let record_room = (self.config.segment_bytes - SEGMENT_HEADER_LEN) / align * align;
        ((record_room - HEADER_LEN as u64) as usize).min(PAYLOAD_BYTES_MAX)
    }

    /// Appends one record; durable only after the next successful `flush`.
    pub fn append(
        &mut self,
        epoch: u64,
        timestamp: u64,
        payload: &[u8],
    ) -> Result<u64, JournalError> {
        self.check_writable()?;
        if payload.len() > self.payload_max() {
            return Err(JournalError::PayloadTooLarge {
                len: payload.len(),
                max: self.payload_max(),
            });
        }
        if epoch < self.last_epoch {
            return Err(JournalError::Rejected(format!(
                "epoch {epoch} is below {}",
                self.last_epoch
            )));
        }
        let header = RecordHeader {
            kind: RecordKind::Command,
            length: payload.len() as u32,
            crc32c: 0,
            seq: self.next_seq,
            epoch,
            timestamp,
            prev_hash: self.last_hash,
            durable_watermark: self.durable_seq,
        };
        let header_bytes = header.encode(payload);
        self.write_record(&header_bytes, payload, epoch)
    }

    /// Appends a record received from the primary, byte for byte but for the node-local
    /// watermark. It must continue this journal: next seq, same chain, no lower epoch.
    pub fn append_replicated(&mut self, record: &[u8]) -> Result<u64, JournalError> {
        self.check_writable()?;
        let reject = |reason: String| JournalError::Rejected(reason);
        let header_bytes: [u8; HEADER_LEN] = record
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| reject("shorter than a header".into()))?;
        let header = RecordHeader::decode(&header_bytes).map_err(|e| reject(e.to_string()))?;
        let payload = &record[HEADER_LEN..];
        header
            .verify(&header_bytes, payload)
            .map_err(|e| reject(e.to_string()))?;
        self.check_continues(&header).map_err(reject)?;
        if payload.len() > self.payload_max() {
            return Err(JournalError::PayloadTooLarge {
                len: payload.len(),
                max: self.payload_max(),
            });
        }
        let mut header_bytes = header_bytes;
        restamp_watermark(&mut header_bytes, payload, self.durable_seq);
        self.write_record(&header_bytes, payload, header.epoch)
    }

    fn check_writable(&self) -> Result<(), JournalError> {
        match self.poisoned {
            true => Err(JournalError::Poisoned),
            false => Ok(()),
        }
    }

    fn write_record(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
        epoch: u64,
    ) -> Result<u64, JournalError> {
        let length = record_len(payload.len());
        if self.write_offset + length as u64 > self.config.segment_bytes {
            self.start_segment(self.next_seq)?;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(header);
        self.scratch.extend_from_slice(payload);
        self.scratch.resize(length, 0);
        let segment = *self
            .segments
            .last()
            .expect("a journal always has a segment");
        let written = self
            .storage
            .write(segment, self.write_offset, &self.scratch);
        if let Err(source) = written {
            self.poisoned = true;
            return Err(JournalError::Io {
                context: format!("appending to segment {segment}"),
                source,
            });
        }
        self.dirty.insert(segment);
        self.write_offset += length as u64;
        self.last_hash = record_hash(header, payload);
        self.last_epoch = epoch;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Group commit: one flush per written segment makes every appended record durable.
    /// Returns the durable seq. A failure poisons the journal: nothing after the last
    /// successful flush is ever reported durable.
    pub fn flush(&mut self) -> Result<u64, JournalError> {
        self.flush_start()?;
        self.flush_wait()
    }

    /// Starts a group commit of every record appended so far and returns the seq it will
    /// make durable. Appends may go on while it runs (with io_uring the fdatasync runs in the
    /// kernel); `flush_wait` finishes it. A group commit already in flight is finished first.
    pub fn flush_start(&mut self) -> Result<u64, JournalError> {
        self.flush_dirty(S::flush_start)?;
        let target = self.next_seq - 1;
        self.flushing = Some(target);
        Ok(target)
    }

    /// A whole group commit on the caller's thread (`Storage::flush`: for files, the
    /// fdatasync syscall without io_uring), for when nothing could run while it does: the
    /// pipeline's engine thread when the ring is empty. Returns the durable seq.
    pub fn flush_now(&mut self) -> Result<u64, JournalError> {
        self.flush_dirty(S::flush)?;
        self.durable_seq = self.next_seq - 1;
        self.shared.publish(self.durable_seq);
        Ok(self.durable_seq)
    }

    /// Finishes a group commit in flight, then applies `flush` to every segment written since
    /// the last one. A failure poisons the journal.
    fn flush_dirty(
        &mut self,
        flush: impl Fn(&mut S, u64) -> io::Result<()>,
    ) -> Result<(), JournalError> {
        if self.flushing.is_some() {
            self.flush_wait()?;
        }
        self.check_writable()?;
        if self.segments.last().is_some_and(|s| self.dirty.contains(s)) {
            self.write_end_marker()?;
        }
        for &segment in &self.dirty {
            if let Err(source) = flush(&mut self.storage, segment) {
                self.poisoned = true;
                return Err(JournalError::Io {
                    context: format!("flushing segment {segment}"),
                    source,
                });
            }
        }
        self.dirty.clear();
        Ok(())
    }

    /// Finishes the group commit in flight and returns the durable seq.
    pub fn flush_wait(&mut self) -> Result<u64, JournalError> {
        self.check_writable()?;
        let Some(target) = self.flushing.take() else {
            return Ok(self.durable_seq);
        };
        if let Err(source) = self.storage.flush_wait() {
            self.poisoned = true;
            return Err(JournalError::Io {
                context: "flushing".into(),
                source,
            });
        }
        self.durable_seq = target;
        self.shared.publish(self.durable_seq);
        Ok(self.durable_seq)
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The seq the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest seq still stored.
    pub fn first_seq(&self) -> u64 {
        self.shared.first_seq.load(Ordering::Acquire)
    }

    /// The chain hash of the last record (0 for an empty journal).
    pub fn last_hash(&self) -> u128 {
        self.last_hash
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Opens readers later, from any thread, while the journal itself is owned elsewhere (the
    /// gateway reads a journaled answer back for an idempotent replay).
    pub fn readers(&self) -> Readers<S::Reader> {
        Readers {
            storage: self.storage.reader(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// A reader that yields durable records from `from_seq` on, on any thread.
    pub fn reader(&self, from_seq: u64) -> Result<Reader<S::Reader>, JournalError> {
        let first = self.first_seq();
        if from_seq < first || from_seq > self.next_seq {
            return Err(JournalError::Unavailable {
                seq: from_seq,
                first,
                next: self.next_seq,
            });
        }
        Reader::register(self.storage.reader(), Arc::clone(&self.shared), from_seq)
    }

    /// Retention: removes (through the storage, which deletes or archives) every segment whose
    /// records all have seq <= `covered_seq` (covered by a snapshot) and that no reader still
    /// needs. The segment being written is never removed. Returns the removed segment ids.
    pub fn remove_covered(&mut self, covered_seq: u64) -> Result<Vec<u64>, JournalError> {
        self.flush_wait()?; // no segment is removed under a flush in flight
        let readers_need = self
            .shared
            .readers
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .filter(|&s| s > 0)
            .min();
        // A reader that needs `need` may still be positioned in the segment holding `need - 1`
        // (it has just read that record and not yet moved on): that segment stays too.
        let keep_from = covered_seq.saturating_add(1);
        let keep_from = readers_need.map_or(keep_from, |need| (need - 1).min(keep_from));
        let mut removed = Vec::new();
        while self.segments.len() > 1 && self.segments[1] <= keep_from {
            let segment = self.segments[0];
            self.storage
                .retire(segment)
                .map_err(io_error(|| format!("removing segment {segment}")))?;
            self.segments.remove(0);
            removed.push(segment);
        }
        self.shared
            .first_seq
            .store(self.segments[0], Ordering::Release);
        Ok(removed)
    }
}

enum Scan {
    Complete,
    Damaged { offset: u64, reason: String },
}

/// The records recovery found with seq above every watermark seen so far: no later record
/// vouches that they were durable. At most those appended after the last flush that a
/// surviving record knew of (one batch, or one killed process's unflushed run).
#[derive(Debug, Default)]
struct Unconfirmed {
    /// (segment, offset, end) of each such record, in seq order.
    records: VecDeque<(u64, u64, u64)>,
    /// The first seq among `records`.
    first_seq: u64,
    /// The highest durable watermark seen.
    watermark: u64,
}

impl Unconfirmed {
    fn push(&mut self, header: &RecordHeader, segment: u64, offset: u64, end: u64) {
        self.watermark = self.watermark.max(header.durable_watermark);
        while !self.records.is_empty() && self.first_seq <= self.watermark {
            self.records.pop_front();
            self.first_seq += 1;
        }
        if header.seq > self.watermark {
            if self.records.is_empty() {
                self.first_seq = header.seq;
            }
            self.records.push_back((segment, offset, end));
        }
    }
}

/// A journal's reader factory: cheap to clone, usable on any thread while the journal is
/// owned by the engine thread.
#[derive(Clone)]
pub struct Readers<R: StorageReader> {
    storage: R,
    shared: Arc<Shared>,
}

impl<R: StorageReader> std::fmt::Debug for Readers<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("first_seq", &self.shared.first_seq.load(Ordering::Relaxed))
            .field(
                "durable_seq",
                &self.shared.durable_seq.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl<R: StorageReader> Readers<R> {
    /// A reader from `from_seq`, a durable record still in the journal (`Unavailable` if
    /// retention removed it or it is not durable yet; `ReadersFull` at `READERS_MAX`).
    pub fn reader(&self, from_seq: u64) -> Result<Reader<R>, JournalError> {
        let first = self.shared.first_seq.load(Ordering::Acquire);
        let durable = self.shared.durable_seq.load(Ordering::Acquire);
        if from_seq < first || from_seq > durable {
            return Err(JournalError::Unavailable {
                seq: from_seq,
                first,
                next: durable + 1,
            });
        }
        Reader::register(self.storage.clone(), Arc::clone(&self.shared), from_seq)
    }

    /// The durable record `seq`: its header and payload. Reads from the start of its segment
    /// (records have no index), so this is for rare lookups, not for tailing.
    pub fn record(&self, seq: u64) -> Result<(RecordHeader, Vec<u8>), JournalError> {
        let mut reader = self.reader(seq)?;
        match reader.next()? {
            Some(record) if record.header.seq == seq => {
                Ok((record.header, record.payload().to_vec()))
            }
            // `reader` checked that `seq` is durable and kept: it must read back.
            found => Err(JournalError::Corrupt {
                file: format!("the segment holding seq {seq}"),
                offset: 0,
                reason: format!(
                    "record {seq} did not read back (found {:?})",
                    found.map(|record| record.header.seq)
                ),
            }),
        }
    }
}

/// Looks for a valid record at or after (`segments[0]`, `offset`) whose watermark shows that
/// `seq` had been durable. Scans every 16-byte position: lengths after damage are untrustworthy.
fn find_durable_evidence<R: StorageReader>(
    reader: &R,
    segments: &[u64],
    offset: u64,
    seq: u64,
) -> Result<Option<String>, JournalError> {
    for (position, &id) in segments.iter().enumerate() {
        let segment = reader
            .open(id)
            .map_err(io_error(|| format!("opening {}", reader.describe(id))))?;
        let mut cursor = Cursor::new(segment)
            .map_err(io_error(|| format!("reading {}", reader.describe(id))))?;
        let mut at = if position == 0 {
            offset + RECORD_ALIGN as u64
        } else {
            SEGMENT_HEADER_LEN
        };
        at = at.max(SEGMENT_HEADER_LEN);
        while at + HEADER_LEN as u64 <= cursor.length() {
            let magic = cursor
                .bytes(at, 4)
                .map_err(io_error(|| "scanning for evidence"))?;
            if magic == crate::record::RECORD_MAGIC.to_le_bytes() {
                if let Ok(Found::Record { header, .. }) = cursor.record_at(at) {
                    if header.durable_watermark >= seq {
                        return Ok(Some(format!(
                            "record {} in {} at offset {at} has durable watermark {}",
                            header.seq,
                            reader.describe(id),
                            header.durable_watermark
                        )));
                    }
                }
            }
            at += RECORD_ALIGN as u64;
        }
    }
    Ok(None)
}
