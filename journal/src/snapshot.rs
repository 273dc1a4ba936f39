//! Snapshot files: the engine's snapshot bytes with a checksummed header, written safely
//! (temp file, fsync, rename, directory fsync) so a crash leaves either the old set of
//! snapshots or the new one, never a half-written file under a snapshot's name.
//!
//! ```text
//! offset size field
//!      0    8 magic    "PAYUSNAP"
//!      8    4 version
//!     12    4 crc32c   of the snapshot bytes
//!     16    8 seq      the last seq the snapshot includes
//!     24    8 length   of the snapshot bytes
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"PAYUSNAP";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
const SUFFIX: &str = ".snapshot";
/// Valid snapshots kept; older ones are deleted after a new one is durable.
pub const SNAPSHOTS_KEPT: usize = 3;

#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub seq: u64,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl SnapshotStore {
    pub fn open(dir: &Path) -> io::Result<SnapshotStore> {
        fs::create_dir_all(dir)?;
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    /// Writes a snapshot durably and prunes old ones. Returns its path.
    pub fn save(&self, seq: u64, bytes: &[u8]) -> io::Result<PathBuf> {
        let temp = self.dir.join(format!("{seq:020}.snapshot.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(&header(seq, bytes))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        let path = self.path(seq);
        fs::rename(&temp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.prune()?;
        Ok(path)
    }

    fn seqs(&self) -> io::Result<Vec<u64>> {
        let mut seqs = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let stem = name.to_str().and_then(|n| n.strip_suffix(SUFFIX));
            if let Some(seq) = stem.filter(|s| s.len() == 20).and_then(|s| s.parse().ok()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn prune(&self) -> io::Result<()> {
        let seqs = self.seqs()?;
        let excess = seqs.len().saturating_sub(SNAPSHOTS_KEPT);
        for &seq in &seqs[..excess] {
            fs::remove_file(self.path(seq))?;
        }
        Ok(())
    }

    /// The newest snapshot whose header and checksum are valid, and the reasons any newer
    /// ones were passed over.
    pub fn load_newest(&self) -> io::Result<(Option<SnapshotFile>, Vec<String>)> {
        let mut rejected = Vec::new();
        for seq in self.seqs()?.into_iter().rev() {
            let path = self.path(seq);
            match read_valid(&path, seq) {
                Ok(bytes) => return Ok((Some(SnapshotFile { seq, path, bytes }), rejected)),
                Err(reason) => rejected.push(format!("{}: {reason}", path.display())),
            }
        }
        Ok((None, rejected))
    }
}

fn header(seq: u64, bytes: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    h
}

fn read_valid(path: &Path, seq: u64) -> Result<Vec<u8>, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(|e| e.to_string())?;
    let (head, bytes) = contents
        .split_at_checked(HEADER_LEN)
        .ok_or("shorter than its header")?;
    let expected = header(seq, bytes);
    if head[0..12] != expected[0..12] {
        return Err("bad magic or version".into());
    }
    if head[16..32] != expected[16..32] {
        return Err("seq or length does not match".into());
    }
    if head[12..16] != expected[12..16] {
        return Err("CRC32C mismatch".into());
    }
    Ok(bytes.to_vec())
}
