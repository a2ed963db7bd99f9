//! Audio probing and decoding (`gantry::media::audio`) for a model taking
//! 0.1 s at 16 kHz, so each input decodes little: what is accepted is a
//! clip of exactly the model's length at a sample rate Gantry reads.

#![no_main]

use bytes::Bytes;
use gantry::media::audio::audio_to_tensor;
use gantry::media::SAMPLE_RATES;
use gantry::media::sniff::{sniff, Family};
use gantry_actors::processing::AudioInput;
use libfuzzer_sys::fuzz_target;

const SPEC: AudioInput = AudioInput {
    sample_rate: 16_000,
    length: 1_600,
};

fuzz_target!(|input: &[u8]| {
    let Some(file_type) = sniff(input).filter(|t| t.family() == Family::Audio) else {
        return;
    };
    let Ok(clip) = audio_to_tensor(Bytes::copy_from_slice(input), file_type, &SPEC, 2) else {
        return;
    };
    assert_eq!(clip.tensor.shape, [1, SPEC.length]);
    assert!(SAMPLE_RATES.contains(&clip.sample_rate));
    assert!(clip.channels > 0);
    assert!(clip.seconds >= 0.0 && clip.seconds <= 0.1 + 1e-6);
});
