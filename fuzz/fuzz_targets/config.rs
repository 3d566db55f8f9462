//! Fuzz target `config`: see `lbfleet_fuzz_support::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbfleet_fuzz_support::config::check(data));
