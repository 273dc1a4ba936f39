//! The segment header and a buffered record cursor over one segment.
//!
//! ```text
//! offset size field
//!      0    8 magic       "PAYUSEG1"
//!      8    2 version
//!     10    2 reserved    0
//!     12    4 crc32c      over bytes 0..12 and 16..64
//!     16    8 first_seq   seq of the segment's first record (also its file name)
//!     24    8 length      bytes, header included
//!     32   16 prev_hash   chain hash of record first_seq - 1 (0 for seq 1)
//!     48   16 reserved    0
//! ```

use std::io;

use crate::record::{HEADER_LEN, RecordError, RecordHeader, record_len};
use crate::storage::SegmentRead;

pub const SEGMENT_HEADER_LEN: u64 = 64;
pub const SEGMENT_MAGIC: [u8; 8] = *b"PAYUSEG1";
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes read at once by a cursor; a longer record is read whole.
const CURSOR_CHUNK_BYTES: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
    pub length: u64,
    pub prev_hash: u128,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
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
        Ok(SegmentHeader {
            first_seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            length: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
            prev_hash: u128::from_le_bytes(b[32..48].try_into().expect("16 bytes")),
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
    buffer: rkyv::util::AlignedVec<16>,
    buffer_offset: u64,
}

impl<S: SegmentRead> Cursor<S> {
    pub fn new(segment: S) -> io::Result<Cursor<S>> {
        let length = segment.len()?;
        Ok(Cursor {
            segment,
            length,
            buffer: rkyv::util::AlignedVec::new(),
            buffer_offset: 0,
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
    pub fn refresh(&mut self) {
        self.buffer.clear();
        self.buffer_offset = 0;
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
        let buffered_end = self.buffer_offset + self.buffer.len() as u64;
        if offset < self.buffer_offset || end > buffered_end {
            let want = len.max(CURSOR_CHUNK_BYTES) as u64;
            let fill = want.min(self.length.saturating_sub(offset)) as usize;
            if fill < len {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            self.buffer.clear();
            self.buffer.resize(fill, 0);
            self.segment.read_at(offset, &mut self.buffer)?;
            self.buffer_offset = offset;
        }
        let start = (offset - self.buffer_offset) as usize;
        Ok(&self.buffer[start..start + len])
    }
}
