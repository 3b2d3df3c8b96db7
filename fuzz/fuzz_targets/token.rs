//! Arbitrary Authorization header, query parameter and Cookie header: finding the token
//! never panics and a token nobody signed is refused without being repeated.
//! The crate's corpus test replays `fuzz/corpus/token` through the same check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_server::testing::check_token(data));
