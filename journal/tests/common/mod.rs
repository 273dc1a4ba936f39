//! Helpers shared by the journal's integration tests: a seeded RNG, a model of what was
//! appended, the record layout (where each seq lands), and a full check of a journal against
//! the model and the hash chain.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use payu_journal::{
    HEADER_LEN, Journal, JournalConfig, SEGMENT_HEADER_LEN, SegmentRead, Storage, StorageReader,
    record_hash, record_len,
};

/// Small segments, so a few hundred records roll over many of them.
pub const SEGMENT_BYTES: u64 = 16 << 10;

pub fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: SEGMENT_BYTES,
    }
}

/// SplitMix64: seeded, tiny, and good enough for choosing test inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

/// Deterministic payload bytes for a seq; every byte is non-zero, so zeroing any of them is
/// a real change.
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (seq.wrapping_mul(31).wrapping_add(i.wrapping_mul(7)) % 255 + 1) as u8)
        .collect()
}

/// One appended record as the test wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub epoch: u64,
    pub timestamp: u64,
    pub payload: Vec<u8>,
    /// The journal's durable seq when the record was appended.
    pub watermark: u64,
}

/// The test's copy of a journal: what was appended, indexed by seq - 1.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub records: Vec<Written>,
}

impl Model {
    pub fn next_seq(&self) -> u64 {
        self.records.len() as u64 + 1
    }

    /// Appends a record of `len` payload bytes to both the journal and the model.
    pub fn append<S: Storage>(&mut self, journal: &mut Journal<S>, len: usize) -> u64 {
        let seq = self.next_seq();
        assert_eq!(
            journal.next_seq(),
            seq,
            "journal and model agree on the next seq"
        );
        let written = Written {
            epoch: 1 + seq / 100,
            timestamp: 1_700_000_000_000_000_000 + seq * 1_000,
            payload: payload(seq, len),
            watermark: journal.durable_seq(),
        };
        let appended = journal
            .append(written.epoch, written.timestamp, &written.payload)
            .unwrap_or_else(|e| panic!("append of seq {seq}: {e}"));
        assert_eq!(appended, seq);
        self.records.push(written);
        seq
    }

    /// Forgets every record after `last_seq` (recovery truncated them).
    pub fn truncate(&mut self, last_seq: u64) {
        self.records.truncate(last_seq as usize);
    }

    pub fn get(&self, seq: u64) -> &Written {
        &self.records[(seq - 1) as usize]
    }
}

/// Reads every durable record from `from` on and checks it against the model: gap-free seqs,
/// header fields, payload, watermark, and the hash chain (seq 1 links to 0). Also checks that
/// the reader ends exactly at the durable seq and that the journal's last hash is the chain's.
/// Returns the number of records read.
pub fn check_journal<S: Storage>(journal: &Journal<S>, model: &Model, from: u64) -> u64 {
    let mut reader = journal
        .reader(from)
        .unwrap_or_else(|e| panic!("reader from {from}: {e}"));
    let mut prev_hash = (from == 1).then_some(0u128);
    let mut seq = from;
    while let Some(record) = reader
        .next()
        .unwrap_or_else(|e| panic!("reading seq {seq}: {e}"))
    {
        assert_eq!(record.header.seq, seq, "seqs are gap-free");
        let written = model.get(seq);
        assert_eq!(record.header.epoch, written.epoch, "epoch of {seq}");
        assert_eq!(
            record.header.timestamp, written.timestamp,
            "timestamp of {seq}"
        );
        assert_eq!(
            record.header.length as usize,
            written.payload.len(),
            "length of {seq}"
        );
        assert_eq!(
            record.header.durable_watermark, written.watermark,
            "watermark of {seq}"
        );
        assert!(record.payload() == written.payload, "payload of {seq}");
        if let Some(prev_hash) = prev_hash {
            assert_eq!(record.header.prev_hash, prev_hash, "chain broken at {seq}");
        }
        prev_hash = Some(hash_of(record.bytes));
        seq += 1;
    }
    assert_eq!(
        seq - 1,
        journal.durable_seq(),
        "reader stops at the durable seq"
    );
    if seq > from {
        assert_eq!(
            Some(journal.last_hash()),
            prev_hash,
            "last hash is the chain's"
        );
    }
    seq - from
}

/// The chain hash of a record given as header and payload bytes.
pub fn hash_of(record: &[u8]) -> u128 {
    let header: &[u8; HEADER_LEN] = record[..HEADER_LEN].try_into().expect("a header");
    record_hash(header, &record[HEADER_LEN..])
}

/// Where one record lies in the journal's segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub segment: u64,
    pub offset: u64,
    /// Header and payload bytes (the CRC covers them; padding after them is not covered).
    pub bytes: u64,
    /// Bytes up to the next record, padding included.
    pub padded: u64,
}

/// The journal's layout rule: records follow the segment header back to back, and a record
/// that does not fit starts a new segment named by its seq.
pub fn layout(segment_bytes: u64, payload_lens: impl IntoIterator<Item = usize>) -> Vec<Place> {
    let mut places = Vec::new();
    let (mut segment, mut offset) = (1, SEGMENT_HEADER_LEN);
    for (index, len) in payload_lens.into_iter().enumerate() {
        let padded = record_len(len) as u64;
        if offset + padded > segment_bytes {
            segment = index as u64 + 1;
            offset = SEGMENT_HEADER_LEN;
        }
        places.push(Place {
            segment,
            offset,
            bytes: (HEADER_LEN + len) as u64,
            padded,
        });
        offset += padded;
    }
    places
}

pub fn layout_of(model: &Model) -> Vec<Place> {
    layout(SEGMENT_BYTES, model.records.iter().map(|w| w.payload.len()))
}

/// Every segment's bytes as readers see them.
pub fn image<R: StorageReader>(reader: &R) -> Vec<(u64, Vec<u8>)> {
    let segments = reader.segments().expect("list segments");
    segments
        .into_iter()
        .map(|id| {
            let segment = reader.open(id).expect("open segment");
            let mut bytes = vec![0u8; segment.len().expect("segment length") as usize];
            segment.read_at(0, &mut bytes).expect("read segment");
            (id, bytes)
        })
        .collect()
}
