//! Arbitrary selector and topic: parsing never panics, a selector matches its own text, and
//! matching stays within (topic length + 1) × automaton edges moves (linear).
//! The crate's corpus test replays `fuzz/corpus/selector` through the same check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_hub::testing::check_selector(data));
