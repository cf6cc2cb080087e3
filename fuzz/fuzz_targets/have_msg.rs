#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz::bodies::have_msg(data));
