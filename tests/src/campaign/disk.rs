//! One small ext4 file system per node for its data directory, so that the campaign
//! can fill one host's disk (every write fails with ENOSPC, fsync included) without
//! touching the machine's own disk. Each is a sparse image file, loop-mounted on the
//! node's `data` directory before the node first starts; root and loop devices are
//! needed, and without them the campaign runs without disk faults.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of each node's data file system: far more than the campaign's snapshots need
/// (agents × kept versions × a few hundred bytes), small enough to fill quickly.
const IMAGE_BYTES: u64 = 64 << 20;
/// The file a disk-full fault allocates.
const BALLAST: &str = "ballast";

/// The mounted data file systems; unmounted (lazily, so a process still holding a
/// file does not block it) on drop.
pub struct DataDisks {
    mounts: Vec<PathBuf>,
}

impl DataDisks {
    /// Creates and mounts one image per node at `root/<name>/data`. `Err` says why
    /// it cannot be done here.
    pub fn mount(root: &Path, names: &[String]) -> Result<DataDisks, String> {
        let images = root.join("images");
        std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
        let mut disks = DataDisks { mounts: Vec::new() };
        for name in names {
            let image = images.join(format!("{name}.ext4"));
            let file = File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
            file.set_len(IMAGE_BYTES)
                .map_err(|e| format!("{}: {e}", image.display()))?;
            // -m 0: no blocks reserved for root; the node runs as root here and would
            // otherwise keep writing into the reserve after the "full" disk.
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image))?;
            let dir = super::run::data_dir(root, name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&dir))?;
            disks.mounts.push(dir.clone());
            // An empty data directory, as a node expects on its first start.
            let _ = std::fs::remove_dir(dir.join("lost+found"));
        }
        Ok(disks)
    }

    /// Fills host `k`'s file system: every later write fails with ENOSPC.
    pub fn fill(&mut self, k: usize) -> std::io::Result<()> {
        let dir = self.dir(k)?;
        let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        let free = stat.blocks_available() * stat.fragment_size();
        let file = File::create(dir.join(BALLAST))?;
        // fallocate allocates the blocks (set_len would only make a sparse file). The
        // free count does not include the extent blocks the ballast itself needs, so
        // allocate in chunks, halving a chunk that does not fit, down to one block.
        let block = i64::try_from(stat.fragment_size()).unwrap_or(4096).max(1);
        let mut chunk = i64::try_from(free).unwrap_or(i64::MAX).max(block);
        let mut offset = 0i64;
        while chunk >= block {
            match nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), offset, chunk) {
                Ok(()) => offset += chunk,
                Err(nix::errno::Errno::ENOSPC) => chunk /= 2,
                Err(e) => return Err(e.into()),
            }
        }
        file.sync_all()
    }

    /// Undoes [`DataDisks::fill`].
    pub fn free(&mut self, k: usize) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir(k)?.join(BALLAST)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn dir(&self, k: usize) -> std::io::Result<&Path> {
        self.mounts
            .get(k)
            .map(PathBuf::as_path)
            .ok_or_else(|| std::io::Error::other(format!("no data disk for host {k}")))
    }
}

impl Drop for DataDisks {
    fn drop(&mut self) {
        for dir in &self.mounts {
            // -l: detach now, clean up when the last user is gone; the loop device
            // is released with it (mount -o loop sets autoclear).
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

    use std::io::Write;

    use super::*;

    #[test]
    fn a_filled_disk_refuses_writes_and_fsyncs_until_freed() {
        let root = tempfile::tempdir().unwrap();
        let names = vec!["n1".to_string()];
        let mut disks = match DataDisks::mount(root.path(), &names) {
            Ok(d) => d,
            // Loop devices are a separate ability from network namespaces: a container
            // can have the one without the other.
            Err(why) if !crate::netns::required() || !Path::new("/dev/loop-control").exists() => {
                eprintln!("skipping: cannot mount data disks here: {why}");
                return;
            }
            Err(why) => panic!("cannot mount data disks: {why}"),
        };
        let dir = super::super::run::data_dir(root.path(), "n1");
        let write = |name: &str| -> std::io::Result<()> {
            let mut f = File::create(dir.join(name))?;
            f.write_all(&[7u8; 64 << 10])?;
            f.sync_all()
        };
        write("before").unwrap();
        disks.fill(0).unwrap();
        let err = write("during").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
        disks.free(0).unwrap();
        write("after").unwrap();
    }

    fn libc_enospc() -> i32 {
        nix::errno::Errno::ENOSPC as i32
    }
}
