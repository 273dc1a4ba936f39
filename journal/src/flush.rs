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

/// Submission queue entries: one flush is in flight at a time.
const RING_ENTRIES: u32 = 4;

pub enum Flusher {
    /// Boxed: a ring is a few hundred bytes, the syscall variant none.
    IoUring(Box<IoUring>),
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
        let mut flusher = Flusher::IoUring(Box::new(IoUring::new(RING_ENTRIES)?));
        flusher.sync_data(probe)?;
        Ok(flusher)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Flusher::IoUring(_) => "io_uring",
            Flusher::Syscall => "syscall",
        }
    }

    /// fdatasync: the file's data (and the metadata needed to read it) is durable on return.
    pub fn sync_data(&mut self, file: &File) -> io::Result<()> {
        match self {
            Flusher::Syscall => file.sync_data(),
            Flusher::IoUring(ring) => uring_fdatasync(ring, file),
        }
    }
}

fn uring_fdatasync(ring: &mut IoUring, file: &File) -> io::Result<()> {
    let entry = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(1);
    // SAFETY: the entry refers only to `file`'s descriptor, which outlives the operation:
    // we wait for its completion below before returning.
    #[allow(unsafe_code)]
    unsafe {
        ring.submission()
            .push(&entry)
            .map_err(|_| io::Error::other("io_uring queue full"))?;
    }
    ring.submit_and_wait(1)?;
    let completion = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("io_uring: no completion"))?;
    match completion.result() {
        result if result < 0 => Err(io::Error::from_raw_os_error(-result)),
        _ => Ok(()),
    }
}
