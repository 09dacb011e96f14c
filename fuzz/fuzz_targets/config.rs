#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| txflow_fuzz::config(data));
