//! Fuzz target `proxy_protocol`: see `lbfleet_fuzz_support::proxy_protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbfleet_fuzz_support::proxy_protocol::check(data));
