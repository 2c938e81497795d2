//! The recording reader on arbitrary bytes: it must return an error or a recording, never
//! panic, hang or allocate what the input merely claims. Inputs go to the section parser
//! without the checksum (random bytes would almost never pass it), and anything that parses
//! must survive an encode/decode round trip unchanged.
#![no_main]

use fx86_snapshots::recording::Recording;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Recording::decode(data);
    if let Ok(rec) = Recording::decode_unchecked(data) {
        let again = Recording::decode(&rec.encode()).expect("an encoded recording decodes");
        assert_eq!(again, rec);
    }
});
