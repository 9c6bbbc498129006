//! The RFB client-message parser on arbitrary bytes, consumed as the server does: parse,
//! advance by what was used, stop at "need more" or an error. It must never panic, never
//! claim more bytes than it has, and always make progress.
#![no_main]

use hospes_vmm::vnc::proto::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match parse(&data[at..]) {
            Ok(Some((_, used))) => {
                assert!(used > 0 && at + used <= data.len());
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
