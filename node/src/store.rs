//! The durable on-disk snapshot store of a replica host.
//!
//! Layout: `root/<agent>/<seq, 20 digits>.snap`, one file per version, plus an optional
//! `root/<agent>/record`. A snapshot file is a 45-byte header (`VGSN`, format 1, then
//! big-endian epoch, seq, body length, body xxh3, and the xxh3 of those header bytes)
//! followed by the body. The record file is `VGRC`, the record's xxh3, then the record.
//!
//! Invariants: a file with a final name is complete and fsynced (written as `.tmp-*`,
//! synced, renamed, directory synced), so a crash leaves at most temporaries that
//! [`SnapshotStore::open`] deletes; bytes that fail a checksum are never returned;
//! every allocation is bounded by `max_body` and the real file size.
//!
//! The API is synchronous (call it from `spawn_blocking`); the store is `Send + Sync`.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

/// Default limit of a snapshot body.
pub const DEFAULT_MAX_BODY: u64 = 16 << 20;
/// Limit of a per-agent record.
pub const MAX_RECORD: u64 = 64 << 10;

const MAGIC: &[u8; 4] = b"VGSN";
const RECORD_MAGIC: &[u8; 4] = b"VGRC";
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 45;
const RECORD_HEADER_LEN: u64 = 12;
const RECORD_FILE: &str = "record";
/// The agent's election state when this node is one of its acceptors (same format as
/// the record file).
const ACCEPTOR_FILE: &str = "acceptor";
/// A pruned version's file kept for the agent's next write to reuse (at most one per
/// agent). Allocating a new inode per write and freeing one per prune cost a fifth
/// of a 2-vCPU machine's CPU in ext4's inode allocator (`find_inode_bit` skipping
/// recently deleted inodes) at 500 puts a second. Named like a temporary, so
/// [`SnapshotStore::open`] deletes it.
const SPARE_FILE: &str = ".tmp-spare";
/// Prefix of an agent directory moved aside to be deleted ([`SnapshotStore::detach_agent`]).
const DROPPED_PREFIX: &str = ".dropped-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    pub agent: String,
    pub epoch: u64,
    pub seq: u64,
    /// Body length in bytes.
    pub len: u64,
    /// `xxh3_64` of the body.
    pub checksum: u64,
}

/// What [`SnapshotStore::open`] found.
#[derive(Debug)]
pub struct Opened {
    pub store: SnapshotStore,
    /// Every readable version header, sorted by (agent, seq).
    pub versions: Vec<VersionMeta>,
    /// Every agent's record, sorted by agent.
    pub records: Vec<(String, Vec<u8>)>,
    /// Every agent's acceptor state, sorted by agent.
    pub acceptors: Vec<(String, Vec<u8>)>,
    /// Files that could not be used; they are not in `versions` or `records`.
    pub problems: Vec<StoreProblem>,
}

/// A file found unusable by [`SnapshotStore::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreProblem {
    pub path: PathBuf,
    pub reason: String,
    /// Where the file was moved aside (`<name>.corrupt`); `None` if it was left in place
    /// (a read error that may be transient, or the rename failed).
    pub moved_to: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteOutcome {
    /// The same version was already stored intact; nothing was written.
    pub already_stored: bool,
    /// Seqs of this agent removed to keep the newest `keep` (may include the one
    /// written); the last one removed is kept as the agent's spare file.
    pub pruned: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "snapshot store: {op} {path} failed: {source}. Fix: check that the filesystem of the data directory is healthy and writable by this user"
    )]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error(
        "snapshot file {path} is corrupt ({reason}); it is never served. Fix: quarantine it (the version is re-replicated from peers) and inspect or delete the file"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "no snapshot seq {seq} of agent {agent} in this store. Fix: ask another replica holder"
    )]
    NotFound { agent: String, seq: u64 },
    #[error(
        "snapshot {agent} seq {seq} refused: the body has {actual_len} bytes and checksum {actual_checksum:016x}, the sender declared {expected_len} bytes and {expected_checksum:016x}; nothing was written. Fix: the sender must resend it"
    )]
    ChecksumMismatch {
        agent: String,
        seq: u64,
        expected_len: u64,
        actual_len: u64,
        expected_checksum: u64,
        actual_checksum: u64,
    },
    #[error(
        "{len} bytes exceed the limit of {max} bytes; nothing was written. Fix: make the agent's state smaller or raise the node's snapshot size limit"
    )]
    TooLarge { len: u64, max: u64 },
    #[error(
        "disk full at {path} ({op}); nothing partial is served. Fix: free space on that filesystem or move the data directory"
    )]
    NoSpace { path: PathBuf, op: &'static str },
    #[error("{agent:?} is not a valid agent id (1..=128 of [A-Za-z0-9._-], not . or ..)")]
    InvalidAgent { agent: String },
}

impl StoreError {
    fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
        let (path, reason) = (path.to_path_buf(), reason.into());
        StoreError::Corrupt { path, reason }
    }

    fn not_found(agent: &str, seq: u64) -> StoreError {
        let agent = agent.to_string();
        StoreError::NotFound { agent, seq }
    }

    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Io { .. } => "io",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::NotFound { .. } => "not_found",
            StoreError::ChecksumMismatch { .. } => "checksum_mismatch",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::NoSpace { .. } => "no_space",
            StoreError::InvalidAgent { .. } => "invalid_agent",
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| {
        let path = path.to_path_buf();
        if source.kind() == ErrorKind::StorageFull || source.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::NoSpace { path, op }
        } else {
            StoreError::Io { path, op, source }
        }
    }
}

/// Why a file could not be used. Only `Bad` content is moved aside: a read error may be
/// transient, and a body over a lowered `max_body` becomes usable again with the old limit.
enum Fault {
    Io(io::Error),
    Bad(String),
    TooLarge(u64, u64),
}

impl Fault {
    fn into_error(self, path: &Path, op: &'static str) -> StoreError {
        match self {
            // The size was checked first, so a short read means the file shrank under us.
            Fault::Io(e) if e.kind() == ErrorKind::UnexpectedEof => {
                StoreError::corrupt(path, "file shorter than its header says")
            }
            Fault::Io(e) => io_err(op, path)(e),
            Fault::Bad(reason) => StoreError::corrupt(path, reason),
            Fault::TooLarge(len, max) => StoreError::TooLarge { len, max },
        }
    }
}

#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    keep: usize,
    max_body: u64,
    /// Agents whose directory entry in `root` is known to be fsynced: a writer that
    /// finds the directory already created must not skip the root fsync while the
    /// creator has not done it yet.
    durable_agents: Mutex<HashSet<String>>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn valid_agent(agent: &str) -> bool {
    (1..=128).contains(&agent.len())
        && agent != "."
        && agent != ".."
        && agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.snap")
}

fn parse_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn corrupt_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".corrupt");
    PathBuf::from(name)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(bytes) = buf.get(at..at + 8) {
        word.copy_from_slice(bytes);
    }
    u64::from_be_bytes(word)
}

fn encode_header(meta: &VersionMeta) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = FORMAT;
    for (i, v) in [meta.epoch, meta.seq, meta.len, meta.checksum]
        .iter()
        .enumerate()
    {
        h[5 + 8 * i..13 + 8 * i].copy_from_slice(&v.to_be_bytes());
    }
    let sum = xxh3_64(&h[..37]);
    h[37..].copy_from_slice(&sum.to_be_bytes());
    h
}

/// Reads and checks the header of an open snapshot file against its name and size.
fn read_header(file: &mut File, agent: &str, seq: u64, max: u64) -> Result<VersionMeta, Fault> {
    let size = file.metadata().map_err(Fault::Io)?.len();
    let mut h = [0u8; HEADER_LEN];
    if size < HEADER_LEN as u64 {
        return Err(Fault::Bad(format!("{size} bytes, shorter than a header")));
    }
    file.read_exact(&mut h).map_err(Fault::Io)?;
    if &h[..4] != MAGIC || h[4] != FORMAT {
        return Err(Fault::Bad("not a vigil snapshot (format 1) header".into()));
    }
    if xxh3_64(&h[..37]) != be_u64(&h, 37) {
        return Err(Fault::Bad("header checksum mismatch".into()));
    }
    let meta = VersionMeta {
        agent: agent.to_string(),
        epoch: be_u64(&h, 5),
        seq: be_u64(&h, 13),
        len: be_u64(&h, 21),
        checksum: be_u64(&h, 29),
    };
    if meta.seq != seq {
        return Err(Fault::Bad(format!("header says seq {}", meta.seq)));
    }
    let len = meta.len;
    if len > max {
        return Err(Fault::TooLarge(len, max));
    }
    if size - HEADER_LEN as u64 != len {
        return Err(Fault::Bad(format!(
            "{size} bytes, header says body of {len}"
        )));
    }
    Ok(meta)
}

/// Reads a record file, allocating only after checking its size.
fn read_record_file(path: &Path) -> Result<Vec<u8>, Fault> {
    let file = File::open(path).map_err(Fault::Io)?;
    let size = file.metadata().map_err(Fault::Io)?.len();
    if !(RECORD_HEADER_LEN..=RECORD_HEADER_LEN + MAX_RECORD).contains(&size) {
        return Err(Fault::Bad(format!("record file of {size} bytes")));
    }
    let mut data = Vec::with_capacity(size as usize);
    file.take(size).read_to_end(&mut data).map_err(Fault::Io)?;
    let (head, record) = data.split_at(RECORD_HEADER_LEN as usize);
    if &head[..4] != RECORD_MAGIC || be_u64(head, 4) != xxh3_64(record) {
        return Err(Fault::Bad("record header or checksum mismatch".into()));
    }
    Ok(record.to_vec())
}

impl SnapshotStore {
    /// Creates `root` (0700) if needed and scans it, reading headers only: leftover
    /// `.tmp-*` files are deleted, unusable files are reported (and moved aside to
    /// `<name>.corrupt` when their content is bad). `keep` is at least 1.
    pub fn open(root: &Path, keep: usize, max_body: u64) -> Result<Opened, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_err("create directory", root))?;
        let (mut versions, mut records, mut problems) = (Vec::new(), Vec::new(), Vec::new());
        let mut acceptors = Vec::new();
        let mut agents = HashSet::new();
        for entry in fs::read_dir(root).map_err(io_err("list", root))? {
            let entry = entry.map_err(io_err("list", root))?;
            let dir = entry.path();
            let Some(agent) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // A drop the node did not finish before it stopped.
            if agent.starts_with(DROPPED_PREFIX) {
                fs::remove_dir_all(&dir).map_err(io_err("remove leftover", &dir))?;
                continue;
            }
            if !valid_agent(&agent) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for file in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let file = file.map_err(io_err("list", &dir))?;
                let path = file.path();
                let name = file.file_name();
                let name = name.to_string_lossy();
                let found = if name.starts_with(".tmp-") {
                    match fs::remove_file(&path) {
                        Err(e) if e.kind() != ErrorKind::NotFound => {
                            return Err(io_err("remove leftover", &path)(e));
                        }
                        _ => continue,
                    }
                } else if name == RECORD_FILE {
                    read_record_file(&path).map(|r| records.push((agent.clone(), r)))
                } else if name == ACCEPTOR_FILE {
                    read_record_file(&path).map(|r| acceptors.push((agent.clone(), r)))
                } else if let Some(seq) = parse_seq(&name) {
                    File::open(&path)
                        .map_err(Fault::Io)
                        .and_then(|mut f| read_header(&mut f, &agent, seq, max_body))
                        .map(|meta| versions.push(meta))
                } else {
                    continue;
                };
                let (reason, bad) = match found {
                    Ok(()) => continue,
                    Err(Fault::Io(e)) => (format!("cannot read: {e}"), false),
                    Err(Fault::TooLarge(len, max)) => (
                        format!("body of {len} bytes over the limit of {max}"),
                        false,
                    ),
                    Err(Fault::Bad(reason)) => (reason, true),
                };
                let aside = corrupt_path(&path);
                let moved_to = (bad && fs::rename(&path, &aside).is_ok()).then_some(aside);
                problems.push(StoreProblem {
                    path,
                    reason,
                    moved_to,
                });
            }
            agents.insert(agent);
        }
        // A previous process may have died before fsyncing new agent directories.
        sync_dir(root)?;
        versions.sort_by(|a, b| (&a.agent, a.seq).cmp(&(&b.agent, b.seq)));
        records.sort();
        acceptors.sort();
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        let store = SnapshotStore {
            root: root.to_path_buf(),
            keep: keep.max(1),
            max_body,
            durable_agents: Mutex::new(agents),
        };
        Ok(Opened {
            store,
            versions,
            records,
            acceptors,
            problems,
        })
    }

    /// Path of a version's file (whether or not it exists).
    pub fn path_of(&self, agent: &str, seq: u64) -> PathBuf {
        self.root.join(agent).join(file_name(seq))
    }

    fn agent_dir(&self, agent: &str) -> Result<PathBuf, StoreError> {
        if !valid_agent(agent) {
            let agent = agent.to_string();
            return Err(StoreError::InvalidAgent { agent });
        }
        Ok(self.root.join(agent))
    }

    fn durable(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.durable_agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the agent directory and makes its entry in `root` durable.
    fn ensure_agent_dir(&self, agent: &str) -> Result<PathBuf, StoreError> {
        let dir = self.agent_dir(agent)?;
        if self.durable().contains(agent) {
            return Ok(dir);
        }
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                return Err(io_err("create directory", &dir)(e));
            }
            _ => {}
        }
        sync_dir(&self.root)?;
        self.durable().insert(agent.to_string());
        Ok(dir)
    }

    /// tmp file (the agent's spare file when `recycle` and there is one), fsync,
    /// rename over `dest`, fsync the directory.
    fn write_durable(
        &self,
        dir: &Path,
        tag: &str,
        dest: &Path,
        parts: &[&[u8]],
        recycle: bool,
    ) -> Result<(), StoreError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{tag}-{}-{n}", std::process::id()));
        let written = (|| {
            // The rename is atomic: of two writers racing for the spare, one gets it.
            let recycled = recycle && fs::rename(dir.join(SPARE_FILE), &tmp).is_ok();
            let mut f = if recycled {
                OpenOptions::new().write(true).open(&tmp)
            } else {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
            }
            .map_err(io_err("create", &tmp))?;
            for part in parts {
                f.write_all(part).map_err(io_err("write", &tmp))?;
            }
            if recycled {
                // Overwritten from the start; cut what is left of the old version.
                let len = parts.iter().map(|p| p.len() as u64).sum();
                f.set_len(len).map_err(io_err("truncate", &tmp))?;
            }
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            fs::rename(&tmp, dest).map_err(io_err("rename into place", dest))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        sync_dir(dir)
    }

    /// Stores a version durably, then prunes the agent to the newest `keep` versions.
    /// The body is checked against `meta` before anything touches the disk.
    pub fn write(&self, meta: &VersionMeta, body: &[u8]) -> Result<WriteOutcome, StoreError> {
        let dir = self.agent_dir(&meta.agent)?;
        let (len, max) = (body.len() as u64, self.max_body);
        if len > max {
            return Err(StoreError::TooLarge { len, max });
        }
        let actual_checksum = xxh3_64(body);
        if len != meta.len || actual_checksum != meta.checksum {
            return Err(StoreError::ChecksumMismatch {
                agent: meta.agent.clone(),
                seq: meta.seq,
                expected_len: meta.len,
                actual_len: len,
                expected_checksum: meta.checksum,
                actual_checksum,
            });
        }
        // An intact identical copy makes a retried put cheap; a damaged one is replaced.
        let already_stored = match self.verify(&meta.agent, meta.seq) {
            Ok(old) => old == *meta,
            Err(
                StoreError::NotFound { .. }
                | StoreError::Corrupt { .. }
                | StoreError::TooLarge { .. },
            ) => false,
            Err(e) => return Err(e),
        };
        if !already_stored {
            self.ensure_agent_dir(&meta.agent)?;
            let (tag, dest) = (meta.seq.to_string(), dir.join(file_name(meta.seq)));
            self.write_durable(&dir, &tag, &dest, &[&encode_header(meta), body], true)?;
        }
        let pruned = self.prune(&dir)?;
        Ok(WriteOutcome {
            already_stored,
            pruned,
        })
    }

    /// Deletes all but the newest `keep` versions (the last one deleted becomes the
    /// agent's spare file); files vanishing meanwhile are fine.
    fn prune(&self, dir: &Path) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            seqs.extend(parse_seq(&entry.file_name().to_string_lossy()));
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let mut pruned = Vec::new();
        for &seq in seqs.iter().skip(self.keep) {
            let path = dir.join(file_name(seq));
            match fs::rename(&path, dir.join(SPARE_FILE)) {
                Ok(()) => pruned.push(seq),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("move old version to the spare file", &path)(e)),
            }
        }
        pruned.sort_unstable();
        Ok(pruned)
    }

    /// Checks a version fully, hashing the body in chunks; keeps it only if asked.
    fn load(
        &self,
        agent: &str,
        seq: u64,
        keep: bool,
    ) -> Result<(VersionMeta, Vec<u8>), StoreError> {
        let path = self.agent_dir(agent)?.join(file_name(seq));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::not_found(agent, seq));
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        self.load_from(file, &path, agent, seq, keep)
    }

    /// Reads and checks the version from `file`, opened from `path`.
    fn load_from(
        &self,
        mut file: File,
        path: &Path,
        agent: &str,
        seq: u64,
        keep: bool,
    ) -> Result<(VersionMeta, Vec<u8>), StoreError> {
        self.read_open(&mut file, path, agent, seq, keep)
            .map_err(|e| match e {
                // Pruned while being read, and its file reused by a newer version: the
                // bytes changed under the reader, the version is gone, nothing is corrupt.
                StoreError::Corrupt { .. } if !Self::still_at(&file, path) => {
                    StoreError::not_found(agent, seq)
                }
                e => e,
            })
    }

    /// Whether `path` still names the file `file` was opened from.
    fn still_at(file: &File, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(open), Ok(named)) => (open.dev(), open.ino()) == (named.dev(), named.ino()),
            _ => false,
        }
    }

    fn read_open(
        &self,
        file: &mut File,
        path: &Path,
        agent: &str,
        seq: u64,
        keep: bool,
    ) -> Result<(VersionMeta, Vec<u8>), StoreError> {
        let meta =
            read_header(file, agent, seq, self.max_body).map_err(|f| f.into_error(path, "read"))?;
        // Bounded: read_header checked the length against max_body and the file size.
        let mut body = Vec::with_capacity(if keep { meta.len as usize } else { 0 });
        const CHUNK: u64 = 64 << 10;
        let mut buf = vec![0u8; meta.len.min(CHUNK) as usize];
        let (mut hasher, mut left) = (Xxh3Default::new(), meta.len);
        while left > 0 {
            let chunk = &mut buf[..left.min(CHUNK) as usize];
            file.read_exact(chunk)
                .map_err(|e| Fault::Io(e).into_error(path, "read"))?;
            hasher.update(chunk);
            if keep {
                body.extend_from_slice(chunk);
            }
            left -= chunk.len() as u64;
        }
        if hasher.digest() != meta.checksum {
            return Err(StoreError::corrupt(path, "body checksum mismatch"));
        }
        Ok((meta, body))
    }

    /// Reads a version, checking header, length and body checksum.
    pub fn read(&self, agent: &str, seq: u64) -> Result<(VersionMeta, Vec<u8>), StoreError> {
        self.load(agent, seq, true)
    }

    /// Checks a version fully without returning the body (for a scrubber).
    pub fn verify(&self, agent: &str, seq: u64) -> Result<VersionMeta, StoreError> {
        self.load(agent, seq, false).map(|(meta, _)| meta)
    }

    /// Moves a version aside to `<name>.corrupt`: never served again, kept for inspection.
    pub fn quarantine(&self, agent: &str, seq: u64) -> Result<(), StoreError> {
        self.unlink(agent, seq, "quarantine", |p| fs::rename(p, corrupt_path(p)))
    }

    /// Deletes one version; removing a missing one is `NotFound`.
    pub fn remove_version(&self, agent: &str, seq: u64) -> Result<(), StoreError> {
        self.unlink(agent, seq, "remove", |p| fs::remove_file(p))
    }

    fn unlink(
        &self,
        agent: &str,
        seq: u64,
        op: &'static str,
        act: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let dir = self.agent_dir(agent)?;
        let path = dir.join(file_name(seq));
        match act(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::not_found(agent, seq)),
            Err(e) => Err(io_err(op, &path)(e)),
            // Durable, so the version does not reappear in the index after a crash.
            Ok(()) => sync_dir(&dir),
        }
    }

    /// Deletes an agent's versions, record and quarantined files; a missing agent is fine.
    pub fn remove_agent(&self, agent: &str) -> Result<(), StoreError> {
        match self.detach_agent(agent)? {
            Some(detached) => self.remove_detached(&detached),
            None => Ok(()),
        }
    }

    /// First half of [`SnapshotStore::remove_agent`], cheap enough for the caller's
    /// thread (one rename, no fsync): moves the agent's directory aside under a
    /// `.dropped-*` name, so that a write for the agent issued after this call starts
    /// a fresh directory. Deleting in place on another thread raced with such writes:
    /// a write that re-created the directory between the cache update and the delete
    /// was deleted with it, and every later write of that agent failed with ENOENT
    /// (found by the fault campaign: an agent dropped as a holder and adopted right
    /// after). `None`: the agent had no directory.
    pub fn detach_agent(&self, agent: &str) -> Result<Option<PathBuf>, StoreError> {
        let dir = self.agent_dir(agent)?;
        self.durable().remove(agent);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let detached = self.root.join(format!(
            "{DROPPED_PREFIX}{agent}-{}-{n}",
            std::process::id()
        ));
        match fs::rename(&dir, &detached) {
            Ok(()) => Ok(Some(detached)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("move aside", &dir)(e)),
        }
    }

    /// Second half of [`SnapshotStore::remove_agent`]: deletes a detached directory
    /// and makes its removal durable.
    pub fn remove_detached(&self, detached: &Path) -> Result<(), StoreError> {
        match fs::remove_dir_all(detached) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove", detached)(e)),
            _ => sync_dir(&self.root),
        }
    }

    /// Replaces the agent's record durably (at most [`MAX_RECORD`] bytes).
    pub fn write_record(&self, agent: &str, record: &[u8]) -> Result<(), StoreError> {
        self.write_small(agent, RECORD_FILE, record)
    }

    /// Replaces the agent's acceptor state durably (fsynced before it returns: an
    /// election answer goes out only after this).
    pub fn write_acceptor(&self, agent: &str, state: &[u8]) -> Result<(), StoreError> {
        self.write_small(agent, ACCEPTOR_FILE, state)
    }

    fn write_small(&self, agent: &str, file: &str, record: &[u8]) -> Result<(), StoreError> {
        let (len, max) = (record.len() as u64, MAX_RECORD);
        if len > max {
            return Err(StoreError::TooLarge { len, max });
        }
        let dir = self.ensure_agent_dir(agent)?;
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        head[..4].copy_from_slice(RECORD_MAGIC);
        head[4..].copy_from_slice(&xxh3_64(record).to_be_bytes());
        self.write_durable(&dir, file, &dir.join(file), &[&head, record], false)
    }

    /// The agent's record, `None` if it has none.
    pub fn read_record(&self, agent: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.agent_dir(agent)?.join(RECORD_FILE);
        match read_record_file(&path) {
            Ok(record) => Ok(Some(record)),
            Err(Fault::Io(e)) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(f) => Err(f.into_error(&path, "read")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn meta(agent: &str, epoch: u64, seq: u64, body: &[u8]) -> VersionMeta {
        let (len, checksum) = (body.len() as u64, xxh3_64(body));
        VersionMeta {
            agent: agent.into(),
            epoch,
            seq,
            len,
            checksum,
        }
    }

    fn kind<T>(result: Result<T, StoreError>) -> &'static str {
        result.err().map_or("ok", |e| e.kind())
    }

    fn open(root: &Path, keep: usize) -> Opened {
        SnapshotStore::open(root, keep, DEFAULT_MAX_BODY).unwrap()
    }

    #[test]
    fn roundtrip_returns_the_written_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 3).store;
        let m = meta("a-1", 2, 7, b"state");
        assert_eq!(store.write(&m, b"state").unwrap(), WriteOutcome::default());
        assert_eq!(
            store.read("a-1", 7).unwrap(),
            (m.clone(), b"state".to_vec())
        );
        assert_eq!(store.verify("a-1", 7).unwrap(), m);
        let path = store.path_of("a-1", 7);
        assert!(path.ends_with("a-1/00000000000000000007.snap"));
        assert_eq!(kind(store.read("a-1", 8)), "not_found");
        store.write_record("a-1", b"rec").unwrap();
        assert_eq!(store.read_record("a-1").unwrap(), Some(b"rec".to_vec()));
        assert_eq!(store.read_record("other").unwrap(), None);
        fn shared<T: Send + Sync>(_: &T) {}
        shared(&store);
    }

    #[test]
    fn concurrent_writes_of_one_agent_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(dir.path(), 3).store);
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for seq in (0..10).map(|i| i * 4 + t) {
                        store.write(&meta("a", 1, seq, b"x"), b"x").unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let seqs: Vec<u64> = open(dir.path(), 3).versions.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, vec![37, 38, 39]);
    }

    #[test]
    fn a_lowered_limit_reports_big_versions_without_moving_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 3).store;
        store
            .write(&meta("a", 1, 1, b"0123456789"), b"0123456789")
            .unwrap();
        let opened = SnapshotStore::open(dir.path(), 3, 4).unwrap();
        assert!(opened.versions.is_empty());
        assert_eq!(opened.problems[0].moved_to, None);
        assert_eq!(kind(opened.store.read("a", 1)), "too_large");
        assert_eq!(open(dir.path(), 3).versions.len(), 1);
    }

    #[test]
    fn keep_prunes_the_oldest_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 2).store;
        let mut pruned = Vec::new();
        for seq in [3, 1, 2, 4] {
            pruned.extend(store.write(&meta("a", 1, seq, b"x"), b"x").unwrap().pruned);
        }
        assert_eq!(pruned, vec![1, 2]);
        let seqs: Vec<u64> = open(dir.path(), 2).versions.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
    }

    #[test]
    fn a_pruned_file_is_reused_by_the_next_write_and_cut_to_its_length() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1).store;
        let big = vec![7u8; 10_000];
        store.write(&meta("a", 1, 1, &big), &big).unwrap();
        let first_inode = fs::metadata(store.path_of("a", 1)).unwrap().ino();
        assert_eq!(
            store
                .write(&meta("a", 1, 2, b"two"), b"two")
                .unwrap()
                .pruned,
            [1]
        );
        assert!(!store.path_of("a", 1).exists());
        store.write(&meta("a", 1, 3, b"three"), b"three").unwrap();
        // Seq 3 went into seq 1's old file, which holds seq 3 alone.
        let third = fs::metadata(store.path_of("a", 3)).unwrap();
        assert_eq!(third.ino(), first_inode);
        assert_eq!(third.len(), HEADER_LEN as u64 + 5);
        assert_eq!(store.read("a", 3).unwrap().1, b"three");
        // The spare (seq 2's file now) is not a version, and reopening deletes it.
        let reopened = open(dir.path(), 1);
        assert!(reopened.problems.is_empty(), "{:?}", reopened.problems);
        let seqs: Vec<u64> = reopened.versions.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, vec![3]);
        assert!(!dir.path().join("a").join(SPARE_FILE).exists());
    }

    #[test]
    fn a_version_pruned_and_reused_while_being_read_is_not_found_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1).store;
        store.write(&meta("a", 1, 1, b"one"), b"one").unwrap();
        // A reader opens seq 1; meanwhile seq 2 prunes it and seq 3 reuses its file.
        let path = store.path_of("a", 1);
        let reader = File::open(&path).unwrap();
        store.write(&meta("a", 1, 2, b"two"), b"two").unwrap();
        store.write(&meta("a", 1, 3, b"three"), b"three").unwrap();
        let read = store.load_from(reader, &path, "a", 1, true);
        assert_eq!(kind(read), "not_found");
        // A file that changed where it lies is still corrupt.
        let path = store.path_of("a", 3);
        let reader = File::open(&path).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(
            kind(store.load_from(reader, &path, "a", 3, true)),
            "corrupt"
        );
    }

    #[test]
    fn reopen_returns_the_same_index_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 5).store;
        let mut written = Vec::new();
        for (agent, seq) in [("b", 1), ("a", 9), ("a", 10)] {
            let body = format!("{agent}{seq}");
            let m = meta(agent, 3, seq, body.as_bytes());
            store.write(&m, body.as_bytes()).unwrap();
            written.push(m);
        }
        store.write_record("b", b"rb").unwrap();
        store.write_record("b", b"rb2").unwrap();
        store.write_record("a", &[0; MAX_RECORD as usize]).unwrap();
        written.sort_by(|x, y| (&x.agent, x.seq).cmp(&(&y.agent, y.seq)));
        let again = open(dir.path(), 5);
        assert_eq!(again.versions, written);
        let records = vec![
            ("a".into(), vec![0; MAX_RECORD as usize]),
            ("b".into(), b"rb2".to_vec()),
        ];
        assert_eq!(again.records, records);
        assert!(again.problems.is_empty());
    }

    #[test]
    fn flipped_body_byte_is_corrupt_and_quarantine_hides_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 5).store;
        store.write(&meta("a", 1, 1, b"hello"), b"hello").unwrap();
        let path = store.path_of("a", 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN + 1] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(kind(store.read("a", 1)), "corrupt");
        let err = store.verify("a", 1).unwrap_err();
        assert_eq!(err.kind(), "corrupt");
        assert!(err.to_string().contains(path.to_str().unwrap()));
        store.quarantine("a", 1).unwrap();
        assert!(corrupt_path(&path).exists());
        assert_eq!(kind(store.read("a", 1)), "not_found");
        let again = open(dir.path(), 5);
        assert!(again.versions.is_empty() && again.problems.is_empty());
    }

    #[test]
    fn truncated_file_and_garbage_header_are_problems_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 5).store;
        for seq in 1..=3 {
            store.write(&meta("a", 1, seq, b"body"), b"body").unwrap();
        }
        let truncated = store.path_of("a", 1);
        let bytes = fs::read(&truncated).unwrap();
        fs::write(&truncated, &bytes[..bytes.len() - 1]).unwrap();
        let garbage = store.path_of("a", 2);
        fs::write(&garbage, [7u8; 100]).unwrap();
        let short = store.path_of("a", 4);
        fs::write(&short, b"VGSN").unwrap();
        let again = open(dir.path(), 5);
        let seqs: Vec<u64> = again.versions.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, vec![3]);
        let paths: Vec<&Path> = again.problems.iter().map(|p| p.path.as_path()).collect();
        assert_eq!(
            paths,
            vec![truncated.as_path(), garbage.as_path(), short.as_path()]
        );
        for p in &again.problems {
            assert_eq!(p.moved_to, Some(corrupt_path(&p.path)));
            assert!(!p.path.exists() && corrupt_path(&p.path).exists());
        }
    }

    #[test]
    fn leftover_tmp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        let tmp = dir.path().join("a/.tmp-5-123-0");
        fs::write(&tmp, b"partial").unwrap();
        let opened = open(dir.path(), 5);
        assert!(!tmp.exists());
        assert!(opened.versions.is_empty() && opened.problems.is_empty());
    }

    #[test]
    fn an_agent_written_again_after_it_was_dropped_keeps_its_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 5).store;
        store.write(&meta("a", 1, 1, b"old"), b"old").unwrap();
        // The node detaches in effect order and deletes later, on another thread;
        // a write issued in between (the agent adopted right after it was dropped)
        // must survive the delete and not be refused for a missing directory.
        let detached = store.detach_agent("a").unwrap().unwrap();
        store.write_record("a", b"{\"epoch\":2}").unwrap();
        store.write(&meta("a", 2, 2, b"new"), b"new").unwrap();
        store.remove_detached(&detached).unwrap();
        assert!(!detached.exists());
        assert_eq!(store.read_record("a").unwrap().unwrap(), b"{\"epoch\":2}");
        store.write(&meta("a", 2, 3, b"newer"), b"newer").unwrap();
        let reopened = open(dir.path(), 5);
        let seqs: Vec<u64> = reopened.versions.iter().map(|v| v.seq).collect();
        assert_eq!(seqs, [2, 3], "{:?}", reopened.versions);
        // A drop cut short by a crash is finished at the next open.
        let detached = store.detach_agent("a").unwrap().unwrap();
        assert!(open(dir.path(), 5).versions.is_empty());
        assert!(!detached.exists());
        assert_eq!(store.detach_agent("a").unwrap(), None);
    }

    #[test]
    fn checksum_mismatch_and_too_large_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), 5, 8).unwrap().store;
        let good = meta("a", 1, 1, b"good");
        assert_eq!(kind(store.write(&good, b"evil")), "checksum_mismatch");
        assert_eq!(kind(store.write(&good, b"good!")), "checksum_mismatch");
        let big = [0u8; 9];
        assert_eq!(kind(store.write(&meta("a", 1, 1, &big), &big)), "too_large");
        let bad = meta("../x", 1, 1, b"");
        assert_eq!(kind(store.write(&bad, b"")), "invalid_agent");
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn identical_rewrite_is_idempotent_and_different_content_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 5).store;
        let m = meta("a", 1, 1, b"one");
        store.write(&m, b"one").unwrap();
        assert!(store.write(&m, b"one").unwrap().already_stored);
        let m2 = meta("a", 2, 1, b"two");
        assert!(!store.write(&m2, b"two").unwrap().already_stored);
        assert_eq!(store.read("a", 1).unwrap(), (m2, b"two".to_vec()));
        let names = fs::read_dir(dir.path().join("a")).unwrap().count();
        assert_eq!(names, 1, "no temporaries left behind");
    }

    #[test]
    fn removals_and_disk_full_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 5).store;
        store.write(&meta("a", 1, 1, b"x"), b"x").unwrap();
        store.remove_version("a", 1).unwrap();
        assert_eq!(kind(store.remove_version("a", 1)), "not_found");
        store.write(&meta("a", 1, 2, b"x"), b"x").unwrap();
        store.remove_agent("a").unwrap();
        store.remove_agent("a").unwrap();
        store.write(&meta("a", 1, 3, b"x"), b"x").unwrap();
        assert_eq!(open(dir.path(), 5).versions.len(), 1);
        let full = io_err("write", Path::new("/d/f"))(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.kind(), "no_space");
        assert!(full.to_string().starts_with("disk full at /d/f"));
    }
}
