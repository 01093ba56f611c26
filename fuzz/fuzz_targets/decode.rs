//! Decoding arbitrary bytes never panics, and every decoded packet survives
//! `decode(encode(p)) == p`. Crashes found here go into
//! `crates/certmq-codec/fuzz-regressions/`, which a normal test replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    certmq_codec::fuzz_decode(data);
});
