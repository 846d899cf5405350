//! Replays the fuzz targets' committed inputs (the seed corpus and every input a fuzz
//! run found, `tests/fuzz/{corpus,regressions}/TARGET/`) through the same entry
//! functions the targets call, so the normal test run exercises them.

use std::path::PathBuf;

use vigil_protocol::fuzzing;

/// Every committed input of `target`: (file, bytes). The seed corpus must exist.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
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
        all.len() >= 10,
        "the seed corpus of {target} has {} inputs; regenerate it with `vigil-sim fuzz-corpus`",
        all.len()
    );
    all
}

#[test]
fn wire_decode_handles_every_committed_input() {
    for (path, bytes) in inputs("wire_decode") {
        eprintln!("{}", path.display());
        fuzzing::wire_decode(&bytes);
    }
}

#[test]
fn swim_datagram_handles_every_committed_input() {
    for (path, bytes) in inputs("swim_datagram") {
        eprintln!("{}", path.display());
        fuzzing::swim_datagram(&bytes);
    }
}

/// The corpus is real traffic: every seed decodes (the fuzzer mutates from there).
#[test]
fn wire_seeds_are_real_messages() {
    for (path, bytes) in inputs("wire_decode") {
        if path.to_string_lossy().contains("/corpus/") {
            let decoded =
                vigil_protocol::wire::decode(&bytes, vigil_protocol::wire::MAX_STREAM_FRAME_LEN);
            assert!(decoded.is_ok(), "{}: {decoded:?}", path.display());
        }
    }
}
