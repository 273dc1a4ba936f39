//! Crash-test child (journal/tests/crash.rs): opens a journal directory, appends records whose
//! payload is a function of their seq, flushes every few records, and after each successful
//! flush prints the durable seq on its own line. The test SIGKILLs it at a random moment and
//! checks that everything it printed survived. It exits by itself after `RECORDS_MAX` records.
//! Half the seeds run retention after every flush, so later segments recycle retired files
//! and kills land in segments holding stale records.
//!
//! Usage: payu-journal-crash-child <journal dir> <seed>

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;

use payu_journal::{FlushMode, Journal, JournalConfig, MmapStorage, WriteMode};

/// Records one run appends at most, so an unkilled child ends soon.
const RECORDS_MAX: u64 = 3_000;
/// The most records in one group commit.
const BATCH_LEN_MAX: u64 = 16;
/// Small segments, so runs roll over (and get killed during) segment creation.
const SEGMENT_BYTES: u64 = 64 << 10;
/// With retention, the records kept before the durable seq (about two segments).
const RETAINED_RECORDS: u64 = 400;

/// The payload of `seq`: its bytes repeated 1 to 61 times. The test computes the same.
fn payload(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().repeat((seq % 61 + 1) as usize)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: payu-journal-crash-child <journal dir> <seed> <map|pwrite>";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let mut rng: u64 = args.next().ok_or(usage)?.parse()?;
    let write_mode = match args.next().as_deref() {
        Some("map") => WriteMode::Map,
        Some("pwrite") => WriteMode::Pwrite,
        _ => return Err(usage.into()),
    };
    let storage = MmapStorage::open(&dir, FlushMode::Auto)?.with_write_mode(write_mode);
    let config = JournalConfig {
        segment_bytes: SEGMENT_BYTES,
    };
    let (mut journal, _) = Journal::open(storage, config)?;
    let mut stdout = std::io::stdout().lock();
    let mut appended = 0;
    let pipelined = (rng >> 1) % 2 == 1; // bit 0 picked the write mode
    let retention = (rng >> 2) % 2 == 1;
    while appended < RECORDS_MAX {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let batch = 1 + (rng >> 33) % BATCH_LEN_MAX;
        for _ in 0..batch {
            let seq = journal.next_seq();
            journal.append(1, seq, &payload(seq))?;
            appended += 1;
        }
        // Half the seeds pipeline: the previous group commit finishes after this batch was
        // appended, and this one stays in flight while the next batch is appended.
        let durable = match pipelined {
            true => {
                let durable = journal.flush_wait()?;
                journal.flush_start()?;
                durable
            }
            false => journal.flush()?,
        };
        if retention && durable > RETAINED_RECORDS {
            journal.remove_covered(durable - RETAINED_RECORDS)?;
        }
        writeln!(stdout, "{durable}")?;
        stdout.flush()?;
    }
    let durable = journal.flush()?;
    writeln!(stdout, "{durable}")?;
    Ok(())
}
