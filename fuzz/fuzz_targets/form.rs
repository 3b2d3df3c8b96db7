//! Arbitrary `application/x-www-form-urlencoded` bodies through the strict form parser and the
//! publication reader.
//! The crate's corpus test replays `fuzz/corpus/form` through the same check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_server::testing::check_form(data));
