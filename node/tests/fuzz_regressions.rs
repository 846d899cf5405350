//! Replays the node's fuzz targets' committed inputs (the seed corpus and every input
//! a fuzz run found, `tests/fuzz/{corpus,regressions}/TARGET/`) through the same entry
//! functions the targets call, so the normal test run exercises them.

use std::path::PathBuf;

use vigil::fuzzing;

/// Every committed input of `target`: (file, bytes). The seed corpus must exist.
fn inputs(target: &str, at_least: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz");
    let mut all = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = fuzz.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert!(
                !dir.ends_with(format!("corpus/{target}")),
                "{} is missing",
                dir.display()
            );
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable directory entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("a readable input");
                all.push((path, bytes));
            }
        }
    }
    all.sort();
    assert!(
        all.len() >= at_least,
        "the seed corpus of {target} has {} inputs; regenerate it with `vigil-sim fuzz-corpus`",
        all.len()
    );
    all
}

#[test]
fn stream_frame_handles_every_committed_input() {
    for (path, bytes) in inputs("stream_frame", 10) {
        eprintln!("{}", path.display());
        fuzzing::stream_frame(&bytes);
    }
}

#[test]
fn api_request_handles_every_committed_input() {
    for (path, bytes) in inputs("api_request", 10) {
        eprintln!("{}", path.display());
        fuzzing::api_request(&bytes);
    }
}

#[test]
fn config_file_handles_every_committed_input() {
    for (path, bytes) in inputs("config_file", 2) {
        eprintln!("{}", path.display());
        fuzzing::config_file(&bytes);
    }
}

#[test]
fn runtime_file_handles_every_committed_input() {
    for (path, bytes) in inputs("runtime_file", 2) {
        eprintln!("{}", path.display());
        fuzzing::runtime_file(&bytes);
    }
}

/// The API seeds are requests the node serves (docs/API.md): each gets a 2xx answer
/// when the owner side answers, so the fuzzer starts from accepted requests.
#[test]
fn api_seeds_are_requests_the_node_accepts() {
    for (path, bytes) in inputs("api_request", 10) {
        if !path.to_string_lossy().contains("/corpus/") {
            continue;
        }
        let statuses = fuzzing::api_request(&bytes);
        let sent = bytes.windows(11).filter(|w| w == b" HTTP/1.1\r\n").count();
        assert_eq!(
            statuses.len(),
            sent,
            "{}: answers to {sent} requests",
            path.display()
        );
        assert!(
            statuses.iter().all(|s| (200..300).contains(s)),
            "{}: answered {statuses:?}",
            path.display()
        );
    }
}
