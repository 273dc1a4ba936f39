//! Offline operator tools behind `payu journal verify` and `payu journal inspect`.
//!
//! They read a node's journal (`<data_dir>/journal/`) strictly read-only: files are opened for
//! reading and nothing is created, repaired, truncated or removed. That is why they do not use
//! `Journal::open`, whose recovery zeroes a torn tail. Instead they walk the segment files with
//! the journal's public record and segment types and apply the checks recovery applies, in the
//! same order: segment header (magic, version, CRC, first seq, length, hash chain), then each
//! record's header (magic, version, kind, length), CRC32C, seq continuity, hash chain and epoch
//! order, and here also that each payload decodes as an `Entry`.
//!
//! Damage is classified as recovery would classify it. If a valid record anywhere after the
//! damage has a durable watermark at or above the first seq lost, that seq had been durable:
//! the damage is corruption (`VerifyError::Corrupt`, which recovery refuses). Otherwise it is a
//! torn tail (`VerifyReport::torn_tail`, which recovery truncates). An all-zero record header is
//! the end of the log, unless non-zero bytes follow it in the last segment (which recovery
//! also treats as damage) or a later segment does not continue from it. A recycled segment
//! (its header's flag) holds stale records of a retired segment after its data: there, as in
//! recovery, only a record vouching for a lost durable one after the end is damage.
//!
//! Run them on a stopped node, or on a copy: on a live journal, records being appended after
//! the last flush can look like a torn tail.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use payu_engine::{
    AMOUNT_SCALE, Amount, BatchItem, CommandBody, CommandResult, Currency, Outcome, OutcomeSummary,
    PocketDirection, RejectCode,
};
use payu_journal::{
    HEADER_LEN, RECORD_ALIGN, RecordError, RecordHeader, SEGMENT_HEADER_LEN, SegmentHeader,
    decode_entry, record_hash, record_len, segment_path,
};

/// Bytes read from a segment file at once; a longer record is read whole.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Digits in a segment file's name (its first seq, zero-padded).
const SEGMENT_NAME_DIGITS: usize = 20;

const _: () = assert!(READ_CHUNK_BYTES >= HEADER_LEN && SEGMENT_HEADER_LEN as usize >= 16);

/// What `verify_journal` found in a journal that recovery would accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files in the journal directory (those after a torn tail included).
    pub segments: usize,
    /// Valid records, each fully checked.
    pub records: u64,
    /// The oldest seq stored (1 unless retention removed segments).
    pub first_seq: u64,
    /// The last valid record's seq (`first_seq - 1` when there is none).
    pub last_seq: u64,
    /// The chain hash of the last valid record (0 for an empty journal from seq 1).
    pub last_hash: u128,
    /// Bytes of valid records (headers, payloads and padding; segment headers excluded).
    pub bytes: u64,
    /// Damage after the last valid record that nothing valid after it vouches for: what
    /// recovery would truncate (losing only records that were never reported durable).
    pub torn_tail: Option<TailInfo>,
}

/// Where a torn tail starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailInfo {
    /// The segment file's path.
    pub file: String,
    /// Byte offset in that file (0 for a damaged segment header).
    pub offset: u64,
    /// The first seq that is missing or damaged there.
    pub seq: u64,
    pub reason: String,
}

#[derive(Debug)]
pub enum VerifyError {
    /// A journal file could not be listed, opened or read.
    Io { path: PathBuf, source: io::Error },
    /// Damage followed by a valid record that shows the damaged seq had been durable: what
    /// recovery refuses to repair. Or a record whose CRC checks but whose payload is not an
    /// entry (written wrong, not torn).
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// Writing `inspect_journal`'s output failed.
    Output(io::Error),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Io { path, source } => write!(f, "reading {}: {source}", path.display()),
            VerifyError::Corrupt {
                file,
                offset,
                reason,
            } => write!(f, "journal corrupt in {file} at offset {offset}: {reason}"),
            VerifyError::Output(source) => write!(f, "writing output: {source}"),
        }
    }
}

impl std::error::Error for VerifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyError::Io { source, .. } | VerifyError::Output(source) => Some(source),
            VerifyError::Corrupt { .. } => None,
        }
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records, seq {}..={}, in {} segments ({} bytes); last hash {:032x}",
            self.records, self.first_seq, self.last_seq, self.segments, self.bytes, self.last_hash
        )?;
        match &self.torn_tail {
            None => f.write_str("; no torn tail"),
            Some(tail) => write!(
                f,
                "; torn tail from seq {} in {} at offset {}: {} (recovery truncates it)",
                tail.seq, tail.file, tail.offset, tail.reason
            ),
        }
    }
}

impl VerifyReport {
    /// The report as one JSON object; the hash as 32 hex digits.
    pub fn to_json(&self) -> serde_json::Value {
        let torn_tail = self.torn_tail.as_ref().map(|tail| {
            serde_json::json!({
                "file": tail.file,
                "offset": tail.offset,
                "seq": tail.seq,
                "reason": tail.reason,
            })
        });
        serde_json::json!({
            "segments": self.segments,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": format!("{:032x}", self.last_hash),
            "bytes": self.bytes,
            "torn_tail": torn_tail,
        })
    }
}

/// The journal directory of a node's data directory.
pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

/// Checks every record of the journal in `data_dir/journal`, read-only (see the module doc).
pub fn verify_journal(data_dir: &Path) -> Result<VerifyReport, VerifyError> {
    let dir = journal_dir(data_dir);
    let mut walk = Walk::new(&dir, list_segments(&dir)?, 0);
    let mut report = VerifyReport {
        segments: walk.segments.len(),
        records: 0,
        first_seq: walk.next_seq,
        last_seq: 0,
        last_hash: 0,
        bytes: 0,
        torn_tail: None,
    };
    loop {
        match walk.next()? {
            Step::Record(record) => {
                if let Err(reason) = decode_entry(walk.payload()) {
                    return Err(VerifyError::Corrupt {
                        file: walk.describe(record.segment),
                        offset: record.offset,
                        reason: format!(
                            "record {} passes its CRC but is not an entry: {reason}",
                            record.header.seq
                        ),
                    });
                }
                report.records += 1;
                report.bytes += record.end - record.offset;
            }
            Step::End => break,
            Step::Damaged(damage) => {
                report.torn_tail = Some(walk.classify(damage)?);
                break;
            }
        }
    }
    report.last_seq = walk.next_seq - 1;
    report.last_hash = walk.last_hash;
    Ok(report)
}

/// Writes one line per record from `from_seq` on, at most `limit` records, and returns how
/// many it wrote. Text lines read
/// `seq=5 epoch=1 time=2025-11-25T00:05:00.000000000Z len=208 Transfer 2->3 150000.0000 IDR
/// => Posted txn 2`; with `json`, each line is one JSON object with the fields `seq`,
/// `epoch`, `timestamp`, `payload_bytes`, `kind`, `command`, `outcome`, `idempotency_key`
/// and `hash` (the record's chain hash). A record whose payload does not decode is listed
/// with kind `"?"`. Listing stops at the end of the log or at a torn tail; corruption is an
/// error, after the records before it were written. Segments before the one holding
/// `from_seq` are not read.
pub fn inspect_journal(
    data_dir: &Path,
    from_seq: u64,
    limit: usize,
    out: &mut dyn io::Write,
    json: bool,
) -> Result<u64, VerifyError> {
    let dir = journal_dir(data_dir);
    let segments = list_segments(&dir)?;
    let start = segments
        .partition_point(|&first| first <= from_seq)
        .saturating_sub(1);
    let mut walk = Walk::new(&dir, segments, start);
    let mut written = 0usize;
    while written < limit {
        match walk.next()? {
            Step::Record(record) if record.header.seq >= from_seq => {
                let line = Line::of(&record, walk.payload());
                let text = match json {
                    true => line.json(),
                    false => line.text(),
                };
                writeln!(out, "{text}").map_err(VerifyError::Output)?;
                written += 1;
            }
            Step::Record(_) => {}
            Step::End => break,
            Step::Damaged(damage) => {
                walk.classify(damage)?; // a torn tail ends the listing like the end of the log
                break;
            }
        }
    }
    Ok(written as u64)
}

/// The segment ids (first seqs) in `dir`, ascending: the files named as `segment_path` names
/// them. Anything else (spares, temporary files) is not part of the journal.
fn list_segments(dir: &Path) -> Result<Vec<u64>, VerifyError> {
    let io_error = |source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let name = entry.map_err(io_error)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name.get(..SEGMENT_NAME_DIGITS) else {
            continue;
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(id) = digits.parse::<u64>() else {
            continue;
        };
        if segment_path(dir, id) == dir.join(name) {
            segments.push(id);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// One segment file, read through a chunk buffer (few syscalls for many records).
#[derive(Debug)]
struct SegmentFile {
    path: PathBuf,
    file: File,
    length: u64,
    buffer: Vec<u8>,
    buffer_offset: u64,
    /// Where the payload of the record `record_at` last found lies in `buffer`.
    payload: std::ops::Range<usize>,
}

/// What a segment holds at an offset.
enum Found {
    /// A record whose header decodes and whose CRC checks; its payload is `SegmentFile::payload`.
    Record {
        header: RecordHeader,
        hash: u128,
        end: u64,
    },
    /// Zeros, or no room for a record header: the end of this segment's data.
    End,
    Invalid(String),
}

impl SegmentFile {
    fn open(path: PathBuf) -> Result<SegmentFile, VerifyError> {
        let opened = File::open(&path).and_then(|file| Ok((file.metadata()?.len(), file)));
        match opened {
            Ok((length, file)) => Ok(SegmentFile {
                path,
                file,
                length,
                buffer: Vec::new(),
                buffer_offset: 0,
                payload: 0..0,
            }),
            Err(source) => Err(VerifyError::Io { path, source }),
        }
    }

    /// `len` bytes at `offset` (within the file), refilling the buffer from `offset` if needed.
    fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8], VerifyError> {
        assert!(offset + len as u64 <= self.length);
        let buffered_end = self.buffer_offset + self.buffer.len() as u64;
        if offset < self.buffer_offset || offset + len as u64 > buffered_end {
            let fill = (len.max(READ_CHUNK_BYTES) as u64).min(self.length - offset) as usize;
            self.buffer.clear();
            self.buffer.resize(fill, 0);
            self.buffer_offset = offset;
            if let Err(source) = self.file.read_exact_at(&mut self.buffer, offset) {
                self.buffer.clear();
                let path = self.path.clone();
                return Err(VerifyError::Io { path, source });
            }
        }
        let start = (offset - self.buffer_offset) as usize;
        Ok(&self.buffer[start..start + len])
    }

    fn header(&mut self) -> Result<Result<SegmentHeader, String>, VerifyError> {
        if self.length < SEGMENT_HEADER_LEN {
            return Ok(Err("shorter than a segment header".into()));
        }
        let bytes = self.bytes(0, SEGMENT_HEADER_LEN as usize)?;
        let bytes = bytes.try_into().expect("segment header length");
        Ok(SegmentHeader::decode(bytes))
    }

    /// The record at `offset`, checked against its CRC (not against its neighbours).
    fn record_at(&mut self, offset: u64) -> Result<Found, VerifyError> {
        if offset + HEADER_LEN as u64 > self.length {
            return Ok(Found::End);
        }
        let header_bytes: [u8; HEADER_LEN] = self
            .bytes(offset, HEADER_LEN)?
            .try_into()
            .expect("record header length");
        let header = match RecordHeader::decode(&header_bytes) {
            Ok(header) => header,
            Err(RecordError::Empty) => return Ok(Found::End),
            Err(error) => return Ok(Found::Invalid(error.to_string())),
        };
        let end = offset + record_len(header.length as usize) as u64;
        if end > self.length {
            return Ok(Found::Invalid(
                RecordError::TooLong(header.length).to_string(),
            ));
        }
        let bytes = self.bytes(offset, HEADER_LEN + header.length as usize)?;
        let payload = &bytes[HEADER_LEN..];
        if let Err(error) = header.verify(&header_bytes, payload) {
            return Ok(Found::Invalid(error.to_string()));
        }
        let hash = record_hash(&header_bytes, payload);
        let start = (offset - self.buffer_offset) as usize + HEADER_LEN;
        self.payload = start..start + header.length as usize;
        Ok(Found::Record { header, hash, end })
    }

    fn any_nonzero_from(&mut self, offset: u64) -> Result<bool, VerifyError> {
        let mut at = offset;
        while at < self.length {
            let len = (self.length - at).min(READ_CHUNK_BYTES as u64) as usize;
            if self.bytes(at, len)?.iter().any(|&b| b != 0) {
                return Ok(true);
            }
            at += len as u64;
        }
        Ok(false)
    }
}

/// A valid record the walk reached.
#[derive(Clone, Copy, Debug)]
struct Visited {
    segment: u64,
    offset: u64,
    end: u64,
    header: RecordHeader,
    hash: u128,
}

/// Where the walk found something that is not the next record.
#[derive(Debug)]
struct Damage {
    /// Index into `Walk::segments`.
    index: usize,
    offset: u64,
    reason: String,
}

enum Step {
    Record(Visited),
    End,
    Damaged(Damage),
}

/// The journal's records in order, with recovery's checks: a read-only twin of its scan.
#[derive(Debug)]
struct Walk {
    dir: PathBuf,
    segments: Vec<u64>,
    /// The segment the walk started from: its header starts the chain instead of continuing it.
    start: usize,
    index: usize,
    current: Option<SegmentFile>,
    /// The current segment is recycled: stale bytes may follow its data.
    recycled: bool,
    offset: u64,
    next_seq: u64,
    last_hash: u128,
    last_epoch: u64,
}

impl Walk {
    /// A walk over `segments` (the sorted ids in `dir`) from the one at index `start`.
    fn new(dir: &Path, segments: Vec<u64>, start: usize) -> Walk {
        let next_seq = segments.get(start).copied().unwrap_or(1);
        Walk {
            dir: dir.to_path_buf(),
            start,
            index: start.min(segments.len()),
            segments,
            current: None,
            recycled: false,
            offset: SEGMENT_HEADER_LEN,
            next_seq,
            last_hash: 0,
            last_epoch: 0,
        }
    }

    fn describe(&self, segment: u64) -> String {
        segment_path(&self.dir, segment).display().to_string()
    }

    /// The payload of the record `next` returned last.
    fn payload(&self) -> &[u8] {
        match &self.current {
            Some(file) => &file.buffer[file.payload.clone()],
            None => &[],
        }
    }

    fn next(&mut self) -> Result<Step, VerifyError> {
        loop {
            if self.index == self.segments.len() {
                return Ok(Step::End);
            }
            if self.current.is_none() {
                if let Some(damage) = self.open_segment()? {
                    return Ok(Step::Damaged(damage));
                }
            }
            let file = self.current.as_mut().expect("opened above");
            let problem = match file.record_at(self.offset)? {
                Found::Record { header, hash, end } => {
                    match continues(self.next_seq, self.last_hash, self.last_epoch, &header) {
                        Ok(()) => {
                            let visited = Visited {
                                segment: self.segments[self.index],
                                offset: self.offset,
                                end,
                                header,
                                hash,
                            };
                            self.next_seq += 1;
                            self.last_hash = hash;
                            self.last_epoch = header.epoch;
                            self.offset = end;
                            return Ok(Step::Record(visited));
                        }
                        Err(reason) => Some(reason),
                    }
                }
                Found::Invalid(reason) => Some(reason),
                Found::End => None,
            };
            let damage = match problem {
                // Bytes that are not the next record end this segment's data if the next
                // segment starts right here (stray bytes in an unused end); else they are damage.
                Some(reason) => match self.next_segment_continues()? {
                    true => {
                        self.advance();
                        None
                    }
                    false => Some(self.damage(reason)),
                },
                None => self.segment_end()?,
            };
            if let Some(damage) = damage {
                return Ok(Step::Damaged(damage));
            }
        }
    }

    fn damage(&self, reason: String) -> Damage {
        Damage {
            index: self.index,
            offset: self.offset,
            reason,
        }
    }

    fn advance(&mut self) {
        self.index += 1;
        self.current = None;
        self.offset = SEGMENT_HEADER_LEN;
    }

    /// Opens the segment at `index` and checks its header; `Some` if the header is damaged.
    fn open_segment(&mut self) -> Result<Option<Damage>, VerifyError> {
        let id = self.segments[self.index];
        let mut file = SegmentFile::open(segment_path(&self.dir, id))?;
        self.offset = 0;
        let reason = match file.header()? {
            Ok(h) if h.first_seq == id && id == self.next_seq && h.length == file.length => {
                if self.index > self.start && h.prev_hash != self.last_hash {
                    Some("segment header breaks the hash chain".to_string())
                } else {
                    self.last_hash = h.prev_hash;
                    self.recycled = h.recycled;
                    None
                }
            }
            Ok(h) => Some(format!(
                "segment header says first seq {} and {} bytes; expected seq {} and {} bytes",
                h.first_seq, h.length, self.next_seq, file.length
            )),
            Err(reason) => Some(reason),
        };
        if let Some(reason) = reason {
            return Ok(Some(self.damage(reason)));
        }
        self.current = Some(file);
        self.offset = SEGMENT_HEADER_LEN;
        Ok(None)
    }

    /// Whether the next segment starts exactly where the walk stands: first seq and chain.
    fn next_segment_continues(&self) -> Result<bool, VerifyError> {
        let Some(&next) = self.segments.get(self.index + 1) else {
            return Ok(false);
        };
        let mut file = SegmentFile::open(segment_path(&self.dir, next))?;
        Ok(matches!(
            file.header()?,
            Ok(h) if h.first_seq == next && next == self.next_seq && h.prev_hash == self.last_hash
        ))
    }

    /// This segment's data ended (zeros): the end of the log in the last segment, as long as
    /// only zeros follow; otherwise the next segment must continue right here.
    fn segment_end(&mut self) -> Result<Option<Damage>, VerifyError> {
        match self.segments.get(self.index + 1) {
            None if self.recycled => {
                // Stale records follow; `classify` errs only on one that vouches for a lost
                // durable record (the torn-tail answer it gives otherwise does not apply).
                let end = self.damage("the data of a recycled segment ends".to_string());
                self.classify(end)?;
                self.advance();
                Ok(None)
            }
            None => {
                let file = self.current.as_mut().expect("the walk is in a segment");
                if file.any_nonzero_from(self.offset)? {
                    let reason = "bytes after the end of the data".to_string();
                    return Ok(Some(self.damage(reason)));
                }
                self.advance();
                Ok(None)
            }
            Some(&next) if next != self.next_seq => Ok(Some(self.damage(format!(
                "next segment starts at seq {next}, expected {}",
                self.next_seq
            )))),
            Some(_) => {
                self.advance();
                Ok(None)
            }
        }
    }

    /// Torn tail or corruption: corruption if a valid record at or after the damage, at any
    /// 16-byte position (lengths after damage cannot be trusted), has a durable watermark
    /// showing that the damaged seq had been durable.
    fn classify(&self, damage: Damage) -> Result<TailInfo, VerifyError> {
        let file = self.describe(self.segments[damage.index]);
        let seq = self.next_seq;
        for (position, &id) in self.segments[damage.index..].iter().enumerate() {
            let mut segment = SegmentFile::open(segment_path(&self.dir, id))?;
            let mut at = match position {
                0 => damage.offset + RECORD_ALIGN as u64,
                _ => SEGMENT_HEADER_LEN,
            };
            at = at.max(SEGMENT_HEADER_LEN);
            while at + HEADER_LEN as u64 <= segment.length {
                if let Found::Record { header, .. } = segment.record_at(at)? {
                    if header.durable_watermark >= seq {
                        let reason = format!(
                            "{}; yet record {} in {} at offset {at} has durable watermark {}, \
                             so seq {seq} had been durable",
                            damage.reason,
                            header.seq,
                            self.describe(id),
                            header.durable_watermark
                        );
                        let offset = damage.offset;
                        return Err(VerifyError::Corrupt {
                            file,
                            offset,
                            reason,
                        });
                    }
                }
                at += RECORD_ALIGN as u64;
            }
        }
        Ok(TailInfo {
            file,
            offset: damage.offset,
            seq,
            reason: damage.reason,
        })
    }
}

/// Recovery's continuity checks: the next seq, on the chain, at no lower epoch.
fn continues(
    next_seq: u64,
    last_hash: u128,
    last_epoch: u64,
    header: &RecordHeader,
) -> Result<(), String> {
    if header.seq != next_seq {
        return Err(format!(
            "record seq {} where {next_seq} was expected",
            header.seq
        ));
    }
    if header.prev_hash != last_hash {
        return Err(format!("record {} breaks the hash chain", header.seq));
    }
    if header.epoch < last_epoch {
        return Err(format!(
            "record {} has epoch {} after {last_epoch}",
            header.seq, header.epoch
        ));
    }
    Ok(())
}

/// One listed record.
#[derive(Debug, serde::Serialize)]
struct Line {
    seq: u64,
    epoch: u64,
    timestamp: String,
    payload_bytes: u32,
    kind: &'static str,
    command: String,
    outcome: String,
    idempotency_key: String,
    hash: String,
}

impl Line {
    fn of(record: &Visited, payload: &[u8]) -> Line {
        let header = &record.header;
        let (kind, command, outcome, key) = match decode_entry(payload) {
            Ok(entry) => {
                let (kind, command) = describe_command(&entry.command.body);
                let key = format!("{:032x}", entry.command.key.0);
                (kind, command, describe_outcome(&entry.outcome), key)
            }
            Err(reason) => (
                "?",
                String::new(),
                format!("payload does not decode: {reason}"),
                String::new(),
            ),
        };
        Line {
            seq: header.seq,
            epoch: header.epoch,
            timestamp: rfc3339(header.timestamp),
            payload_bytes: header.length,
            kind,
            command,
            outcome,
            idempotency_key: key,
            hash: format!("{:032x}", record.hash),
        }
    }

    fn text(&self) -> String {
        let mut text = format!(
            "seq={} epoch={} time={} len={} {}",
            self.seq, self.epoch, self.timestamp, self.payload_bytes, self.kind
        );
        if !self.command.is_empty() {
            let _ = write!(text, " {}", self.command);
        }
        let _ = write!(text, " => {}", self.outcome);
        text
    }

    fn json(&self) -> String {
        // Plain strings and integers: serialising them cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Nanoseconds since the Unix epoch as RFC 3339 UTC with nanoseconds.
fn rfc3339(nanos: u64) -> String {
    crate::wire::timestamp(payu_engine::Timestamp(nanos))
}

/// An amount as an exact decimal with four places, whatever its value (a journaled command
/// may carry an invalid amount that the engine rejected).
fn amount(amount: Amount) -> String {
    let scale = 10u64.pow(AMOUNT_SCALE);
    let places = AMOUNT_SCALE as usize;
    format!("{}.{:0places$}", amount.0 / scale, amount.0 % scale)
}

fn currency(currency: Currency) -> String {
    match currency.alpha() {
        Some(alpha) => alpha.to_string(),
        None => format!("currency {}", currency.0),
    }
}

fn money(value: Amount, code: Currency) -> String {
    format!("{} {}", amount(value), currency(code))
}

fn describe_command(body: &CommandBody) -> (&'static str, String) {
    match body {
        CommandBody::OpenAccount(c) => {
            let mut text = format!(
                "{:?} tier {} {} owner {:032x}",
                c.kind,
                c.tier,
                currency(c.currency),
                c.owner.0
            );
            if c.overdraft_limit.0 > 0 {
                let _ = write!(text, " overdraft {}", amount(c.overdraft_limit));
            }
            ("OpenAccount", text)
        }
        CommandBody::UpdateAccount(c) => {
            let mut text = c.account.0.to_string();
            if let Some(status) = c.status {
                let _ = write!(text, " status {status:?}");
            }
            if let Some(tier) = c.tier {
                let _ = write!(text, " tier {tier}");
            }
            if let Some(limit) = c.overdraft_limit {
                let _ = write!(text, " overdraft {}", amount(limit));
            }
            ("UpdateAccount", text)
        }
        CommandBody::OpenPocket(c) => {
            let locked = if c.locked { " locked" } else { "" };
            let text = format!(
                "parent {} {:?} target {} by {}{locked}",
                c.parent.0,
                c.name,
                amount(c.target_amount),
                crate::wire::date(c.target_date)
            );
            ("OpenPocket", text)
        }
        CommandBody::Deposit(c) => {
            let text = format!(
                "{}->{} {}",
                c.settlement.0,
                c.account.0,
                money(c.amount, c.currency)
            );
            ("Deposit", text)
        }
        CommandBody::Withdrawal(c) => {
            let text = format!(
                "{}->{} {}",
                c.account.0,
                c.settlement.0,
                money(c.amount, c.currency)
            );
            ("Withdrawal", text)
        }
        CommandBody::Transfer(t) => {
            let text = format!("{}->{} {}", t.from.0, t.to.0, money(t.amount, t.currency));
            ("Transfer", text)
        }
        CommandBody::TransferBatch(items) => {
            ("TransferBatch", format!("{} transfers", items.len()))
        }
        CommandBody::PocketMove(c) => {
            let direction = match c.direction {
                PocketDirection::In => "into",
                PocketDirection::Out => "out of",
            };
            let text = format!(
                "{direction} pocket {} {}",
                c.pocket.0,
                money(c.amount, c.currency)
            );
            ("PocketMove", text)
        }
        CommandBody::Payment(c) => {
            let text = format!(
                "{}->{} {}",
                c.customer.0,
                c.merchant.0,
                money(c.amount, c.currency)
            );
            ("Payment", text)
        }
        CommandBody::Refund(c) => {
            let text = format!("of txn {} {}", c.payment.0, money(c.amount, c.currency));
            ("Refund", text)
        }
        CommandBody::HoldReserve(c) => {
            let until = match c.expiry {
                payu_engine::HoldExpiry::At(at) => format!("until {}", rfc3339(at.0)),
                payu_engine::HoldExpiry::After { nanos } => {
                    format!(
                        "for {}.{:09}s",
                        nanos / 1_000_000_000,
                        nanos % 1_000_000_000
                    )
                }
            };
            let text = format!(
                "{}->{} {} {until}",
                c.account.0,
                c.destination.0,
                money(c.amount, c.currency),
            );
            ("HoldReserve", text)
        }
        CommandBody::HoldCommit(c) => (
            "HoldCommit",
            format!("hold {} {}", c.hold.0, amount(c.amount)),
        ),
        CommandBody::HoldRelease(c) => ("HoldRelease", format!("hold {}", c.hold.0)),
    }
}

fn rejected(code: RejectCode) -> String {
    match code.limit_period() {
        Some(period) => format!("Rejected {} ({period})", code.code()),
        None => format!("Rejected {}", code.code()),
    }
}

fn describe_outcome(outcome: &Outcome) -> String {
    let mut text = match &outcome.result {
        CommandResult::AccountOpened { account } => format!("Opened account {}", account.0),
        CommandResult::AccountUpdated { account } => format!("Updated account {}", account.0),
        CommandResult::PocketOpened { pocket } => format!("Opened pocket {}", pocket.0),
        CommandResult::Posted(posted) => format!("Posted txn {}", posted.txn.0),
        CommandResult::Batch(items) => {
            let posted = items
                .iter()
                .filter(|item| matches!(item, BatchItem::Posted(_)))
                .count();
            format!("Batch {posted} posted, {} rejected", items.len() - posted)
        }
        CommandResult::HoldReserved(change) => format!("Reserved hold {}", change.hold.0),
        CommandResult::HoldReleased(change) => format!("Released hold {}", change.hold.0),
        CommandResult::HoldCommitted {
            hold,
            released,
            posted,
        } => format!(
            "Committed hold {} as txn {}, released {}",
            hold.hold.0,
            posted.txn.0,
            amount(*released)
        ),
        CommandResult::Replayed {
            original_seq,
            original,
        } => format!(
            "Replayed seq {original_seq} ({})",
            describe_summary(original)
        ),
        CommandResult::Rejected(code) => rejected(*code),
    };
    if !outcome.expired_holds.is_empty() {
        let _ = write!(text, " (+{} expired holds)", outcome.expired_holds.len());
    }
    text
}

fn describe_summary(summary: &OutcomeSummary) -> String {
    match summary {
        OutcomeSummary::AccountOpened(account) => format!("Opened account {}", account.0),
        OutcomeSummary::AccountUpdated(account) => format!("Updated account {}", account.0),
        OutcomeSummary::PocketOpened(pocket) => format!("Opened pocket {}", pocket.0),
        OutcomeSummary::Posted(txn) => format!("Posted txn {}", txn.0),
        OutcomeSummary::Batch { posted, rejected } => {
            format!("Batch {posted} posted, {rejected} rejected")
        }
        OutcomeSummary::HoldReserved(hold) => format!("Reserved hold {}", hold.0),
        OutcomeSummary::HoldReleased(hold) => format!("Released hold {}", hold.0),
        OutcomeSummary::HoldCommitted { hold, txn } => {
            format!("Committed hold {} as txn {}", hold.0, txn.0)
        }
        OutcomeSummary::Rejected(code) => rejected(*code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payu_engine::NANOS_PER_SECOND;
    use std::collections::BTreeMap;

    use payu_engine::{
        AccountId, AccountKind, Command, Deposit, Engine, EngineConfig, HoldCommit, HoldId,
        HoldReserve, IdempotencyKey, OpenAccount, OwnerId, Timestamp, Transfer,
    };
    use payu_journal::{
        Entry, FlushMode, Journal, JournalConfig, JournalError, MmapStorage, SEGMENT_BYTES_MIN,
        encode_entry,
    };

    /// 2025-11-25T00:00:00.123456789Z.
    const START_NS: u64 = 1_764_028_800 * NANOS_PER_SECOND + 123_456_789;
    const COMMANDS: u64 = 40;
    const SETTLEMENT: AccountId = AccountId(1);
    const ALICE: AccountId = AccountId(2);
    const BOB: AccountId = AccountId(3);

    /// Where the test put one record.
    #[derive(Clone, Copy, Debug)]
    struct Placed {
        seq: u64,
        segment: u64,
        offset: u64,
        /// Bytes in the segment, padding included.
        len: u64,
        payload_len: usize,
    }

    struct Built {
        last_hash: u128,
        records: Vec<Placed>,
    }

    fn timestamp(i: u64) -> u64 {
        START_NS + i * 60 * NANOS_PER_SECOND
    }

    fn epoch(i: u64) -> u64 {
        if i > 30 { 2 } else { 1 }
    }

    fn transfer(from: AccountId, to: AccountId, whole: u64) -> Transfer {
        Transfer {
            from,
            to,
            amount: Amount::whole(whole),
            currency: Currency::IDR,
        }
    }

    fn open(kind: AccountKind, owner: u128) -> CommandBody {
        CommandBody::OpenAccount(OpenAccount {
            owner: OwnerId(owner),
            kind,
            tier: 1,
            currency: Currency::IDR,
            overdraft_limit: Amount::ZERO,
        })
    }

    /// A small banking day: accounts, a deposit, transfers (one refused), a batch, a hold.
    fn body(i: u64) -> CommandBody {
        match i {
            1 => open(AccountKind::Settlement, 1),
            2 => open(AccountKind::Customer, 2),
            3 => open(AccountKind::Customer, 3),
            4 => CommandBody::Deposit(Deposit {
                settlement: SETTLEMENT,
                account: ALICE,
                amount: Amount::whole(1_000_000),
                currency: Currency::IDR,
            }),
            5 => CommandBody::Transfer(transfer(ALICE, BOB, 150_000)),
            6 => CommandBody::Transfer(transfer(BOB, ALICE, 200_000)),
            7 => CommandBody::TransferBatch(vec![
                transfer(ALICE, BOB, 1_000),
                transfer(BOB, ALICE, 999_999),
            ]),
            8 => CommandBody::HoldReserve(HoldReserve {
                account: ALICE,
                destination: BOB,
                amount: Amount::whole(5_000),
                currency: Currency::IDR,
                expiry: payu_engine::HoldExpiry::At(Timestamp(
                    timestamp(8) + 3600 * NANOS_PER_SECOND,
                )),
            }),
            9 => CommandBody::HoldCommit(HoldCommit {
                hold: HoldId(1),
                amount: Amount::whole(2_000),
            }),
            _ => CommandBody::Transfer(transfer(ALICE, BOB, 10 + i)),
        }
    }

    /// Runs `COMMANDS` commands through a real engine and journals each (command, outcome),
    /// flushing after each, in small segments under `data_dir/journal`, as the node does.
    fn build(data_dir: &Path) -> Built {
        build_with(data_dir, COMMANDS, None)
    }

    /// `build` with `commands` commands, and with `retain`, retention after every flush that
    /// keeps that many records (so later segments recycle retired files).
    fn build_with(data_dir: &Path, commands: u64, retain: Option<u64>) -> Built {
        let storage = MmapStorage::open(&journal_dir(data_dir), FlushMode::Auto).expect("storage");
        let config = JournalConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
        };
        let (mut journal, _) = Journal::open(storage, config).expect("journal");
        let mut engine = Engine::new(EngineConfig::default());
        let (mut segment, mut offset) = (1, SEGMENT_HEADER_LEN);
        let mut records = Vec::new();
        for i in 1..=commands {
            let seq = journal.next_seq();
            let command = Command {
                key: IdempotencyKey(u128::from(i) << 64 | 0xabc),
                body: body(i),
            };
            let outcome = engine.apply(seq, Timestamp(timestamp(i)), &command);
            let payload = encode_entry(&Entry { command, outcome });
            let len = record_len(payload.len()) as u64;
            if offset + len > SEGMENT_BYTES_MIN {
                (segment, offset) = (seq, SEGMENT_HEADER_LEN);
            }
            assert_eq!(
                journal
                    .append(epoch(i), timestamp(i), &payload)
                    .expect("append"),
                seq
            );
            assert_eq!(journal.flush().expect("flush"), seq);
            if let Some(retain) = retain {
                journal
                    .remove_covered(seq.saturating_sub(retain))
                    .expect("retention");
            }
            records.push(Placed {
                seq,
                segment,
                offset,
                len,
                payload_len: payload.len(),
            });
            offset += len;
        }
        Built {
            last_hash: journal.last_hash(),
            records,
        }
    }

    /// Every segment file's bytes, by name.
    fn segment_files(data_dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(journal_dir(data_dir))
            .expect("journal dir")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "journal"))
            .map(|path| {
                let bytes = std::fs::read(&path).expect("read segment");
                (path.display().to_string(), bytes)
            })
            .collect()
    }

    fn file_of(data_dir: &Path, record: &Placed) -> String {
        segment_path(&journal_dir(data_dir), record.segment)
            .display()
            .to_string()
    }

    fn damage(data_dir: &Path, record: &Placed, at: u64, change: impl FnOnce(&mut [u8])) {
        let path = segment_path(&journal_dir(data_dir), record.segment);
        let mut bytes = std::fs::read(&path).expect("read");
        let start = (record.offset + at) as usize;
        change(&mut bytes[start..(record.offset + record.len) as usize]);
        std::fs::write(&path, bytes).expect("write");
    }

    fn reopen(data_dir: &Path) -> Result<Journal<MmapStorage>, JournalError> {
        let storage = MmapStorage::open(&journal_dir(data_dir), FlushMode::Auto).expect("storage");
        let config = JournalConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
        };
        Journal::open(storage, config).map(|(journal, _)| journal)
    }

    fn inspect(data_dir: &Path, from: u64, limit: usize, json: bool) -> (u64, Vec<String>) {
        let mut out = Vec::new();
        let written = inspect_journal(data_dir, from, limit, &mut out, json).expect("inspect");
        let text = String::from_utf8(out).expect("utf-8");
        (written, text.lines().map(String::from).collect())
    }

    #[test]
    fn verify_checks_every_record_and_ends_on_the_journals_last_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = build(dir.path());
        let before = segment_files(dir.path());
        let report = verify_journal(dir.path()).expect("verify");
        assert_eq!(segment_files(dir.path()), before, "verify changed no file");
        let segments: std::collections::BTreeSet<u64> =
            built.records.iter().map(|r| r.segment).collect();
        assert!(segments.len() >= 2, "records span segments: {segments:?}");
        assert_eq!(
            report,
            VerifyReport {
                segments: segments.len(),
                records: COMMANDS,
                first_seq: 1,
                last_seq: COMMANDS,
                last_hash: built.last_hash,
                bytes: built.records.iter().map(|r| r.len).sum(),
                torn_tail: None,
            }
        );
        assert_eq!(before.len(), segments.len());
        let json = report.to_json();
        assert_eq!(json["last_hash"], format!("{:032x}", built.last_hash));
        assert_eq!(json["records"], COMMANDS);
        assert!(json["torn_tail"].is_null());
        assert!(report.to_string().contains("40 records, seq 1..=40"));
    }

    #[test]
    fn a_recycled_last_segment_verifies_clean_and_its_durable_damage_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = build_with(dir.path(), 210, Some(30));
        let last = *built.records.last().expect("records");
        let header = &segment_files(dir.path())[&file_of(dir.path(), &last)][..64];
        let header = SegmentHeader::decode(header.try_into().expect("64 bytes")).expect("header");
        assert!(header.recycled, "the last segment reuses a retired file");
        let report = verify_journal(dir.path()).expect("verify");
        assert_eq!(
            report.torn_tail, None,
            "stale bytes after the data are no tail"
        );
        assert_eq!(report.last_seq, 210);
        assert!(report.first_seq > 1, "retention ran");
        assert_eq!(report.records, 210 - report.first_seq + 1);
        // The last segment's first record is durable and later records vouch for it.
        let first_in_last = *built
            .records
            .iter()
            .find(|r| r.segment == last.segment)
            .expect("records");
        assert!(
            first_in_last.seq + 2 < last.seq,
            "several records in the last segment"
        );
        damage(dir.path(), &first_in_last, HEADER_LEN as u64 + 1, |b| {
            b[0] ^= 1
        });
        match verify_journal(dir.path()) {
            Err(VerifyError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, file_of(dir.path(), &first_in_last));
                assert_eq!(offset, first_in_last.offset);
            }
            other => panic!("damaged durable record in a recycled segment: {other:?}"),
        }
    }

    #[test]
    fn a_damaged_middle_record_is_corruption_named_by_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = build(dir.path());
        let middle = built.records[COMMANDS as usize / 2];
        damage(dir.path(), &middle, HEADER_LEN as u64 + 3, |b| b[0] ^= 0x40);
        let before = segment_files(dir.path());
        let Err(VerifyError::Corrupt {
            file,
            offset,
            reason,
        }) = verify_journal(dir.path())
        else {
            panic!("a flipped byte before durable records is corruption");
        };
        assert_eq!(segment_files(dir.path()), before, "verify changed no file");
        assert_eq!(file, file_of(dir.path(), &middle));
        assert_eq!(offset, middle.offset);
        assert!(reason.contains("CRC32C mismatch"), "{reason}");
        let error = VerifyError::Corrupt {
            file: file.clone(),
            offset,
            reason,
        };
        let shown = error.to_string();
        assert!(
            shown.contains(&file) && shown.contains(&format!("offset {offset}")),
            "{shown}"
        );
        // The records before it are listed; then inspect reports the corruption too.
        let mut out = Vec::new();
        let listed = inspect_journal(dir.path(), 1, usize::MAX, &mut out, false);
        assert!(
            matches!(listed, Err(VerifyError::Corrupt { .. })),
            "{listed:?}"
        );
        let lines = String::from_utf8(out).expect("utf-8").lines().count() as u64;
        assert_eq!(lines, middle.seq - 1);
        // Recovery agrees, and refuses.
        match reopen(dir.path()) {
            Err(JournalError::Corrupt {
                file: recovery_file,
                offset: recovery_offset,
                ..
            }) => assert_eq!((recovery_file, recovery_offset), (file, offset)),
            other => panic!("recovery should refuse: {other:?}"),
        }
    }

    #[test]
    fn a_zeroed_header_before_durable_records_is_not_the_end_of_the_log() {
        for seq in [5, COMMANDS - 2] {
            let dir = tempfile::tempdir().expect("tempdir");
            let built = build(dir.path());
            let record = built.records[seq as usize - 1];
            damage(dir.path(), &record, 0, |b| b[..HEADER_LEN].fill(0));
            let Err(VerifyError::Corrupt { file, offset, .. }) = verify_journal(dir.path()) else {
                panic!("a zeroed header at seq {seq} is corruption");
            };
            assert_eq!(
                (&file, offset),
                (&file_of(dir.path(), &record), record.offset)
            );
            match reopen(dir.path()) {
                Err(JournalError::Corrupt {
                    file: recovery_file,
                    offset: recovery_offset,
                    ..
                }) => assert_eq!((recovery_file, recovery_offset), (file, offset)),
                other => panic!("recovery should refuse: {other:?}"),
            }
        }
    }

    #[test]
    fn a_garbled_or_cut_last_record_is_a_torn_tail() {
        fn garble(record: &mut [u8]) {
            record[HEADER_LEN + 1] ^= 0x01;
        }
        /// A torn write: only the first half of the record reached the disk.
        fn cut(record: &mut [u8]) {
            let half = record.len() / 2;
            record[half..].fill(0);
        }
        let changes = [("garbled", garble as fn(&mut [u8])), ("cut", cut)];
        for (what, change) in changes {
            let dir = tempfile::tempdir().expect("tempdir");
            let built = build(dir.path());
            let last = *built.records.last().expect("records");
            damage(dir.path(), &last, 0, change);
            let before = segment_files(dir.path());
            let report = verify_journal(dir.path()).expect("a torn tail is not an error");
            assert_eq!(
                segment_files(dir.path()),
                before,
                "{what}: verify changed no file"
            );
            assert_eq!(report.records, COMMANDS - 1, "{what}");
            assert_eq!(report.last_seq, COMMANDS - 1, "{what}");
            let tail = report.torn_tail.clone().expect("torn tail");
            assert_eq!(tail.file, file_of(dir.path(), &last), "{what}");
            assert_eq!((tail.offset, tail.seq), (last.offset, COMMANDS), "{what}");
            assert!(tail.reason.contains("CRC32C"), "{what}: {}", tail.reason);
            assert!(
                report.to_string().contains("torn tail from seq 40"),
                "{report}"
            );
            let (listed, lines) = inspect(dir.path(), 1, usize::MAX, false);
            assert_eq!((listed, lines.len() as u64), (COMMANDS - 1, COMMANDS - 1));
            // Recovery truncates exactly that, and ends on the hash verify reported.
            let journal = reopen(dir.path()).expect("recovery repairs a torn tail");
            assert_eq!(journal.durable_seq(), COMMANDS - 1, "{what}");
            assert_eq!(journal.last_hash(), report.last_hash, "{what}");
        }
    }

    #[test]
    fn inspect_lists_records_as_text_and_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = build(dir.path());
        let len = |seq: u64| built.records[seq as usize - 1].payload_len;
        let (written, lines) = inspect(dir.path(), 1, 9, false);
        assert_eq!(written, 9);
        let expected = [
            format!(
                "seq=1 epoch=1 time=2025-11-25T00:01:00.123456789Z len={} OpenAccount \
                 Settlement tier 1 IDR owner {:032x} => Opened account 1",
                len(1),
                1
            ),
            format!(
                "seq=4 epoch=1 time=2025-11-25T00:04:00.123456789Z len={} Deposit 1->2 \
                 1000000.0000 IDR => Posted txn 1",
                len(4)
            ),
            format!(
                "seq=5 epoch=1 time=2025-11-25T00:05:00.123456789Z len={} Transfer 2->3 \
                 150000.0000 IDR => Posted txn 2",
                len(5)
            ),
            format!(
                "seq=6 epoch=1 time=2025-11-25T00:06:00.123456789Z len={} Transfer 3->2 \
                 200000.0000 IDR => Rejected INSUFFICIENT_FUNDS",
                len(6)
            ),
            format!(
                "seq=7 epoch=1 time=2025-11-25T00:07:00.123456789Z len={} TransferBatch \
                 2 transfers => Batch 1 posted, 1 rejected",
                len(7)
            ),
            format!(
                "seq=8 epoch=1 time=2025-11-25T00:08:00.123456789Z len={} HoldReserve 2->3 \
                 5000.0000 IDR until 2025-11-25T01:08:00.123456789Z => Reserved hold 1",
                len(8)
            ),
            format!(
                "seq=9 epoch=1 time=2025-11-25T00:09:00.123456789Z len={} HoldCommit hold 1 \
                 2000.0000 => Committed hold 1 as txn 4, released 3000.0000",
                len(9)
            ),
        ];
        for line in expected {
            assert!(lines.contains(&line), "missing {line:?} in {lines:#?}");
        }

        // Paging: from a seq, at most a limit, across segments.
        let (written, lines) = inspect(dir.path(), 5, 2, false);
        assert_eq!(written, 2);
        assert!(
            lines[0].starts_with("seq=5 ") && lines[1].starts_with("seq=6 "),
            "{lines:?}"
        );
        let (written, lines) = inspect(dir.path(), COMMANDS - 1, 10, false);
        assert_eq!(written, 2);
        assert!(
            lines[1].starts_with(&format!("seq={COMMANDS} epoch=2 ")),
            "{lines:?}"
        );
        assert_eq!(inspect(dir.path(), COMMANDS + 1, 10, false).0, 0);
        assert_eq!(inspect(dir.path(), 1, 0, false).0, 0);

        let (written, lines) = inspect(dir.path(), 1, usize::MAX, true);
        assert_eq!((written, lines.len() as u64), (COMMANDS, COMMANDS));
        let objects: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        for (object, placed) in objects.iter().zip(&built.records) {
            assert_eq!(object["seq"], placed.seq);
            assert_eq!(object["payload_bytes"], placed.payload_len);
        }
        let six = &objects[5];
        assert_eq!(six["kind"], "Transfer");
        assert_eq!(six["command"], "3->2 200000.0000 IDR");
        assert_eq!(six["outcome"], "Rejected INSUFFICIENT_FUNDS");
        assert_eq!(six["epoch"], 1);
        assert_eq!(six["timestamp"], "2025-11-25T00:06:00.123456789Z");
        assert_eq!(
            six["idempotency_key"],
            format!("{:032x}", 6u128 << 64 | 0xabc)
        );
        let last = objects.last().expect("objects");
        assert_eq!(last["hash"], format!("{:032x}", built.last_hash));
        assert_eq!(last["epoch"], 2);
    }

    #[test]
    fn empty_and_missing_journals() {
        let dir = tempfile::tempdir().expect("tempdir");
        match verify_journal(dir.path()) {
            Err(VerifyError::Io { path, .. }) => assert_eq!(path, journal_dir(dir.path())),
            other => panic!("no journal directory is an I/O error: {other:?}"),
        }
        assert!(!journal_dir(dir.path()).exists(), "verify created nothing");
        drop(reopen(dir.path()).expect("a new journal"));
        let report = verify_journal(dir.path()).expect("verify");
        assert_eq!((report.segments, report.records), (1, 0));
        assert_eq!(
            (report.first_seq, report.last_seq, report.last_hash),
            (1, 0, 0)
        );
        assert_eq!(inspect(dir.path(), 1, 10, true).0, 0);
    }

    #[test]
    fn timestamps_and_amounts_format_exactly() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400 * NANOS_PER_SECOND + 1),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(amount(Amount(1)), "0.0001");
        assert_eq!(amount(Amount(u64::MAX)), "1844674407370955.1615");
    }
}
