//! Fuzz target `http_headers`: see `lbfleet_fuzz_support::http_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbfleet_fuzz_support::http_headers::check(data));
