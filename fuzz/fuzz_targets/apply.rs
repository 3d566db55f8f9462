//! Fuzz target `apply`: see `lbfleet_fuzz_support::apply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbfleet_fuzz_support::apply::check(data));
