//! WAV header checks made before the decoder reads the file: chunk lengths
//! that claim more bytes than follow, and `fmt ` fields the decoder
//! divides by.

use super::MediaError;
use super::SAMPLE_RATES;

/// Refuses a WAV whose chunks before its audio (and the sub-chunks of its
/// `LIST` chunks) declare more bytes than follow them: a damaged or hostile
/// header, which the decoder would otherwise size a buffer by before reading.
/// The `data` chunk may declare any length (a stream written to a pipe
/// cannot seek back to fill it in).
pub(super) fn check_wav_chunks(bytes: &[u8]) -> Result<(), MediaError> {
    /// Walks the chunks of `body`; `top` is the file's own level.
    fn walk(body: &[u8], top: bool) -> Result<(), MediaError> {
        let mut rest = body;
        while rest.len() >= 8 {
            let (id, len) = (
                &rest[..4],
                u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]),
            );
            if top && id == b"data" {
                return Ok(());
            }
            let len = len as usize;
            let Some(chunk) = rest.get(8..8 + len) else {
                return Err(MediaError::Undecodable(format!(
                    "the WAV file is damaged: its '{}' chunk declares {len} bytes but {} follow",
                    String::from_utf8_lossy(id),
                    rest.len() - 8
                )));
            };
            if top && id == b"LIST" && chunk.len() >= 4 {
                walk(&chunk[4..], false)?;
            }
            if top && id == b"fmt " {
                check_wav_format(chunk)?;
            }
            rest = rest.get(8 + len + len % 2..).unwrap_or_default();
        }
        Ok(())
    }
    walk(bytes.get(12..).unwrap_or_default(), true)
}

/// Refuses a WAV `fmt ` chunk that is too short or declares no channels,
/// no bytes per frame, no bits per sample or a sample rate outside
/// [`SAMPLE_RATES`]: the decoder divides by these (a rate of 0 made it
/// panic), so they are checked before it reads them.
fn check_wav_format(chunk: &[u8]) -> Result<(), MediaError> {
    let damaged =
        |what: String| MediaError::Undecodable(format!("the WAV file is damaged: {what}"));
    if chunk.len() < 16 {
        return Err(damaged(format!(
            "its 'fmt ' chunk holds {} bytes, fewer than 16",
            chunk.len()
        )));
    }
    let u16_at = |i: usize| u16::from_le_bytes([chunk[i], chunk[i + 1]]);
    let rate = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
    let (channels, block_align, bits) = (u16_at(2), u16_at(12), u16_at(14));
    if !SAMPLE_RATES.contains(&rate) {
        return Err(MediaError::Undecodable(format!(
            "the WAV file declares a sample rate of {rate} Hz; Gantry reads {} to {} Hz",
            SAMPLE_RATES.start(),
            SAMPLE_RATES.end()
        )));
    }
    for (value, what) in [
        (channels, "channels"),
        (block_align, "bytes per frame"),
        (bits, "bits per sample"),
    ] {
        if value == 0 {
            return Err(damaged(format!("its 'fmt ' chunk declares 0 {what}")));
        }
    }
    Ok(())
}
