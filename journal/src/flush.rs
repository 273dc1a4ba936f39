//! Flush backends: fdatasync through io_uring where the kernel allows it, or the plain syscall.
//! The choice is made once at start-up by probing: a real flush through a fresh ring.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Which backend to use; `Auto` probes io_uring and falls back to the syscall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlushMode {
    #[default]
    Auto,
    IoUring,
    Syscall,
}

/// The most flushes in flight at once (a group commit that rolled segments flushes each);
/// `start` waits for the ones in flight when the ring is full.
const IN_FLIGHT_MAX: u32 = 8;

pub enum Flusher {
    IoUring { ring: Box<IoUring>, in_flight: u32 },
    Syscall,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Flusher {
    /// Picks a backend. `probe` is a file in the journal's directory used for a trial flush.
    pub fn choose(mode: FlushMode, probe: &File) -> io::Result<Flusher> {
        match mode {
            FlushMode::Syscall => Ok(Flusher::Syscall),
            FlushMode::IoUring => Flusher::uring(probe),
            FlushMode::Auto => Ok(Flusher::uring(probe).unwrap_or(Flusher::Syscall)),
        }
    }

    fn uring(probe: &File) -> io::Result<Flusher> {
        let ring = Box::new(IoUring::new(IN_FLIGHT_MAX)?);
        let mut flusher = Flusher::IoUring { ring, in_flight: 0 };
        flusher.sync_data(probe)?;
        Ok(flusher)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Flusher::IoUring { .. } => "io_uring",
            Flusher::Syscall => "syscall",
        }
    }

    /// fdatasync: the file's data (and the metadata needed to read it) is durable on return.
    pub fn sync_data(&mut self, file: &File) -> io::Result<()> {
        self.start(file)?;
        self.wait()
    }

    /// Starts an fdatasync of `file`. Through io_uring it runs in the kernel while the caller
    /// goes on (appending the next group commit); through the syscall it is done on return.
    pub fn start(&mut self, file: &File) -> io::Result<()> {
        match self {
            Flusher::Syscall => file.sync_data(),
            Flusher::IoUring { ring, in_flight } => {
                if *in_flight == IN_FLIGHT_MAX {
                    reap(ring, in_flight)?;
                }
                submit_fdatasync(ring, file)?;
                *in_flight += 1;
                Ok(())
            }
        }
    }

    /// Waits for every started flush. Returns the first failure, after reaping them all.
    pub fn wait(&mut self) -> io::Result<()> {
        match self {
            Flusher::Syscall => Ok(()),
            Flusher::IoUring { ring, in_flight } => reap(ring, in_flight),
        }
    }
}

fn submit_fdatasync(ring: &mut IoUring, file: &File) -> io::Result<()> {
    let entry = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(1);
    submit(ring, &entry)
}

/// Submits one entry. Callers build entries that name only the descriptor of a `File` they
/// hold borrowed across this call, and no memory.
fn submit(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: the entry refers only to a file descriptor, which is open now and stays open
    // until `submit` below returns (see above); from submission on the kernel holds its own
    // reference to the file, so the operation never outlives what it names.
    #[allow(unsafe_code)]
    unsafe {
        ring.submission()
            .push(entry)
            .map_err(|_| io::Error::other("io_uring queue full"))?;
    }
    ring.submit()?;
    Ok(())
}

/// Waits for and reaps every in-flight operation; the first error wins. A signal arriving
/// while the thread waits interrupts the wait, not the operations: it waits again.
fn reap(ring: &mut IoUring, in_flight: &mut u32) -> io::Result<()> {
    let mut first_error = None;
    while *in_flight > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
        for completion in ring.completion() {
            *in_flight -= 1;
            if completion.result() < 0 && first_error.is_none() {
                first_error = Some(io::Error::from_raw_os_error(-completion.result()));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `sync_file_range` flags (<linux/fs.h>): wait for writeback already under way on the
/// range, start writeback of its dirty pages, wait for that to finish.
const SYNC_FILE_RANGE_WAIT_BEFORE: u32 = 1;
const SYNC_FILE_RANGE_WRITE: u32 = 2;
const SYNC_FILE_RANGE_WAIT_AFTER: u32 = 4;

/// Writes back one range of a file's dirty pages and waits for it, without the disk cache
/// flush an fdatasync adds: `sync_file_range` through a one-entry io_uring (the crate's only
/// way to the call without libc). Used to pace a bulk writer (the spare segment's zero fill)
/// so that it never has more than one range of writeback queued at the disk.
pub struct RangeWriteback {
    ring: IoUring,
}

impl std::fmt::Debug for RangeWriteback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RangeWriteback")
    }
}

impl RangeWriteback {
    /// Fails where io_uring is refused (then the caller paces some other way).
    pub fn new() -> io::Result<RangeWriteback> {
        Ok(RangeWriteback {
            ring: IoUring::new(1)?,
        })
    }

    /// Starts the writeback of `file`'s dirty pages in `offset..offset + len` (it may block
    /// while the disk's queue is full, never for the writeback itself).
    pub fn start(&mut self, file: &File, offset: u64, len: u32) -> io::Result<()> {
        self.call(file, offset, len, SYNC_FILE_RANGE_WRITE)
    }

    /// Waits until every page of `offset..offset + len` dirty now is on the disk (in its
    /// cache: not durable until an fdatasync), writing back those not yet started.
    pub fn wait(&mut self, file: &File, offset: u64, len: u32) -> io::Result<()> {
        let flags =
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
        self.call(file, offset, len, flags)
    }

    fn call(&mut self, file: &File, offset: u64, len: u32, flags: u32) -> io::Result<()> {
        let entry = opcode::SyncFileRange::new(types::Fd(file.as_raw_fd()), len)
            .offset(offset)
            .flags(flags)
            .build()
            .user_data(2);
        submit(&mut self.ring, &entry)?;
        reap(&mut self.ring, &mut 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn range_writeback_starts_and_waits_without_changing_the_bytes() {
        let Ok(mut ranges) = RangeWriteback::new() else {
            return; // io_uring refused here: the fill's fallback is what runs
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::create_new(dir.path().join("f")).expect("create");
        file.write_all_at(&[7u8; 64 << 10], 0).expect("write");
        ranges.start(&file, 0, 32 << 10).expect("start");
        ranges.wait(&file, 0, 32 << 10).expect("wait");
        ranges
            .wait(&file, 32 << 10, 32 << 10)
            .expect("wait, not started");
        let mut back = vec![0u8; 64 << 10];
        file.read_exact_at(&mut back, 0).expect("read");
        assert!(back.iter().all(|&b| b == 7));
    }
}
