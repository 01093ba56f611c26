//! Replays every input saved in `fuzz-regressions/` (crashes the fuzzer
//! found, and seeds) through the fuzz entry point.

use std::path::Path;

#[test]
fn saved_fuzz_inputs_do_not_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        certmq_codec::fuzz_decode(&data);
        n += 1;
    }
    assert!(n > 0, "no saved inputs found in {}", dir.display());
}
