#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! The Python client's pytest suite (clients/python/tests), run against the vigil
//! binary Cargo built for this package, so that `cargo test --workspace` covers it.
//!
//! It needs Python 3.9 or newer with pytest. Where none is found the test prints why
//! and passes, unless VIGIL_REQUIRE_PYTHON=1 (as `.ci/run` sets after installing
//! python3 and python3-pytest), which turns the skip into a failure.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use vigil_tests::vigil_bin;

/// The suite takes well under a minute; this only stops a hung run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Interpreters to try, in order: `$VIGIL_PYTHON`, `python3` on the PATH, then the
/// system one (a PATH python3 from pyenv or a virtualenv may lack the pytest that
/// the distribution's package installed for /usr/bin/python3).
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("VIGIL_PYTHON") {
        out.push(PathBuf::from(p));
    }
    out.push(PathBuf::from("python3"));
    out.push(PathBuf::from("/usr/bin/python3"));
    out
}

/// The first interpreter that runs pytest on Python >= 3.9, or what each said.
fn find_python() -> Result<PathBuf, Vec<String>> {
    let probe = "import sys, pytest; sys.exit(0 if sys.version_info >= (3, 9) else \
                 'Python ' + sys.version.split()[0] + ' is older than 3.9')";
    let mut tried = Vec::new();
    for python in candidates() {
        match Command::new(&python).args(["-c", probe]).output() {
            Ok(out) if out.status.success() => return Ok(python),
            Ok(out) => tried.push(format!(
                "{}: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
            )),
            Err(e) => tried.push(format!("{}: {e}", python.display())),
        }
    }
    Err(tried)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn python_client_suite_passes_against_real_nodes() {
    let required = std::env::var("VIGIL_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let python = match find_python() {
        Ok(p) => p,
        Err(tried) if required => panic!(
            "VIGIL_REQUIRE_PYTHON=1 but no Python >= 3.9 with pytest was found ({}). \
             Fix: apt-get install python3 python3-pytest, or set VIGIL_PYTHON",
            tried.join("; ")
        ),
        Err(tried) => {
            eprintln!(
                "SKIPPED python_client: no Python >= 3.9 with pytest ({}); install python3-pytest \
                 or set VIGIL_PYTHON to run clients/python/tests (VIGIL_REQUIRE_PYTHON=1 makes this a failure)",
                tried.join("; ")
            );
            return;
        }
    };

    // Output goes to a file (read back on failure): the suite is long on failure
    // and libtest does not capture a child's output.
    let log = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "clients/python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(repo_root())
        .env("VIGIL_BIN", vigil_bin!())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("VIGIL_SOCKET")
        .env_remove("VIGIL_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        // Its own group: a hung suite is killed with the nodes it started.
        .process_group(0)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SUITE_TIMEOUT {
            let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut output = String::new();
    log.reopen().unwrap().read_to_string(&mut output).unwrap();
    let summary = output.lines().last().unwrap_or("").to_string();
    match status {
        Some(s) if s.success() => eprintln!(
            "python_client ({}, {:.1} s): {summary}",
            python.display(),
            started.elapsed().as_secs_f64()
        ),
        Some(s) => panic!("pytest failed ({s}) with {}:\n{output}", python.display()),
        None => panic!("pytest did not finish within {SUITE_TIMEOUT:?}; killed. Output:\n{output}"),
    }
}
