//! Fuzz target `raft_messages`: see `lbfleet_fuzz_support::messages`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbfleet_fuzz_support::messages::check(data));
