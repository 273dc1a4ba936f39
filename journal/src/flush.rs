//! Flush backends: fdatasync through io_uring where the kernel allows it, or the plain syscall.
//! The choice is made once at start-up by probing: a real flush through a fresh ring.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};

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
    // SAFETY: the entry refers only to `file`'s descriptor, which is open now and stays open
    // until `submit` below returns; from submission on the kernel holds its own reference to
    // the file, so the operation never outlives what it names.
    #[allow(unsafe_code)]
    unsafe {
        ring.submission()
            .push(&entry)
            .map_err(|_| io::Error::other("io_uring queue full"))?;
    }
    ring.submit()?;
    Ok(())
}

/// Waits for and reaps every in-flight flush; the first error wins.
fn reap(ring: &mut IoUring, in_flight: &mut u32) -> io::Result<()> {
    let mut first_error = None;
    while *in_flight > 0 {
        ring.submit_and_wait(1)?;
        for completion in ring.completion() {
            *in_flight -= 1;
            if completion.result() < 0 && first_error.is_none() {
                first_error = Some(io::Error::from_raw_os_error(-completion.result()));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
