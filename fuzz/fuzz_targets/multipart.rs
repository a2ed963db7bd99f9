//! Multipart upload forms as Gantry's form reader receives them: the body
//! arrives in chunks of any size, and `actix_multipart::Multipart` splits it
//! into fields, each read to its end. It never yields more field bytes than
//! the body holds.
//!
//! The whole body is in memory, so the reader is polled without a runtime:
//! waiting (`Pending`) means it stalled at the end of the body. actix-multipart
//! 0.7 does that when a body ends inside a part (no closing boundary): it
//! waits for bytes that never come, which is why the form reader must answer
//! such a body itself once it has ended. A stall ends the input here.
//!
//! Input: byte 0 sets the chunk size (1 to 256 bytes); the rest is the
//! body of a form whose boundary is `gantry-fuzz`.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use actix_multipart::Multipart;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use bytes::Bytes;
use futures_util::StreamExt;
use libfuzzer_sys::fuzz_target;

/// More fields than any form Gantry takes (16 besides the files, and at
/// most `media.max_batch_files` files).
const MAX_FIELDS: usize = 128;

/// Polls `future` once: everything it reads is ready, so it either
/// finishes or has stalled for good.
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let [size, body @ ..] = input else {
        return;
    };
    let chunks: Vec<Result<Bytes, PayloadError>> = body
        .chunks(usize::from(*size) + 1)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("multipart/form-data; boundary=gantry-fuzz"),
    );
    let read = std::cell::Cell::new(0usize);
    let _ = poll_once(async {
        let mut form = Multipart::new(&headers, futures_util::stream::iter(chunks));
        for _ in 0..MAX_FIELDS {
            let Some(Ok(mut field)) = form.next().await else {
                return;
            };
            let _ = field.name();
            let _ = field.content_disposition().and_then(|d| d.get_filename());
            while let Some(chunk) = field.next().await {
                match chunk {
                    Ok(bytes) => read.set(read.get() + bytes.len()),
                    Err(_) => return,
                }
            }
        }
    });
    assert!(read.get() <= body.len());
});
