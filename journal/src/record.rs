//! The record format. One record is a 64-byte header and a payload, padded to 16 bytes so
//! every payload starts 16-aligned in the mapped segment (rkyv can read it in place).
//!
//! ```text
//! offset size field
//!      0    4 magic              "PAYR"
//!      4    2 version            RECORD_VERSION
//!      6    2 kind               RecordKind
//!      8    4 length             payload bytes, excluding padding
//!     12    4 crc32c             over bytes 0..12, 16..64 and the payload
//!     16    8 seq                gap-free, from 1
//!     24    8 epoch              the primary's epoch that wrote it
//!     32    8 timestamp          ns since the Unix epoch, decided before journaling
//!     40   16 prev_hash          chain hash of the previous record (0 before seq 1)
//!     56    8 durable_watermark  every seq <= this was durable on this node when written
//! ```
//!
//! All integers are little-endian. The chain hash of a record is xxh3-128 over bytes 0..12,
//! 16..56 and the payload: everything but the CRC and the watermark. A standby stores the very
//! same bytes except the watermark, which is node-local (it says what was durable *here*, which
//! is what recovery needs to tell a torn tail from corruption), and the CRC that covers it. So
//! both nodes have identical chain hashes, and divergence is found by seq + epoch + hash.
//!
//! The format is versioned
//! by `version`: a reader accepts only versions it knows, and a new version is introduced by
//! writing it from a new segment on, so one segment never mixes versions.

use xxhash_rust::xxh3::Xxh3;

pub const HEADER_LEN: usize = 64;
pub const RECORD_ALIGN: usize = 16;
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"PAYR");
pub const RECORD_VERSION: u16 = 1;
/// The largest payload: a full transfer batch with its outcome fits many times over.
pub const PAYLOAD_BYTES_MAX: usize = 16 << 20;

const _: () = assert!(HEADER_LEN % RECORD_ALIGN == 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum RecordKind {
    /// An engine command and its outcome (`entry::Entry`).
    Command = 1,
}

impl RecordKind {
    fn from_u16(value: u16) -> Option<RecordKind> {
        match value {
            1 => Some(RecordKind::Command),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub length: u32,
    pub crc32c: u32,
    pub seq: u64,
    pub epoch: u64,
    pub timestamp: u64,
    pub prev_hash: u128,
    pub durable_watermark: u64,
}

/// Why bytes are not a valid record header or record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// All-zero header: the end of written data in a preallocated segment.
    Empty,
    BadMagic,
    BadVersion(u16),
    BadKind(u16),
    TooLong(u32),
    BadChecksum,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Empty => f.write_str("no record (zeros)"),
            RecordError::BadMagic => f.write_str("bad magic"),
            RecordError::BadVersion(v) => write!(f, "unknown record version {v}"),
            RecordError::BadKind(k) => write!(f, "unknown record kind {k}"),
            RecordError::TooLong(n) => write!(f, "payload length {n} over the maximum"),
            RecordError::BadChecksum => f.write_str("CRC32C mismatch"),
        }
    }
}

/// The bytes a record with `payload_len` bytes of payload takes in a segment.
pub fn record_len(payload_len: usize) -> usize {
    (HEADER_LEN + payload_len).next_multiple_of(RECORD_ALIGN)
}

impl RecordHeader {
    /// Encodes the header with its CRC computed over the header and `payload`.
    pub fn encode(&self, payload: &[u8]) -> [u8; HEADER_LEN] {
        assert_eq!(self.length as usize, payload.len());
        let mut bytes = self.encode_without_crc();
        let crc = crc_of(&bytes, payload);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn encode_without_crc(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.length.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..40].copy_from_slice(&self.timestamp.to_le_bytes());
        b[40..56].copy_from_slice(&self.prev_hash.to_le_bytes());
        b[56..64].copy_from_slice(&self.durable_watermark.to_le_bytes());
        b
    }

    /// Decodes a header without checking the CRC (which needs the payload).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<RecordHeader, RecordError> {
        if b.iter().all(|&byte| byte == 0) {
            return Err(RecordError::Empty);
        }
        if u32_at(b, 0) != RECORD_MAGIC {
            return Err(RecordError::BadMagic);
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != RECORD_VERSION {
            return Err(RecordError::BadVersion(version));
        }
        let kind_code = u16::from_le_bytes([b[6], b[7]]);
        let kind = RecordKind::from_u16(kind_code).ok_or(RecordError::BadKind(kind_code))?;
        let length = u32_at(b, 8);
        if length as usize > PAYLOAD_BYTES_MAX {
            return Err(RecordError::TooLong(length));
        }
        Ok(RecordHeader {
            kind,
            length,
            crc32c: u32_at(b, 12),
            seq: u64_at(b, 16),
            epoch: u64_at(b, 24),
            timestamp: u64_at(b, 32),
            prev_hash: u128::from_le_bytes(b[40..56].try_into().expect("16 bytes")),
            durable_watermark: u64_at(b, 56),
        })
    }

    /// Checks the CRC against the header bytes as stored and the payload.
    pub fn verify(&self, stored: &[u8; HEADER_LEN], payload: &[u8]) -> Result<(), RecordError> {
        match payload.len() == self.length as usize && crc_of(stored, payload) == self.crc32c {
            true => Ok(()),
            false => Err(RecordError::BadChecksum),
        }
    }
}

fn crc_of(header: &[u8; HEADER_LEN], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[0..12]);
    let crc = crc32c::crc32c_append(crc, &header[16..HEADER_LEN]);
    crc32c::crc32c_append(crc, payload)
}

/// The chain hash of a record: header without CRC and watermark, then payload.
pub fn record_hash(header: &[u8; HEADER_LEN], payload: &[u8]) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(&header[0..12]);
    hasher.update(&header[16..56]);
    hasher.update(payload);
    hasher.digest128()
}

/// Rewrites a record header's node-local watermark and its CRC (a standby re-stamping a
/// replicated record with what is durable on the standby).
pub fn restamp_watermark(header: &mut [u8; HEADER_LEN], payload: &[u8], watermark: u64) {
    header[56..64].copy_from_slice(&watermark.to_le_bytes());
    let crc = crc_of(header, payload);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload: &[u8]) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Command,
            length: payload.len() as u32,
            crc32c: 0,
            seq: 42,
            epoch: 3,
            timestamp: 1_700_000_000_000_000_000,
            prev_hash: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
            durable_watermark: 40,
        }
    }

    #[test]
    fn header_round_trips_and_detects_every_flipped_bit() {
        let payload = b"transfer 1 -> 2";
        let bytes = header(payload).encode(payload);
        let decoded = RecordHeader::decode(&bytes).expect("decodes");
        decoded.verify(&bytes, payload).expect("crc matches");
        assert_eq!(decoded.seq, 42);
        assert_eq!(decoded.prev_hash, header(payload).prev_hash);
        for bit in 0..HEADER_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            let caught = match RecordHeader::decode(&flipped) {
                Err(_) => true,
                Ok(h) => h.verify(&flipped, payload).is_err(),
            };
            assert!(caught, "flipped bit {bit} went unnoticed");
        }
        let mut bad_payload = *payload;
        bad_payload[0] ^= 1;
        assert_eq!(
            decoded.verify(&bytes, &bad_payload),
            Err(RecordError::BadChecksum)
        );
    }

    #[test]
    fn restamping_the_watermark_keeps_the_chain_hash() {
        let payload = b"payload";
        let mut bytes = header(payload).encode(payload);
        let hash = record_hash(&bytes, payload);
        restamp_watermark(&mut bytes, payload, 7);
        let decoded = RecordHeader::decode(&bytes).expect("decodes");
        decoded.verify(&bytes, payload).expect("crc re-computed");
        assert_eq!(decoded.durable_watermark, 7);
        assert_eq!(record_hash(&bytes, payload), hash);
    }

    #[test]
    fn zeros_are_the_end_not_a_record() {
        assert_eq!(
            RecordHeader::decode(&[0; HEADER_LEN]),
            Err(RecordError::Empty)
        );
        assert_eq!(record_len(0), 64);
        assert_eq!(record_len(1), 80);
        assert_eq!(record_len(16), 80);
        assert_eq!(record_len(17), 96);
    }
}
