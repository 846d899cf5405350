//! Records the git commit the binary is built from, for `vigil --version`.
//!
//! Optional by design: a build from a source archive, or on a machine without git,
//! gets no commit and still builds. `VIGIL_GIT_COMMIT` set in the environment wins
//! (packagers who build outside a checkout can pass it).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=VIGIL_GIT_COMMIT");
    let commit = std::env::var("VIGIL_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // Rebuild when HEAD moves (a commit, a checkout): HEAD itself and the branch it
    // points at. Without these lines Cargo would re-run this script on every change
    // of any file in the package, and still miss a commit that changed no file here.
    if let Some(path) = git(&["rev-parse", "--git-path", "HEAD"])
        && Path::new(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &reference])
        && Path::new(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(commit) = commit {
        println!("cargo:rustc-env=VIGIL_GIT_COMMIT={commit}");
    }
}
