//! The node's data directory: an exclusive lock (one node per directory) and the
//! persisted generation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "cannot use data directory {path}: {source}. Fix: create it or choose another --data-dir writable by this user"
    )]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "data directory {path} is in use by another vigil node{holder}. Fix: stop that node or give this one its own --data-dir"
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "{path} does not hold a generation number ({content:?}). Fix: remove the file; the node picks a new generation from the clock"
    )]
    CorruptGeneration { path: PathBuf, content: String },
}

pub struct DataDir {
    path: PathBuf,
    _lock: Flock<File>,
}

const LOCK_FILE: &str = "lock";
const GENERATION_FILE: &str = "generation";

impl DataDir {
    /// Creates the directory if needed (mode 0700) and takes its lock.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io_err = |source| DataDirError::Io {
            path: path.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_err)?;
        let lock_path = path.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(DataDirError::Locked {
                    path: path.to_path_buf(),
                    holder: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                });
            }
        };
        // Record who holds the lock, for the error message another node would print.
        lock.set_len(0).map_err(io_err)?;
        write!(lock, "{}", std::process::id()).map_err(io_err)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The generation for this start: larger than any earlier one of this directory,
    /// and at least the clock in milliseconds (so a wiped directory still yields a
    /// generation that beats the one the cluster remembers). Persisted before use.
    pub fn next_generation(&self) -> Result<u64, DataDirError> {
        let previous = self.read_generation()?;
        let clock_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let next = previous.map_or(clock_ms, |p| p.saturating_add(1).max(clock_ms));
        self.persist_generation(next)?;
        Ok(next)
    }

    fn read_generation(&self) -> Result<Option<u64>, DataDirError> {
        let path = self.path.join(GENERATION_FILE);
        match fs::read_to_string(&path) {
            Ok(content) => content.trim().parse::<u64>().map(Some).map_err(|_| {
                DataDirError::CorruptGeneration {
                    path,
                    content: content.chars().take(40).collect(),
                }
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DataDirError::Io { path, source }),
        }
    }

    /// Writes the generation durably: temporary file, fsync, rename, fsync directory.
    pub fn persist_generation(&self, generation: u64) -> Result<(), DataDirError> {
        self.write_file(GENERATION_FILE, format!("{generation}\n").as_bytes())
    }

    /// Replaces `name` in the directory with `content`, durably and atomically (a
    /// crash leaves the old file or the new one, never a mix): temporary file, fsync,
    /// rename, fsync of the directory.
    pub fn write_file(&self, name: &str, content: &[u8]) -> Result<(), DataDirError> {
        write_file_in(&self.path, name, content)
    }
}

/// [`DataDir::write_file`] for a worker thread, which cannot borrow the [`DataDir`]
/// (it holds the lock): `dir` is its [`DataDir::path`].
pub fn write_file_in(dir: &Path, name: &str, content: &[u8]) -> Result<(), DataDirError> {
    {
        let io_err = |source| DataDirError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let tmp = dir.join(format!("{name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        file.write_all(content).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fs::rename(&tmp, dir.join(name)).map_err(io_err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_increase_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path())
            .unwrap()
            .next_generation()
            .unwrap();
        let second = DataDir::open(dir.path())
            .unwrap()
            .next_generation()
            .unwrap();
        assert!(second > first);
        // Even when the stored value is ahead of the clock.
        let d = DataDir::open(dir.path()).unwrap();
        d.persist_generation(u64::MAX - 5).unwrap();
        assert_eq!(d.next_generation().unwrap(), u64::MAX - 4);
    }

    #[test]
    fn a_second_node_cannot_share_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("in use by another vigil node"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_generation_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(GENERATION_FILE), "garbage").unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let err = d.next_generation().unwrap_err().to_string();
        assert!(
            err.contains("generation") && err.contains("garbage"),
            "{err}"
        );
    }
}
