//! Smoke test: records appended and flushed to real files come back after reopening, in order,
//! across segment rolls, through a reader.

use payu_journal::{FlushMode, Journal, JournalConfig, MmapStorage};

#[test]
fn appended_records_survive_reopen_and_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        segment_bytes: 16 << 10,
    };
    let payload = |seq: u64| {
        format!("record {seq} ")
            .repeat((seq % 7 + 1) as usize)
            .into_bytes()
    };
    {
        let storage = MmapStorage::open(dir.path(), FlushMode::Auto).expect("storage");
        let (mut journal, recovery) = Journal::open(storage, config).expect("open");
        assert_eq!(recovery.last_seq, 0);
        for seq in 1..=500 {
            assert_eq!(
                journal.append(1, seq * 10, &payload(seq)).expect("append"),
                seq
            );
            if seq % 50 == 0 {
                assert_eq!(journal.flush().expect("flush"), seq);
            }
        }
    }
    let storage = MmapStorage::open(dir.path(), FlushMode::Auto).expect("storage");
    let (journal, recovery) = Journal::open(storage, config).expect("reopen");
    assert_eq!(recovery.last_seq, 500);
    assert_eq!(recovery.truncated_bytes, 0);
    let mut reader = journal.reader(123).expect("reader");
    for seq in 123..=500 {
        let record = reader.next().expect("read").expect("durable record");
        assert_eq!(record.header.seq, seq);
        assert_eq!(record.header.timestamp, seq * 10);
        assert_eq!(record.payload(), payload(seq).as_slice());
    }
    assert!(reader.next().expect("read").is_none());
    let segments = payu_journal::Storage::segments(journal.storage()).expect("list");
    assert!(segments.len() > 1, "rolled over segments: {segments:?}");
}
