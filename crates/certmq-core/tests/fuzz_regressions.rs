//! Replays every input saved in `fuzz-regressions/` (seeds, and anything
//! the `tree` fuzz target found) through the trie's fuzz entry point.

#[test]
fn saved_tree_fuzz_inputs_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        certmq_core::fuzz_tree(&data);
        n += 1;
    }
    assert!(n > 0, "no saved inputs found in {}", dir.display());
}
