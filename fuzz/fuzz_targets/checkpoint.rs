#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = basic_fuzz::run("checkpoint", data);
});
