//! File type sniffing (`gantry::media::sniff`): a type is decided by the
//! file's first bytes, so more bytes after them never change it, and every
//! file can be described in an error message.

#![no_main]

use gantry::media::sniff::{describe_unknown, sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    match sniff(input) {
        Some(found) => {
            assert!(!found.name().is_empty());
            let _ = (found.family(), found.readable());
            let mut longer = input.to_vec();
            longer.extend_from_slice(&[0, 0xFF, b'A']);
            assert_eq!(sniff(&longer), Some(found));
        }
        None => assert!(!describe_unknown(input).is_empty()),
    }
});
