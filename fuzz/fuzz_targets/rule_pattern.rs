#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| txflow_fuzz::rule_pattern(data));
