//! PayU Core's journal: the bank's memory. An append-only log of (command, outcome) records in
//! preallocated, memory-mapped segments, made durable by group commit (one fdatasync per batch,
//! through io_uring where the kernel allows it). Every record carries a CRC32C and the hash of
//! the record before it; recovery truncates a torn tail and refuses corruption before durable
//! data, naming file and offset. Readers tail it by seq on other threads; retention removes
//! segments that a snapshot covers and no reader needs. Snapshots are files written safely.

#![allow(unsafe_code)] // mmap and io_uring; each unsafe block says why it is sound.

mod entry;
mod flush;
mod journal;
mod mmap;
mod reader;
mod record;
mod segment;
mod sim;
mod snapshot;
mod storage;

pub use entry::{
    Entry, EntryEncoder, ReplayError, RestoreError, Restored, decode_entry, encode_entry, replay,
    restore_engine,
};
pub use flush::FlushMode;
pub use journal::{
    Journal, JournalConfig, JournalError, READERS_MAX, Readers, Recovery, SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MIN,
};
pub use mmap::{FileReader, MmapStorage, PENDING_BYTES_MAX, WriteMode, segment_path};
pub use reader::{Reader, RecordRef};
pub use record::{
    HEADER_LEN, PAYLOAD_BYTES_MAX, RECORD_ALIGN, RecordError, RecordHeader, RecordKind,
    record_hash, record_len,
};
pub use segment::{
    END_MARKER_ALIGN, SEGMENT_HEADER_LEN, SEGMENT_RECYCLED, SegmentHeader, end_marker_len,
    read_segment_header,
};
pub use sim::{SIM_SECTOR_BYTES, SimStorage};
pub use snapshot::{SNAPSHOTS_KEPT, SnapshotFile, SnapshotStore};
pub use storage::{Created, SegmentRead, Storage, StorageReader};
