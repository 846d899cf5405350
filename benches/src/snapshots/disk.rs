//! The local-disk baseline: the same bytes written to files on the filesystem that
//! holds the nodes' data directories, each write made durable before the next.
//!
//! Two recipes, both measured:
//! - [`Recipe::Fsync`]: create the file, write, `fsync` — the plain "write it to the
//!   local disk with fsync" an agent without vigil would do;
//! - [`Recipe::Durable`]: what every vigil copy costs on its holder's disk (see
//!   node/src/store.rs `write_durable`): a `.tmp-*` file, write, `fsync`, rename
//!   into place, `fsync` the directory.
//!
//! Like a holder, each writer keeps its newest [`KEEP`] files and deletes older
//! ones (outside the timed part for a single write).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Files each writer keeps, as a holder keeps versions (the node's default `--keep`).
pub const KEEP: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recipe {
    /// create, write, fsync.
    Fsync,
    /// tmp file, write, fsync, rename, fsync the directory.
    Durable,
}

impl Recipe {
    pub const ALL: [Recipe; 2] = [Recipe::Fsync, Recipe::Durable];

    /// Short name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Fsync => "write+fsync",
            Recipe::Durable => "tmp+fsync+rename+dirsync",
        }
    }
}

/// One writer: a directory of its own and the files it has written.
pub struct Writer {
    dir: PathBuf,
    next: u64,
    kept: VecDeque<PathBuf>,
}

fn ctx(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> String {
    let what = format!("{op} {}", path.display());
    move |e| format!("{what}: {e}")
}

impl Writer {
    /// A writer in `dir` (created, with its entry in the parent made durable).
    pub fn new(dir: &Path) -> Result<Writer, String> {
        fs::create_dir_all(dir).map_err(ctx("create directory", dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(Writer {
            dir: dir.to_path_buf(),
            next: 1,
            kept: VecDeque::new(),
        })
    }

    /// Writes `body` to a new file with `recipe`; returns the time from opening the
    /// file to the last fsync's return. Deletes the oldest file beyond [`KEEP`]
    /// afterwards (not timed).
    pub fn write(&mut self, recipe: Recipe, body: &[u8]) -> Result<Duration, String> {
        let n = self.next;
        self.next += 1;
        let dest = self.dir.join(format!("{n:020}.snap"));
        let started = Instant::now();
        match recipe {
            Recipe::Fsync => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&dest)
                    .map_err(ctx("create", &dest))?;
                f.write_all(body).map_err(ctx("write", &dest))?;
                f.sync_all().map_err(ctx("fsync", &dest))?;
            }
            Recipe::Durable => {
                let tmp = self.dir.join(format!(".tmp-{n}"));
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(ctx("create", &tmp))?;
                f.write_all(body).map_err(ctx("write", &tmp))?;
                f.sync_all().map_err(ctx("fsync", &tmp))?;
                drop(f);
                fs::rename(&tmp, &dest).map_err(ctx("rename into place", &dest))?;
                sync_dir(&self.dir)?;
            }
        }
        let took = started.elapsed();
        self.kept.push_back(dest);
        while self.kept.len() > KEEP {
            if let Some(old) = self.kept.pop_front() {
                fs::remove_file(&old).map_err(ctx("remove", &old))?;
            }
        }
        Ok(took)
    }
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("fsync directory", dir))
}

/// `count` sequential writes of `body` (after `warmup` untimed ones) into a fresh
/// directory `dir`, which is removed afterwards. Milliseconds per write.
pub fn sequential(
    dir: &Path,
    recipe: Recipe,
    body: &[u8],
    warmup: usize,
    count: usize,
) -> Result<Vec<f64>, String> {
    let mut writer = Writer::new(dir)?;
    for _ in 0..warmup {
        writer.write(recipe, body)?;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(writer.write(recipe, body)?.as_secs_f64() * 1000.0);
    }
    fs::remove_dir_all(dir).map_err(ctx("remove", dir))?;
    Ok(out)
}

/// What one concurrent writer did inside the measurement window.
#[derive(Debug, Default)]
pub struct WindowTally {
    /// Latencies (ms) of the writes that completed inside the window.
    pub latencies_ms: Vec<f64>,
    pub errors: Vec<String>,
}

/// `writers` threads, each with its own directory under `root` (as each agent has
/// its own directory on a holder), writing `body` with `recipe` back to back from
/// now until `end`; writes completing in `[start, end]` are counted. `root` is
/// removed afterwards.
pub fn concurrent(
    root: &Path,
    recipe: Recipe,
    body: &[u8],
    writers: usize,
    start: Instant,
    end: Instant,
) -> Result<Vec<WindowTally>, String> {
    let mut dirs = Vec::with_capacity(writers);
    for w in 0..writers {
        dirs.push(Writer::new(&root.join(format!("w{w:03}")))?);
    }
    let tallies = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .into_iter()
            .map(|mut writer| {
                s.spawn(move || {
                    let mut tally = WindowTally::default();
                    while Instant::now() < end {
                        match writer.write(recipe, body) {
                            Ok(took) => {
                                let done = Instant::now();
                                if done >= start && done <= end {
                                    tally.latencies_ms.push(took.as_secs_f64() * 1000.0);
                                }
                            }
                            Err(e) => {
                                tally.errors.push(e);
                                // A failing disk would spin; one error per writer is
                                // enough to report it.
                                break;
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| WindowTally {
                    latencies_ms: Vec::new(),
                    errors: vec!["writer thread panicked".into()],
                })
            })
            .collect::<Vec<_>>()
    });
    fs::remove_dir_all(root).map_err(ctx("remove", root))?;
    Ok(tallies)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn both_recipes_leave_the_body_in_place_and_keep_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        for recipe in Recipe::ALL {
            let d = dir.path().join(recipe.name());
            let mut w = Writer::new(&d).unwrap();
            for i in 0..(KEEP as u8 + 3) {
                w.write(recipe, &[i; 100]).unwrap();
            }
            let mut names: Vec<String> = fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names.len(), KEEP, "{recipe:?}: {names:?}");
            assert!(names.iter().all(|n| n.ends_with(".snap")), "{names:?}");
            let last = fs::read(d.join(&names[KEEP - 1])).unwrap();
            assert_eq!(last, vec![KEEP as u8 + 2; 100]);
        }
    }

    #[test]
    fn sequential_and_concurrent_clean_up_after_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let seq = dir.path().join("seq");
        let times = sequential(&seq, Recipe::Durable, b"abc", 1, 3).unwrap();
        assert_eq!(times.len(), 3);
        assert!(!seq.exists());

        let conc = dir.path().join("conc");
        let now = Instant::now();
        let end = now + Duration::from_millis(50);
        let tallies = concurrent(&conc, Recipe::Fsync, b"abc", 3, now, end).unwrap();
        assert_eq!(tallies.len(), 3);
        assert!(tallies.iter().all(|t| t.errors.is_empty()));
        assert!(!conc.exists());
    }
}
