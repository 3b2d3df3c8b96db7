//! Arbitrary chat completion request bodies: refused with a 400 or turned into a provider
//! request, never a panic.
//! The crate's corpus test replays `fuzz/corpus/chat_request` through the same check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_server::testing::check_chat_request(data));
