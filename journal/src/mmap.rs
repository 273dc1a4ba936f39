//! Real storage: one preallocated, zero-filled file per segment, made durable with fdatasync
//! (io_uring or syscall). Appends reach the file in one of two ways (`WriteMode`): copied into
//! a shared memory map of the segment, or gathered in a bounded buffer and written with one
//! `pwrite` per contiguous run when the journal flushes. docs/PERFORMANCE.md compares them. A background thread keeps one spare
//! zero-filled segment ready so rolling to a new segment costs a rename, not a 100 ms fill. It
//! writes the zeros back itself in small ranges (`ZERO_WRITEBACK_BYTES`), so its writeback never
//! queues more than a few hundred KiB at the disk in front of the journal's fdatasyncs.
//!
//! Retired segments are recycled instead of deleted (`WriteMode::Pwrite`, no archive): their
//! files wait, up to `RECYCLED_BYTES_MAX`, for `create` to rename one into the next segment,
//! across restarts too.
//! Their blocks are allocated and written already, so a roll into one costs no zero fill at
//! all, and the fill's second write of every journal byte is gone from a node whose retention
//! runs. The journal handles the stale bytes such a file holds (segment.rs).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread;

use memmap2::MmapMut;

use crate::flush::{FlushMode, Flusher, RangeWriteback};
use crate::storage::{Created, SegmentRead, Storage, StorageReader};

const SEGMENT_SUFFIX: &str = ".journal";
const SPARE_PREFIX: &str = "spare-";
const SPARE_SUFFIX: &str = ".journal.tmp";
/// Retired segment files waiting to be recycled: `recycled-<pid>-<n>.journal.tmp`.
const RECYCLED_PREFIX: &str = "recycled-";
/// Segments kept mapped at once; older ones are unmapped after a flush.
const MAPPED_SEGMENTS_MAX: usize = 4;
/// Zero-fill write size for `WriteMode::Map`. Small on purpose: ext4 caches a file in folios
/// as large as the writes that filled it, and a store through a map dirties its whole folio,
/// so 1 MiB fill writes made every flush write at least 1 MiB (measured: 1.06 MB per
/// one-record flush).
const ZERO_CHUNK_BYTES_MAPPED: usize = 4 << 10;
/// Zero-fill write size for `WriteMode::Pwrite`, whose writes dirty only the blocks they
/// touch whatever the folio size: one write per `ZERO_WRITEBACK_BYTES`.
const ZERO_CHUNK_BYTES_PWRITE: usize = 256 << 10;
/// The zero fill starts the writeback of every this many bytes itself, without a disk cache
/// flush, so it never has more than `ZERO_WRITEBACKS_IN_FLIGHT` ranges queued at the disk in
/// front of the journal's fdatasyncs. Measured with writeback in 8 MiB bursts instead (one
/// `fdatasync` per 8 MiB, the previous fill): nearly every commit over 1 ms in
/// `payu-bench pipeline --batch 1024 --window 1` fell inside a fill.
/// The fill still goes through the page cache: it leaves the segment's pages cached and
/// touched, so the journal's `pwrite`s copy into them instead of allocating them (measured:
/// after an `O_DIRECT` fill that copy took 37–45% of the engine thread's samples, against 9%).
const ZERO_WRITEBACK_BYTES: u64 = 256 << 10;
/// Ranges of the zero fill under writeback at once: two keep the disk busy while the fill
/// writes the next range.
const ZERO_WRITEBACKS_IN_FLIGHT: usize = 2;
/// Where io_uring is refused, the fill syncs every this many bytes instead.
const ZERO_SYNC_EVERY_BYTES: u64 = 8 << 20;
/// Retired segment files kept for recycling, in bytes: as much journal as one snapshot
/// interval's default (`snapshot_every_bytes`), so the segments one retention frees can all be
/// reused before the next. Retirements beyond it delete their file.
pub const RECYCLED_BYTES_MAX: u64 = 4 << 30;
/// The most appended bytes `WriteMode::Pwrite` holds before writing them out (unflushed).
pub const PENDING_BYTES_MAX: usize = 8 << 20;

/// How appended bytes reach a segment file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Copied into a shared, writable memory map of the segment (memmap2).
    Map,
    /// Gathered in a buffer (at most `PENDING_BYTES_MAX`) and written with `pwrite`, one call
    /// per contiguous run, before each flush: no page faults, no dirty-folio amplification.
    #[default]
    Pwrite,
}

#[derive(Debug)]
struct Mapped {
    file: File,
    length: u64,
    /// Present in `WriteMode::Map` only.
    map: Option<MmapMut>,
}

/// Appended bytes not yet written to their file (`WriteMode::Pwrite`): one contiguous run.
#[derive(Debug, Default)]
struct Pending {
    segment: u64,
    offset: u64,
    bytes: Vec<u8>,
}

#[derive(Debug)]
pub struct MmapStorage {
    dir: PathBuf,
    /// Retention moves removed segments here instead of deleting them.
    archive: Option<PathBuf>,
    mapped: BTreeMap<u64, Mapped>,
    flusher: Flusher,
    spare: Option<SpareMaker>,
    /// Retired segment files waiting to be recycled (path, length), oldest first.
    recycled: VecDeque<(PathBuf, u64)>,
    write_mode: WriteMode,
    pending: Pending,
}

impl MmapStorage {
    /// Opens (creating if needed) a journal directory.
    pub fn open(dir: &Path, mode: FlushMode) -> io::Result<MmapStorage> {
        fs::create_dir_all(dir)?;
        let probe = File::open(dir)?;
        let flusher = Flusher::choose(mode, &probe)?;
        remove_spares(dir)?; // a spare from an earlier run is untrusted
        // Recycled files are whole retired segments, so a restarted node keeps reusing them.
        let recycled = adopt_recycled(dir)?;
        Ok(MmapStorage {
            dir: dir.to_path_buf(),
            archive: None,
            mapped: BTreeMap::new(),
            flusher,
            spare: None,
            recycled,
            write_mode: WriteMode::default(),
            pending: Pending::default(),
        })
    }

    pub fn with_write_mode(mut self, write_mode: WriteMode) -> MmapStorage {
        self.write_mode = write_mode;
        self
    }

    pub fn write_mode(&self) -> WriteMode {
        self.write_mode
    }

    /// Retention policy "archive": segments that are removed are moved (renamed) into
    /// `archive`, which must be on the same filesystem, instead of being deleted.
    pub fn with_archive(mut self, archive: &Path) -> io::Result<MmapStorage> {
        fs::create_dir_all(archive)?;
        self.archive = Some(archive.to_path_buf());
        Ok(self)
    }

    /// "io_uring" or "syscall": which flush backend start-up chose.
    pub fn flush_backend(&self) -> &'static str {
        self.flusher.name()
    }

    fn path(&self, segment: u64) -> PathBuf {
        segment_path(&self.dir, segment)
    }

    fn mapped(&mut self, segment: u64) -> io::Result<&mut Mapped> {
        if !self.mapped.contains_key(&segment) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(segment))?;
            let length = file.metadata()?.len();
            let map = match self.write_mode {
                WriteMode::Pwrite => None,
                // SAFETY: the journal directory belongs to this process (one writer per
                // journal); nothing else truncates or resizes the file while it is mapped.
                #[allow(unsafe_code)]
                WriteMode::Map => Some(unsafe { MmapMut::map_mut(&file)? }),
            };
            self.mapped.insert(segment, Mapped { file, length, map });
        }
        Ok(self.mapped.get_mut(&segment).expect("inserted above"))
    }

    fn zero_chunk_bytes(&self) -> usize {
        match self.write_mode {
            WriteMode::Map => ZERO_CHUNK_BYTES_MAPPED,
            WriteMode::Pwrite => ZERO_CHUNK_BYTES_PWRITE,
        }
    }

    fn start_spare(&mut self, len: u64) {
        let chunk = self.zero_chunk_bytes();
        self.spare = Some(SpareMaker::start(spare_path(&self.dir), len, chunk));
    }

    /// Writes the pending run (`WriteMode::Pwrite`) to its file; not yet durable.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.bytes.is_empty() {
            return Ok(());
        }
        let segment = self.pending.segment;
        self.mapped(segment)?;
        let file = &self.mapped[&segment].file;
        let written = file.write_all_at(&self.pending.bytes, self.pending.offset);
        self.pending.bytes.clear(); // written or not, the journal poisons on an error
        written
    }

    fn unmap_old(&mut self) {
        while self.mapped.len() > MAPPED_SEGMENTS_MAX {
            self.mapped.pop_first();
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Whether retired segments are kept for reuse: not when archived (the archive keeps them),
    /// and not with maps, where a store into a recycled file's uncached page would read that
    /// page from disk first, inside the engine thread's copy.
    fn recycles(&self) -> bool {
        self.archive.is_none() && self.write_mode == WriteMode::Pwrite
    }

    fn recycled_bytes(&self) -> u64 {
        self.recycled.iter().map(|&(_, len)| len).sum()
    }

    /// Takes the spare segment if one of the right size is being made, waiting for it to be
    /// finished: that is never slower than filling a second file here, beside it.
    fn take_spare(&mut self, len: u64) -> Option<PathBuf> {
        let spare = self.spare.as_mut()?;
        if spare.len != len {
            return None;
        }
        match spare.ready.recv() {
            Ok(Ok(path)) => Some(path),
            Ok(Err(_)) | Err(_) => {
                self.spare = None; // the maker failed or stopped: fill inline from now on
                None
            }
        }
    }
}

impl Storage for MmapStorage {
    type Reader = FileReader;

    fn reader(&self) -> FileReader {
        FileReader {
            dir: self.dir.clone(),
        }
    }

    fn segments(&self) -> io::Result<Vec<u64>> {
        list_segments(&self.dir)
    }

    fn create(&mut self, segment: u64, len: u64) -> io::Result<Created> {
        let path = self.path(segment);
        let reusable = self.recycled.iter().position(|&(_, l)| l == len);
        if let Some(index) = reusable.filter(|_| self.recycles()) {
            let (recycled, _) = self.recycled.remove(index).expect("found above");
            fs::rename(recycled, &path)?;
            self.sync_dir()?;
            return Ok(Created::Recycled);
        }
        let took_spare = match self.take_spare(len) {
            Some(spare) => {
                fs::rename(spare, &path)?;
                true
            }
            None => {
                let temp = self.dir.join(format!("{segment:020}.creating.tmp"));
                zero_filled_file(&temp, len, self.zero_chunk_bytes())?;
                fs::rename(&temp, &path)?;
                false
            }
        };
        self.sync_dir()?;
        // Ask for a new spare only once the last one was taken: a second request while one
        // waits would make the thread truncate and refill the waiting file, which may be
        // renamed into a live segment meanwhile.
        match &self.spare {
            Some(spare) if spare.len == len => {
                if took_spare {
                    spare.request();
                }
            }
            _ => self.start_spare(len),
        }
        Ok(Created::Zeroed)
    }

    fn prepare(&mut self, len: u64) {
        if self.spare.as_ref().is_none_or(|spare| spare.len != len) {
            self.start_spare(len);
        }
    }

    fn segment_len(&self, segment: u64) -> io::Result<u64> {
        Ok(fs::metadata(self.path(segment))?.len())
    }

    fn write(&mut self, segment: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mapped = self.mapped(segment)?;
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&end| end <= mapped.length);
        end.ok_or_else(|| io::Error::other("write past the end of the segment"))?;
        if let Some(map) = &mut mapped.map {
            let start = offset as usize; // within the mapped length, checked above
            map[start..start + bytes.len()].copy_from_slice(bytes);
            return Ok(());
        }
        let pending = &self.pending;
        let continues = pending.segment == segment
            && pending.offset + pending.bytes.len() as u64 == offset
            && pending.bytes.len() + bytes.len() <= PENDING_BYTES_MAX;
        if !continues {
            self.write_pending()?;
            self.pending.segment = segment;
            self.pending.offset = offset;
        }
        self.pending.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// The fdatasync syscall on the caller's thread, whatever the flush backend: with nothing
    /// to overlap it with, io_uring would only add its worker thread's wake-ups (measured in
    /// docs/PERFORMANCE.md). A flush started before is waited for too.
    fn flush(&mut self, segment: u64) -> io::Result<()> {
        self.write_pending()?;
        self.mapped(segment)?;
        self.mapped[&segment].file.sync_data()?;
        self.flush_wait()
    }

    fn flush_start(&mut self, segment: u64) -> io::Result<()> {
        self.write_pending()?;
        self.mapped(segment)?;
        let mapped = &self.mapped[&segment];
        // fdatasync writes back the file's dirty pages, those dirtied through a map included.
        self.flusher.start(&mapped.file)
    }

    fn flush_wait(&mut self) -> io::Result<()> {
        self.flusher.wait()?;
        self.unmap_old();
        Ok(())
    }

    fn remove(&mut self, segment: u64) -> io::Result<()> {
        if self.pending.segment == segment {
            self.pending.bytes.clear(); // nothing to keep of a segment being removed
        }
        self.mapped.remove(&segment);
        if let Some(archive) = &self.archive {
            fs::rename(self.path(segment), segment_path(archive, segment))?;
            File::open(archive)?.sync_all()?;
        } else {
            fs::remove_file(self.path(segment))?;
        }
        self.sync_dir()
    }

    fn retire(&mut self, segment: u64) -> io::Result<()> {
        let len = self.segment_len(segment)?;
        if !self.recycles() || self.recycled_bytes() + len > RECYCLED_BYTES_MAX {
            return self.remove(segment);
        }
        if self.pending.segment == segment {
            self.pending.bytes.clear();
        }
        self.mapped.remove(&segment);
        // Out of the segment list at once; a later open adopts it again (`adopt_recycled`).
        let recycled = unique_path(&self.dir, RECYCLED_PREFIX);
        fs::rename(self.path(segment), &recycled)?;
        self.sync_dir()?;
        self.recycled.push_back((recycled, len));
        Ok(())
    }
}

/// Reads segments with `pread` on its own file handles: never blocks or slows the writer.
#[derive(Clone, Debug)]
pub struct FileReader {
    dir: PathBuf,
}

impl StorageReader for FileReader {
    type Segment = File;

    fn segments(&self) -> io::Result<Vec<u64>> {
        list_segments(&self.dir)
    }

    fn open(&self, segment: u64) -> io::Result<File> {
        File::open(segment_path(&self.dir, segment))
    }

    fn describe(&self, segment: u64) -> String {
        segment_path(&self.dir, segment).display().to_string()
    }
}

impl SegmentRead for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SEGMENT_SUFFIX}"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            segments.push(stem.parse().map_err(io::Error::other)?);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// A spare file name no other spare maker uses: the thread of a dropped storage may still be
/// filling its own spare while a reopened storage makes a new one in the same directory.
fn spare_path(dir: &Path) -> PathBuf {
    unique_path(dir, SPARE_PREFIX)
}

/// `<prefix><pid>-<n>.journal.tmp`, with `n` unique in this process.
fn unique_path(dir: &Path, prefix: &str) -> PathBuf {
    static NAMES: AtomicU64 = AtomicU64::new(0);
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{prefix}{}-{n}{SPARE_SUFFIX}", std::process::id()))
}

/// The recycled files an earlier run left, up to `RECYCLED_BYTES_MAX`; the rest are deleted.
/// Each was a whole retired segment when it was renamed here (`retire`).
fn adopt_recycled(dir: &Path) -> io::Result<VecDeque<(PathBuf, u64)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(RECYCLED_PREFIX) && name.ends_with(SPARE_SUFFIX) {
            found.push((entry.path(), entry.metadata()?.len()));
        }
    }
    found.sort();
    let mut adopted = VecDeque::new();
    let mut bytes = 0;
    for (path, len) in found {
        if bytes + len <= RECYCLED_BYTES_MAX {
            bytes += len;
            adopted.push_back((path, len));
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(adopted)
}

/// Removes leftover spares. Best effort: a leftover is never used, only wasted space.
fn remove_spares(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SPARE_PREFIX) && name.ends_with(SPARE_SUFFIX) {
            let _ = fs::remove_file(dir.join(name.as_ref()));
        }
    }
    Ok(())
}

/// Writes `len` zero bytes for real (not a sparse file: first writes into holes or unwritten
/// extents would make every later fdatasync also commit allocation metadata) and syncs.
fn zero_filled_file(path: &Path, len: u64, chunk_bytes: usize) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; chunk_bytes];
    // Without io_uring (or if the kernel refuses the call) the fill falls back to syncing.
    let mut writeback = RangeWriteback::new().ok();
    let mut written = 0;
    // Ranges (offset, len) whose writeback was started and not yet waited for, oldest first.
    let mut in_flight: VecDeque<(u64, u32)> = VecDeque::with_capacity(ZERO_WRITEBACKS_IN_FLIGHT);
    let mut range_start = 0;
    while written < len {
        let chunk = (len - written).min(chunk_bytes as u64) as usize;
        file.write_all(&zeros[..chunk])?;
        written += chunk as u64;
        let due = written - range_start >= ZERO_WRITEBACK_BYTES || written == len;
        match &mut writeback {
            Some(ranges) if due => {
                // Start this range's writeback; at the bound, wait for the oldest. A real
                // write error shows again in the sync_all below: an error here only ends the
                // pacing (the fill then syncs as without io_uring).
                let len = (written - range_start) as u32; // <= ZERO_WRITEBACK_BYTES + a chunk
                let mut paced = ranges.start(&file, range_start, len);
                in_flight.push_back((range_start, len));
                if in_flight.len() == ZERO_WRITEBACKS_IN_FLIGHT {
                    let (offset, len) = in_flight.pop_front().expect("at the bound");
                    paced = paced.and_then(|()| ranges.wait(&file, offset, len));
                }
                if paced.is_err() {
                    writeback = None;
                }
                range_start = written;
            }
            None if written % ZERO_SYNC_EVERY_BYTES == 0 => file.sync_data()?,
            _ => {}
        }
    }
    file.sync_all()
}

/// A background thread that keeps one zero-filled spare segment ready.
#[derive(Debug)]
struct SpareMaker {
    len: u64,
    want: SyncSender<()>,
    ready: Receiver<io::Result<PathBuf>>,
}

impl SpareMaker {
    fn start(path: PathBuf, len: u64, chunk_bytes: usize) -> SpareMaker {
        // Capacity 1 each way: at most one spare is being made or waiting.
        let (want, wanted) = mpsc::sync_channel::<()>(1);
        let (done, ready) = mpsc::sync_channel(1);
        let spawned = thread::Builder::new()
            .name("journal-spare".into())
            .spawn(move || {
                while wanted.recv().is_ok() {
                    if done
                        .send(zero_filled_file(&path, len, chunk_bytes).map(|()| path.clone()))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        let maker = SpareMaker { len, want, ready };
        if spawned.is_ok() {
            maker.request();
        }
        maker
    }

    fn request(&self) {
        // Full means a request is already pending: nothing to add.
        let _ = self.want.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_segments_are_recycled_by_later_creates_even_after_a_reopen() {
        const LEN: u64 = 64 << 10;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || MmapStorage::open(dir.path(), FlushMode::Syscall).expect("open");
        let mut storage = open();
        for segment in 1..=3 {
            assert_eq!(
                storage.create(segment, LEN).expect("create"),
                Created::Zeroed
            );
            storage.write(segment, 0, &[0xA5; 64]).expect("write");
            storage.flush(segment).expect("flush");
        }
        storage.retire(1).expect("retire");
        storage.retire(2).expect("retire");
        assert_eq!(storage.segments().expect("list"), [3]);
        drop(storage);
        // A new process finds both retired files and reuses them before zero-filling.
        let mut storage = open();
        assert_eq!(storage.create(4, LEN).expect("create"), Created::Recycled);
        let mut old = [0u8; 64];
        let recycled = storage.reader().open(4).expect("open 4");
        SegmentRead::read_at(&recycled, 0, &mut old).expect("read");
        assert_eq!(
            old, [0xA5; 64],
            "a recycled segment keeps the retired bytes"
        );
        assert_eq!(storage.create(5, LEN * 2).expect("create"), Created::Zeroed);
        assert_eq!(storage.create(6, LEN).expect("create"), Created::Recycled);
        assert_eq!(storage.create(7, LEN).expect("create"), Created::Zeroed);
        assert_eq!(storage.segments().expect("list"), [3, 4, 5, 6, 7]);
        // With an archive, retired segments are archived, never recycled.
        let archive = tempfile::tempdir().expect("archive");
        let mut storage = open().with_archive(archive.path()).expect("archive");
        storage.retire(3).expect("retire");
        assert!(segment_path(archive.path(), 3).exists());
        assert_eq!(storage.create(8, LEN).expect("create"), Created::Zeroed);
        // A file left for recycling waits for a pwrite-mode storage: maps never reuse one.
        open().retire(4).expect("retire");
        let mut mapped = open().with_write_mode(WriteMode::Map);
        assert_eq!(mapped.create(9, LEN).expect("create"), Created::Zeroed);
        assert_eq!(open().create(10, LEN).expect("create"), Created::Recycled);
    }

    #[test]
    fn a_fill_writes_zeros_over_old_content_at_any_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fill");
        // Whole writeback ranges, a short last range, a partial chunk, less than a chunk.
        for (len, chunk) in [
            (1 << 20, ZERO_CHUNK_BYTES_PWRITE),
            ((1 << 20) + 4096, ZERO_CHUNK_BYTES_PWRITE),
            ((300 << 10) + 100, ZERO_CHUNK_BYTES_PWRITE),
            (100, ZERO_CHUNK_BYTES_PWRITE),
            ((600 << 10) + 7, ZERO_CHUNK_BYTES_MAPPED),
        ] {
            fs::write(&path, vec![0xA5u8; 2 << 20]).expect("old content");
            zero_filled_file(&path, len, chunk).expect("fill");
            let bytes = fs::read(&path).expect("read the fill");
            assert_eq!(bytes.len() as u64, len);
            assert!(bytes.iter().all(|&b| b == 0), "a non-zero byte in the fill");
        }
    }
}
