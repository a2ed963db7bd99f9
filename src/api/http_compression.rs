//! Compressed bodies: requests sent with `Content-Encoding: gzip` or
//! `deflate` (zlib, or raw deflate as some clients send it) are inflated
//! before anything reads them, and inference answers are compressed when
//! `Accept-Encoding` asks (as Triton does, and only there: some clients
//! send `Accept-Encoding` on every call but inflate only inference
//! answers), except a binary answer whose tensor bytes would not shrink
//! ([`Content::Tensors`]).
//!
//! Inflating is bounded by `server.body_limit_mb`: the decoder writes into
//! a buffer that refuses to grow past the limit, so a compression bomb is
//! answered 413 after at most the limit has been produced, never inflated
//! whole. It runs on the blocking pool, off the HTTP workers, as does
//! compressing a large answer. `flate2` (miniz_oxide) does the work.

use std::io::{self, Write};

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use flate2::write::{DeflateDecoder, GzDecoder, GzEncoder, ZlibDecoder, ZlibEncoder};
use flate2::Compression;

use crate::error::ApiError;

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Deflate,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// Answers at least this large are compressed on the blocking pool.
const COMPRESS_INLINE_MAX: usize = 64 * 1024;

/// Bytes at the end of a binary answer compressed first, to judge the whole.
const TENSOR_SAMPLE: usize = 16 * 1024;

/// What an answer holds, for whether compressing it pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// JSON: text, which always shrinks; always compressed when asked.
    Text,
    /// The binary extension's raw tensor bytes after a JSON header:
    /// compressed only where a sample of the end shrinks by a tenth. The
    /// FP32 outputs of a network rarely do (unet-seg's mask does not), a
    /// mask of zeros and ones does. aiohttp, and so Triton's
    /// asyncio HTTP client, asks for gzip on every call whether it wants it
    /// or not.
    Tensors,
}

/// An answer's body as it goes out.
#[derive(Debug)]
pub enum Packed {
    /// Compressed, with its `Content-Encoding`.
    Compressed(Bytes, HeaderValue),
    /// As it was: compressing it would not have paid.
    Plain(Bytes),
}

/// Whether `packed` bytes for `plain` ones are worth a `Content-Encoding`.
fn pays(packed: usize, plain: usize) -> bool {
    packed * 10 < plain * 9
}

/// The request body's encoding; `None` for `identity` or no header, 415
/// for one Gantry cannot read.
pub fn request_encoding(headers: &HeaderMap) -> Result<Option<Encoding>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" => Ok(Some(Encoding::Gzip)),
        "deflate" => Ok(Some(Encoding::Deflate)),
        other => Err(ApiError::UnsupportedMedia(format!(
            "Content-Encoding {other:?} is not supported; send gzip, deflate or identity"
        ))),
    }
}

/// Inflates `body` to at most `limit` bytes (413 beyond), off the HTTP
/// workers.
pub async fn inflate(body: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes, ApiError> {
    let limit_mb = (limit / (1024 * 1024)) as u64;
    let inflated = tokio::task::spawn_blocking(move || inflate_bounded(&body, encoding, limit))
        .await
        .map_err(|e| ApiError::Internal(format!("inflating the body failed: {e}")))?;
    match inflated {
        Ok(bytes) => Ok(bytes),
        Err(Inflate::TooLarge) => Err(ApiError::PayloadTooLarge { limit_mb }),
        Err(Inflate::Corrupt(why)) => Err(ApiError::BadRequest(format!(
            "the {} request body cannot be inflated: {why}",
            encoding.name()
        ))),
    }
}

/// Why a body could not be inflated.
#[derive(Debug, PartialEq)]
enum Inflate {
    TooLarge,
    Corrupt(String),
}

/// A buffer that refuses to grow past its limit.
struct Bounded {
    buf: BytesMut,
    limit: usize,
    overflowed: bool,
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("inflated body exceeds the limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// True when `body` starts with a zlib header (RFC 1950), not raw deflate.
fn is_zlib(body: &[u8]) -> bool {
    matches!(body, [cmf, flg, ..] if cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0)
}

fn inflate_bounded(body: &[u8], encoding: Encoding, limit: usize) -> Result<Bytes, Inflate> {
    let sink = Bounded {
        buf: BytesMut::with_capacity(body.len().saturating_mul(4).min(limit).min(4 << 20)),
        limit,
        overflowed: false,
    };
    fn run<W: Write>(
        mut decoder: W,
        body: &[u8],
        finish: impl FnOnce(W) -> io::Result<Bounded>,
    ) -> (io::Result<()>, Option<Bounded>) {
        if let Err(e) = decoder.write_all(body) {
            return (Err(e), finish(decoder).ok());
        }
        match finish(decoder) {
            Ok(sink) => (Ok(()), Some(sink)),
            Err(e) => (Err(e), None),
        }
    }
    let (result, sink) = match encoding {
        Encoding::Gzip => run(GzDecoder::new(sink), body, |d| d.finish()),
        Encoding::Deflate if is_zlib(body) => run(ZlibDecoder::new(sink), body, |d| d.finish()),
        Encoding::Deflate => run(DeflateDecoder::new(sink), body, |d| d.finish()),
    };
    if sink.as_ref().is_some_and(|s| s.overflowed) {
        return Err(Inflate::TooLarge);
    }
    match (result, sink) {
        (Ok(()), Some(sink)) => Ok(sink.buf.freeze()),
        (Err(e), _) if e.to_string().contains("exceeds the limit") => Err(Inflate::TooLarge),
        (Err(e), _) => Err(Inflate::Corrupt(e.to_string())),
        (Ok(()), None) => Err(Inflate::Corrupt("no output".into())),
    }
}

/// The encoding an answer may be compressed with: gzip, else deflate, when
/// `Accept-Encoding` lists it with a non-zero weight.
pub fn accepted_encoding(headers: &HeaderMap) -> Option<Encoding> {
    let mut gzip = false;
    let mut deflate = false;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        for item in value.to_str().unwrap_or_default().split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip |= !refused,
                "deflate" => deflate |= !refused,
                _ => {}
            }
        }
    }
    match (gzip, deflate) {
        (true, _) => Some(Encoding::Gzip),
        (false, true) => Some(Encoding::Deflate),
        _ => None,
    }
}

/// `body` compressed with `encoding` (deflate as zlib, as HTTP means it),
/// or as it is where `content` is tensors that would not shrink; large
/// bodies on the blocking pool.
pub async fn compress(
    body: Bytes,
    encoding: Encoding,
    content: Content,
) -> Result<Packed, ApiError> {
    let value = HeaderValue::from_static(encoding.name());
    if content == Content::Tensors {
        let sample = &body[body.len().saturating_sub(TENSOR_SAMPLE)..];
        let packed = compress_now(sample, encoding)?;
        if !pays(packed.len(), sample.len()) {
            return Ok(Packed::Plain(body));
        }
        if sample.len() == body.len() {
            return Ok(Packed::Compressed(packed, value));
        }
    }
    if body.len() < COMPRESS_INLINE_MAX {
        return Ok(Packed::Compressed(compress_now(&body, encoding)?, value));
    }
    let compressed = tokio::task::spawn_blocking(move || compress_now(&body, encoding))
        .await
        .map_err(|e| ApiError::Internal(format!("compressing the answer failed: {e}")))??;
    Ok(Packed::Compressed(compressed, value))
}

fn compress_now(body: &[u8], encoding: Encoding) -> Result<Bytes, ApiError> {
    let failed = |e: io::Error| ApiError::Internal(format!("compressing the answer failed: {e}"));
    let out = Vec::with_capacity(body.len() / 2 + 64);
    let level = Compression::fast();
    let bytes = match encoding {
        Encoding::Gzip => {
            let mut encoder = GzEncoder::new(out, level);
            encoder.write_all(body).map_err(failed)?;
            encoder.finish().map_err(failed)?
        }
        Encoding::Deflate => {
            let mut encoder = ZlibEncoder::new(out, level);
            encoder.write_all(body).map_err(failed)?;
            encoder.finish().map_err(failed)?
        }
    };
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::DeflateEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn every_encoding_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for encoding in [Encoding::Gzip, Encoding::Deflate] {
            let packed = compress_now(&data, encoding).unwrap();
            let back = inflate_bounded(&packed, encoding, data.len()).unwrap();
            assert_eq!(&back[..], &data[..]);
        }
        let mut raw = DeflateEncoder::new(Vec::new(), Compression::fast());
        raw.write_all(&data).unwrap();
        let raw = raw.finish().unwrap();
        let back = inflate_bounded(&raw, Encoding::Deflate, data.len()).unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    /// `n` values of four bytes that deflate cannot shrink (xorshift32), as
    /// a network's FP32 outputs mostly look to it.
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_u32;
        (0..n)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()
            })
            .collect()
    }

    fn compressed(packed: Packed) -> Option<Bytes> {
        match packed {
            Packed::Compressed(bytes, _) => Some(bytes),
            Packed::Plain(_) => None,
        }
    }

    #[tokio::test]
    async fn tensors_that_would_not_shrink_go_out_as_they_are() {
        let header = br#"{"outputs":[{"name":"mask","datatype":"FP32","shape":[1,1,128,128]}]}"#;
        for n in [10, 16_384] {
            let noise = Bytes::from([&header[..], &noise(n)].concat());
            let packed = compress(noise.clone(), Encoding::Gzip, Content::Tensors);
            match packed.await.unwrap() {
                Packed::Plain(body) => assert_eq!(body, noise),
                other => panic!("{n} noise floats were compressed: {other:?}"),
            }
            // Asked as text, the same bytes are compressed whatever comes of it.
            let packed = compress(noise.clone(), Encoding::Gzip, Content::Text);
            assert!(compressed(packed.await.unwrap()).is_some());

            // A mask of zeros and ones shrinks, and comes back whole.
            let mask: Vec<u8> = (0..n)
                .flat_map(|i| f32::from(u8::from(i % 7 < 3)).to_le_bytes())
                .collect();
            let mask = Bytes::from([&header[..], &mask].concat());
            let packed = compress(mask.clone(), Encoding::Deflate, Content::Tensors);
            let packed = compressed(packed.await.unwrap()).expect("a mask is compressed");
            assert!(
                pays(packed.len(), mask.len()),
                "{} of {}",
                packed.len(),
                mask.len()
            );
            let back = inflate_bounded(&packed, Encoding::Deflate, mask.len()).unwrap();
            assert_eq!(back, mask);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 1 GiB of zeros packs into about 1 MB; inflating stops at 1 MiB.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 2 << 20);
        assert_eq!(
            inflate_bounded(&bomb, Encoding::Gzip, 1 << 20),
            Err(Inflate::TooLarge)
        );
        assert_eq!(
            inflate_bounded(&gzip(&zeros), Encoding::Gzip, 1 << 20)
                .unwrap()
                .len(),
            1 << 20
        );
    }

    #[test]
    fn corrupt_and_truncated_bodies_are_refused() {
        let packed = gzip(b"hello world, hello world");
        for body in [&b"not gzip at all"[..], &packed[..packed.len() - 6]] {
            assert!(matches!(
                inflate_bounded(body, Encoding::Gzip, 1 << 20),
                Err(Inflate::Corrupt(_))
            ));
        }
    }

    #[test]
    fn accept_encoding_weights_are_read() {
        let headers = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            h
        };
        assert_eq!(
            accepted_encoding(&headers("gzip, deflate")),
            Some(Encoding::Gzip)
        );
        assert_eq!(
            accepted_encoding(&headers("deflate")),
            Some(Encoding::Deflate)
        );
        assert_eq!(
            accepted_encoding(&headers("gzip;q=0, deflate;q=0.5")),
            Some(Encoding::Deflate)
        );
        assert_eq!(accepted_encoding(&headers("br, identity")), None);
        assert_eq!(accepted_encoding(&HeaderMap::new()), None);
    }
}
