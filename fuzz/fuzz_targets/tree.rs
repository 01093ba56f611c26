//! The subscription trie with filters and topics deep and wide: never
//! panics or overflows the stack, and agrees with the brute-force matcher.
//! Crashes found here go into `crates/certmq-core/fuzz-regressions/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certmq_core::fuzz_tree(data);
});
