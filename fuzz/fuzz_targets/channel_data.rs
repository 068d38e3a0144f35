#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| turnd::fuzzing::channel_data(data));
