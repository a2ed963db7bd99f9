//! Uploaded files turned into tensors, and model outputs turned into
//! answers: `.npy` arrays, images and audio clips in; masks and class
//! labels out. Everything here is blocking CPU work that runs on the
//! [`MediaPool`](pool::MediaPool), never on the async workers.

pub mod audio;
pub mod budget;
pub mod classes;
pub mod contours;
pub mod estimate;
pub mod image;
pub mod jpeg;
pub mod mask;
pub mod npy;
pub mod pool;
pub mod sniff;
mod wav;

/// Sample rates an audio file may declare: a header outside this range is
/// damaged or hostile (and would size the resampler absurdly).
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=384_000;

/// Why a file could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MediaError {
    /// A file type the model cannot take (415).
    #[error("{0}")]
    Unsupported(String),
    /// A file of a supported type that is empty, truncated or corrupt (422).
    #[error("{0}")]
    Undecodable(String),
    /// A file that declares more than the configured limits allow (422),
    /// refused before its pixels are decoded.
    #[error("{0}")]
    TooLarge(String),
    /// The media pool's queue is full (429, with `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// The media pool failed, not the file (500).
    #[error("media processing failed: {0}")]
    Internal(String),
}
