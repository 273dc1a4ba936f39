//! The segment header and a buffered record cursor over one segment.
//!
//! ```text
//! offset size field
//!      0    8 magic       "PAYUSEG1"
//!      8    2 version
//!     10    2 flags       SEGMENT_RECYCLED, or 0
//!     12    4 crc32c      over bytes 0..12 and 16..64
//!     16    8 first_seq   seq of the segment's first record (also its file name)
//!     24    8 length      bytes, header included
//!     32   16 prev_hash   chain hash of record first_seq - 1 (0 for seq 1)
//!     48   16 reserved    0
//! ```
//!
//! A recycled segment (`SEGMENT_RECYCLED`) reuses the file of a retired one instead of a
//! zero-filled new file, so the bytes after the end of its data are not zeros but stale
//! records of the old segment (their seqs are all below `first_seq`) or fragments of them.
//! Its writer keeps a zeroed record header (`end_marker_len` bytes of zeros) right after the
//! data at every flush and at the roll to the next segment, so a reader finds the end of the
//! data as in a zero-filled segment; recovery ends such a segment's data at its first record
//! that is not the next one, and checks the stale rest only for evidence of lost durable
//! records (it never has to zero it).

use std::io;

use crate::record::{HEADER_LEN, RecordError, RecordHeader, record_len};
use crate::storage::{SegmentRead, StorageReader};

pub const SEGMENT_HEADER_LEN: u64 = 64;
pub const SEGMENT_MAGIC: [u8; 8] = *b"PAYUSEG1";
pub const SEGMENT_VERSION: u16 = 1;
/// Header flag: the segment's file was recycled, so stale bytes may follow its data.
pub const SEGMENT_RECYCLED: u16 = 1;
/// The writer's end marker in a recycled segment reaches this boundary, so the write that
/// carries it covers whole pages: a partial write into an uncached page of a recycled file
/// would make the kernel read that page from disk first, on the engine thread.
pub const END_MARKER_ALIGN: u64 = 4 << 10;
/// Bytes read at once by a cursor; a longer record is read whole.
const CURSOR_CHUNK_BYTES: usize = 1 << 20;
/// The first read after a `refresh`: a reader that caught up with the writer finds only the
/// few records of one group commit past its position, and the rest of a full chunk would be
/// the unwritten (zero) end of the segment, copied for nothing on every wake-up. Each read
/// after it doubles, back up to `CURSOR_CHUNK_BYTES` for a reader that is behind.
const CURSOR_TAIL_CHUNK_BYTES: usize = 4 << 10;

const _: () = assert!(CURSOR_TAIL_CHUNK_BYTES <= CURSOR_CHUNK_BYTES);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
    pub length: u64,
    pub prev_hash: u128,
    /// The segment reuses a retired segment's file (`SEGMENT_RECYCLED`).
    pub recycled: bool,
}

/// Reads and decodes `segment`'s header (for tools and tests: whether a segment is recycled).
/// A header that does not decode is an `InvalidData` error.
pub fn read_segment_header<R: StorageReader>(
    reader: &R,
    segment: u64,
) -> io::Result<SegmentHeader> {
    let mut bytes = [0u8; SEGMENT_HEADER_LEN as usize];
    reader.open(segment)?.read_at(0, &mut bytes)?;
    SegmentHeader::decode(&bytes).map_err(|reason| {
        let reason = format!("{}: {reason}", reader.describe(segment));
        io::Error::new(io::ErrorKind::InvalidData, reason)
    })
}

/// The zeros a recycled segment's writer puts at `offset`, the end of its data: at least a
/// record header's worth, up to the next `END_MARKER_ALIGN` boundary, never past `length`.
pub fn end_marker_len(offset: u64, length: u64) -> u64 {
    let end = (offset + HEADER_LEN as u64).next_multiple_of(END_MARKER_ALIGN);
    end.min(length).saturating_sub(offset)
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        let flags = if self.recycled { SEGMENT_RECYCLED } else { 0 };
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.length.to_le_bytes());
        b[32..48].copy_from_slice(&self.prev_hash.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[0..12]), &b[16..]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; SEGMENT_HEADER_LEN as usize]) -> Result<SegmentHeader, String> {
        if b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != SEGMENT_VERSION {
            return Err(format!("unknown segment version {version}"));
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[0..12]), &b[16..]);
        if crc.to_le_bytes() != b[12..16] {
            return Err("segment header CRC32C mismatch".into());
        }
        let flags = u16::from_le_bytes([b[10], b[11]]);
        if flags & !SEGMENT_RECYCLED != 0 {
            return Err(format!("unknown segment flags {flags:#x}"));
        }
        Ok(SegmentHeader {
            first_seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            length: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
            prev_hash: u128::from_le_bytes(b[32..48].try_into().expect("16 bytes")),
            recycled: flags & SEGMENT_RECYCLED != 0,
        })
    }
}

/// What a cursor found at an offset.
#[derive(Debug)]
pub enum Found<'a> {
    /// A record whose CRC checks; `bytes` is the whole record without padding.
    Record {
        header: RecordHeader,
        bytes: &'a [u8],
    },
    /// Zeros, or too little room left for a record header: the end of this segment's data.
    End,
    /// Something that is not a valid record.
    Invalid(RecordError),
}

/// Reads records from one segment through a chunk buffer (few syscalls per many records).
/// The buffer always starts at a record boundary, so payloads stay 16-aligned in memory.
#[derive(Debug)]
pub struct Cursor<S: SegmentRead> {
    segment: S,
    length: u64,
    /// Only `buffer[..buffered]` holds segment bytes (from `buffer_offset`); the buffer keeps
    /// its length between reads so that a read does not zero it first.
    buffer: rkyv::util::AlignedVec<16>,
    buffered: usize,
    buffer_offset: u64,
    /// Bytes the next read asks for (`CURSOR_TAIL_CHUNK_BYTES..=CURSOR_CHUNK_BYTES`).
    chunk: usize,
}

impl<S: SegmentRead> Cursor<S> {
    pub fn new(segment: S) -> io::Result<Cursor<S>> {
        let length = segment.len()?;
        Ok(Cursor {
            segment,
            length,
            buffer: rkyv::util::AlignedVec::new(),
            buffered: 0,
            buffer_offset: 0,
            chunk: CURSOR_CHUNK_BYTES,
        })
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn header(&mut self) -> io::Result<[u8; SEGMENT_HEADER_LEN as usize]> {
        let mut bytes = [0u8; SEGMENT_HEADER_LEN as usize];
        self.segment.read_at(0, &mut bytes)?;
        Ok(bytes)
    }

    /// The record at `offset`, checked against its CRC.
    pub fn record_at(&mut self, offset: u64) -> io::Result<Found<'_>> {
        if offset + HEADER_LEN as u64 > self.length {
            return Ok(Found::End);
        }
        let header_bytes: [u8; HEADER_LEN] =
            self.bytes(offset, HEADER_LEN)?.try_into().expect("len");
        let header = match RecordHeader::decode(&header_bytes) {
            Ok(header) => header,
            Err(RecordError::Empty) => return Ok(Found::End),
            Err(error) => return Ok(Found::Invalid(error)),
        };
        let total = HEADER_LEN + header.length as usize;
        if offset + record_len(header.length as usize) as u64 > self.length {
            return Ok(Found::Invalid(RecordError::TooLong(header.length)));
        }
        let bytes = self.bytes(offset, total)?;
        if let Err(error) = header.verify(&header_bytes, &bytes[HEADER_LEN..]) {
            return Ok(Found::Invalid(error));
        }
        Ok(Found::Record { header, bytes })
    }

    /// Forgets the buffered bytes, so the next read sees what was written since they were read
    /// (a reader that caught up with the writer, or raced its copy, holds stale bytes).
    /// The next read is small (`CURSOR_TAIL_CHUNK_BYTES`), since such a reader is at the tail.
    pub fn refresh(&mut self) {
        self.buffered = 0;
        self.buffer_offset = 0;
        self.chunk = CURSOR_TAIL_CHUNK_BYTES;
    }

    /// Whether any byte from `offset` to the end of the segment is non-zero.
    pub fn any_nonzero_from(&mut self, offset: u64) -> io::Result<bool> {
        let mut at = offset;
        while at < self.length {
            let len = (self.length - at).min(CURSOR_CHUNK_BYTES as u64) as usize;
            if self.bytes(at, len)?.iter().any(|&b| b != 0) {
                return Ok(true);
            }
            at += len as u64;
        }
        Ok(false)
    }

    /// `len` bytes at `offset`, refilling the buffer from `offset` when they are not in it.
    pub fn bytes(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let end = offset + len as u64;
        let buffered_end = self.buffer_offset + self.buffered as u64;
        if offset < self.buffer_offset || end > buffered_end {
            let want = len.max(self.chunk) as u64;
            let fill = want.min(self.length.saturating_sub(offset)) as usize;
            if fill < len {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            if self.buffer.len() < fill {
                self.buffer.resize(fill, 0);
            }
            self.buffered = 0; // a failed read leaves nothing buffered
            self.segment.read_at(offset, &mut self.buffer[..fill])?;
            self.buffered = fill;
            self.buffer_offset = offset;
            self.chunk = (self.chunk * 2).min(CURSOR_CHUNK_BYTES);
        }
        let start = (offset - self.buffer_offset) as usize;
        Ok(&self.buffer[start..start + len])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::record::RecordKind;

    /// A segment in memory that the test appends to while a cursor reads it, counting the
    /// bytes the cursor reads.
    #[derive(Clone, Default)]
    struct Growing {
        bytes: Arc<Mutex<Vec<u8>>>,
        read: Arc<AtomicU64>,
        calls: Arc<AtomicU64>,
    }

    impl SegmentRead for Growing {
        fn len(&self) -> io::Result<u64> {
            Ok(self.bytes.lock().expect("lock").len() as u64)
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let bytes = self.bytes.lock().expect("lock");
            let start = offset as usize;
            buf.copy_from_slice(&bytes[start..start + buf.len()]);
            self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn record(seq: u64, payload_len: usize) -> Vec<u8> {
        let payload: Vec<u8> = (0..payload_len).map(|i| (seq as usize + i) as u8).collect();
        let header = RecordHeader {
            kind: RecordKind::Command,
            length: payload_len as u32,
            crc32c: 0,
            seq,
            epoch: 1,
            timestamp: seq,
            prev_hash: 0,
            durable_watermark: 0,
        };
        let mut bytes = header.encode(&payload).to_vec();
        bytes.extend_from_slice(&payload);
        bytes.resize(record_len(payload_len), 0);
        bytes
    }

    #[test]
    fn a_tailing_cursor_sees_new_records_after_refresh_and_reads_little_per_wake_up() {
        const SEGMENT_BYTES: usize = 8 << 20;
        let segment = Growing::default();
        segment.bytes.lock().expect("lock").resize(SEGMENT_BYTES, 0);
        let mut cursor = Cursor::new(segment.clone()).expect("cursor");
        let mut offset = SEGMENT_HEADER_LEN;
        let mut seq = 1;
        // The first read of a fresh cursor is a whole chunk: it sees only zeros.
        assert!(matches!(
            cursor.record_at(offset).expect("read"),
            Found::End
        ));
        for wake_up in 0..200u64 {
            // The writer appends one group commit (3 records, one of them longer than the tail
            // chunk every tenth time) while the cursor holds stale bytes.
            for i in 0..3u64 {
                let len = if wake_up % 10 == 0 && i == 1 {
                    9000
                } else {
                    240
                };
                let bytes = record(seq + i, len);
                let at = (offset as usize) + written_len(&segment, offset);
                segment.bytes.lock().expect("lock")[at..at + bytes.len()].copy_from_slice(&bytes);
            }
            assert!(
                matches!(cursor.record_at(offset).expect("read"), Found::End),
                "the stale buffer still shows the end"
            );
            cursor.refresh();
            let before = segment.read.load(Ordering::Relaxed);
            for _ in 0..3 {
                match cursor.record_at(offset).expect("read") {
                    Found::Record { header, bytes } => {
                        assert_eq!(header.seq, seq);
                        assert_eq!(bytes.len(), HEADER_LEN + header.length as usize);
                        offset += record_len(header.length as usize) as u64;
                        seq += 1;
                    }
                    other => panic!("record {seq} not found after refresh: {other:?}"),
                }
            }
            assert!(matches!(
                cursor.record_at(offset).expect("read"),
                Found::End
            ));
            let read = segment.read.load(Ordering::Relaxed) - before;
            // A few small reads, never the 1 MiB chunk a cursor reads when it is behind.
            assert!(read < 64 << 10, "wake-up {wake_up} read {read} bytes");
        }
    }

    #[test]
    fn a_cursor_behind_the_writer_reads_in_whole_chunks() {
        let segment = Growing::default();
        let mut bytes = vec![0u8; SEGMENT_HEADER_LEN as usize];
        let records = 20_000u64;
        for seq in 1..=records {
            bytes.extend_from_slice(&record(seq, 240));
        }
        bytes.resize(bytes.len() + (1 << 20), 0);
        *segment.bytes.lock().expect("lock") = bytes;
        let mut cursor = Cursor::new(segment.clone()).expect("cursor");
        cursor.refresh(); // even from the small tail chunk, reads grow back to whole chunks
        let mut offset = SEGMENT_HEADER_LEN;
        for seq in 1..=records {
            match cursor.record_at(offset).expect("read") {
                Found::Record { header, .. } => {
                    assert_eq!(header.seq, seq);
                    offset += record_len(header.length as usize) as u64;
                }
                other => panic!("record {seq}: {other:?}"),
            }
        }
        assert!(matches!(
            cursor.record_at(offset).expect("read"),
            Found::End
        ));
        // 20,000 × 304 bytes ≈ 5.8 MiB: 9 reads growing from 4 KiB to 1 MiB, then about 6
        // whole chunks; not one small read per few records.
        let calls = segment.calls.load(Ordering::Relaxed);
        assert!(calls <= 20, "{calls} reads for {offset} bytes of records");
    }

    /// Bytes of records already written from `offset` (the test's writer position).
    fn written_len(segment: &Growing, offset: u64) -> usize {
        let bytes = segment.bytes.lock().expect("lock");
        let mut at = offset as usize;
        while bytes[at..at + HEADER_LEN].iter().any(|&b| b != 0) {
            let length = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4"));
            at += record_len(length as usize);
        }
        at - offset as usize
    }
}
