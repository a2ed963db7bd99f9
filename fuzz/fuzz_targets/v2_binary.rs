//! KServe v2 infer bodies (`gantry::api::v2::decode`): a JSON header and
//! Triton's binary tensor data after it. Every input decoded has exactly
//! the bytes its shape needs, and no more binary bytes are claimed than
//! the body holds.
//!
//! Input: bytes 0-1 (little-endian) are `Inference-Header-Content-Length`
//! (0xFFFF: no header, 0xFFFE: a header that is not a number); the rest is
//! the body.

#![no_main]

use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use gantry::api::v2::decode;
use gantry_actors::tensor::element_count;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [lo, hi, body @ ..] = input else {
        return;
    };
    let header = match u16::from_le_bytes([*lo, *hi]) {
        0xFFFF => None,
        0xFFFE => Some(HeaderValue::from_static("twelve")),
        n => Some(HeaderValue::from(n)),
    };
    let Ok((call, _plan)) = decode(
        header.as_ref(),
        Bytes::copy_from_slice(body),
        "fuzz".to_string(),
        None,
        None,
    ) else {
        return;
    };
    let mut bytes = 0usize;
    for (_, tensor) in &call.inputs {
        if !tensor.dtype.is_variable() {
            assert_eq!(
                tensor.data.len(),
                element_count(&tensor.shape) * tensor.dtype.size()
            );
        }
        bytes += tensor.data.len();
    }
    // JSON data takes at least two characters a value for at most 8 bytes.
    assert!(bytes <= body.len() * 4 + 8 * call.inputs.len());
});
