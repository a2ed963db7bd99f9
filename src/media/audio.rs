//! Audio clips to input tensors: decode (WAV 8/16/24/32-bit PCM and float,
//! FLAC, MP3, Ogg Vorbis) with Symphonia, mix to mono, resample to the
//! model's rate with Rubato, and pad with silence or trim to its length.
//!
//! Decoding stops once the model's length is covered, so a long (or
//! lying) file costs no more than the part the model reads.

use std::io::Cursor;

use bytes::Bytes;
use gantry_actors::processing::AudioInput;
use gantry_actors::Tensor;
use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::sniff::{FileType, AUDIO_TYPES};
use super::wav::check_wav_chunks;
use super::{MediaError, SAMPLE_RATES};

/// A clip turned into the model's input.
#[derive(Debug)]
pub struct AudioTensor {
    /// `[1, .., 1, length]` float32, as many dimensions as the model's input.
    pub tensor: Tensor,
    /// The file's own sample rate and channel count.
    pub sample_rate: u32,
    pub channels: usize,
    /// Seconds of audio read (at most what the model takes).
    pub seconds: f64,
}

/// Decodes `bytes` and builds the input `spec` describes, with `rank`
/// dimensions.
pub fn audio_to_tensor(
    bytes: Bytes,
    file_type: FileType,
    spec: &AudioInput,
    rank: usize,
) -> Result<AudioTensor, MediaError> {
    let clip = decode(bytes, file_type, spec)?;
    let mut samples = resample(&clip.mono, clip.sample_rate, spec.sample_rate)?;
    samples.resize(spec.length, 0.0);
    // What the model got: the clip, or its own length where the clip (read
    // in whole packets and whole source frames) runs past it.
    let model_seconds = spec.length as f64 / f64::from(spec.sample_rate);
    let seconds = (clip.mono.len() as f64 / f64::from(clip.sample_rate)).min(model_seconds);
    let mut shape = vec![1; rank.saturating_sub(1)];
    shape.push(spec.length);
    let tensor = Tensor::from_f32(shape, &samples)
        .map_err(|e| MediaError::Undecodable(format!("internal size mismatch: {e:?}")))?;
    Ok(AudioTensor {
        tensor,
        sample_rate: clip.sample_rate,
        channels: clip.channels,
        seconds,
    })
}

/// The most memory decoding a `file_type` clip into `spec`'s input may
/// take, whatever the file declares: decoding stops once the model's length
/// is covered at the highest rate the format allows (so a header declaring
/// hours costs what the model reads), packets are as long and as wide as the
/// format allows, and the resampler is sized for the worst ratio of rates.
pub fn worst_case_bytes(file_type: FileType, spec: &AudioInput) -> u64 {
    // (highest rate, samples in one decoded packet of every channel).
    let (rate, packet_samples) = match file_type {
        // MPEG audio: 48 kHz at most, 1152 frames of 2 channels.
        FileType::Mp3 => (48_000, 1152 * 2),
        // FLAC blocks: 65535 frames of up to 8 channels.
        FileType::Flac => (*SAMPLE_RATES.end(), 65_535 * 8),
        // Vorbis blocks: 8192 frames of up to 255 channels.
        FileType::Ogg => (*SAMPLE_RATES.end(), 8192 * 255),
        // WAV packets: 1152 frames of up to 32 channels.
        _ => (*SAMPLE_RATES.end(), 1152 * 32),
    };
    super::estimate::audio_input_bytes(rate, packet_samples, spec.sample_rate, spec.length as u64)
}

/// Largest sample magnitude read from a (float) file.
const MAX_SAMPLE: f32 = 1e6;

/// Source frames at `rate` that cover the model's length.
fn frames_for(spec: &AudioInput, rate: u32) -> usize {
    (spec.length as u64 * u64::from(rate)).div_ceil(u64::from(spec.sample_rate)) as usize
}

/// The error for a Symphonia failure: 415 for what it cannot read, 422
/// for a damaged file.
fn symphonia_error(name: &str, e: SymphoniaError) -> MediaError {
    match e {
        SymphoniaError::Unsupported(what) => MediaError::Unsupported(format!(
            "the {name} file uses what Gantry cannot read: {what}"
        )),
        other => {
            MediaError::Undecodable(format!("the {name} file is damaged or truncated: {other}"))
        }
    }
}

/// A decoded clip, mixed to mono.
struct Clip {
    mono: Vec<f32>,
    sample_rate: u32,
    channels: usize,
}

fn decode(bytes: Bytes, file_type: FileType, spec: &AudioInput) -> Result<Clip, MediaError> {
    let extension = match file_type {
        FileType::Wav => "wav",
        FileType::Flac => "flac",
        FileType::Mp3 => "mp3",
        FileType::Ogg => "ogg",
        other => {
            return Err(MediaError::Unsupported(format!(
                "{} files are not audio Gantry reads; send {AUDIO_TYPES}",
                other.name().to_uppercase()
            )))
        }
    };
    let name = extension.to_uppercase();
    if file_type == FileType::Wav {
        check_wav_chunks(&bytes)?;
    }
    let broken = |e: SymphoniaError| symphonia_error(&name, e);
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(extension);
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(broken)?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| MediaError::Undecodable(format!("the {name} file holds no audio track")))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate = params.sample_rate.ok_or_else(|| {
        MediaError::Undecodable(format!("the {name} file declares no sample rate"))
    })?;
    if !SAMPLE_RATES.contains(&sample_rate) {
        return Err(MediaError::Undecodable(format!(
            "the {name} file declares a sample rate of {sample_rate} Hz; Gantry reads {} to {} Hz",
            SAMPLE_RATES.start(),
            SAMPLE_RATES.end()
        )));
    }
    let declared_frames = params.n_frames.filter(|&n| !streaming_length(&params, n));
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| {
            MediaError::Unsupported(format!("the {name} file's codec is not supported: {e}"))
        })?;
    // Source frames that cover the model's length, plus the resampler's margin.
    let needed = frames_for(spec, sample_rate) + 1024;
    let mut mono = Vec::with_capacity(needed.min(1 << 22));
    let mut channels = params.channels.map_or(0, |c| c.count());
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let mut bad_packets = 0usize;
    let mut ended = false;
    while mono.len() < needed {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ended = true;
                break;
            }
            Err(e) => return Err(broken(e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            Err(SymphoniaError::DecodeError(_)) => {
                bad_packets += 1;
                continue;
            }
            Err(e) => return Err(broken(e)),
        };
        let spec = *decoded.spec();
        channels = spec.channels.count().max(1);
        let buf = match &mut buffer {
            Some(buf) if buf.capacity() >= decoded.capacity() * channels => buf,
            _ => buffer.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let scale = 1.0 / channels as f32;
        mono.extend(
            buf.samples()
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() * scale),
        );
    }
    if mono.is_empty() {
        let why = if bad_packets > 0 {
            "every frame failed to decode"
        } else {
            "it holds no samples"
        };
        return Err(MediaError::Undecodable(format!(
            "the {name} file has no usable audio: {why}"
        )));
    }
    // A float file may hold NaN, infinities or huge values: no sound, and
    // the resampler's FFT overflows on them. Audio lies within ±1 (some
    // tools write ±32768); anything beyond ±1e6 is refused.
    if let Some(at) = mono.iter().position(|s| s.is_nan() || s.abs() > MAX_SAMPLE) {
        return Err(MediaError::Undecodable(format!(
            "the {name} file holds a sample that is not a finite number within ±{MAX_SAMPLE:e} at frame {at}"
        )));
    }
    let exact_length = matches!(file_type, FileType::Wav | FileType::Flac);
    if let Some(declared) = declared_frames.filter(|_| ended && exact_length) {
        if (mono.len() as u64) < declared {
            return Err(MediaError::Undecodable(format!(
                "the {name} file is truncated: it declares {declared} frames but holds {}",
                mono.len()
            )));
        }
    }
    mono.truncate(needed);
    Ok(Clip {
        mono,
        sample_rate,
        channels,
    })
}

/// True when a WAV's frame count comes from a data length of `0xFFFFFFFF`
/// (or 0): a stream written before its length was known, not a promise.
fn streaming_length(params: &symphonia::core::codecs::CodecParameters, frames: u64) -> bool {
    let channels = params.channels.map_or(1, |c| c.count().max(1)) as u64;
    let bytes = u64::from(params.bits_per_sample.unwrap_or(8).div_ceil(8).max(1));
    let block = channels * bytes;
    frames == 0 || frames == u64::from(u32::MAX) / block
}

/// `samples` at `from` Hz resampled to `to` Hz (band-limited, FFT based),
/// aligned so the output starts where the input does.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, MediaError> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let failed = |e: String| {
        MediaError::Undecodable(format!("resampling from {from} Hz to {to} Hz failed: {e}"))
    };
    let expected = (samples.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;
    let mut resampler = FftFixedIn::<f32>::new(from as usize, to as usize, 1024, 2, 1)
        .map_err(|e| failed(e.to_string()))?;
    let delay = resampler.output_delay();
    let mut out = Vec::with_capacity(expected + delay + 2048);
    let mut rest = samples;
    while rest.len() >= resampler.input_frames_next() {
        let (chunk, tail) = rest.split_at(resampler.input_frames_next());
        let produced = resampler
            .process(&[chunk], None)
            .map_err(|e| failed(e.to_string()))?;
        out.extend_from_slice(&produced[0]);
        rest = tail;
    }
    // Flushing with zeros. The resampler answers only whole FFT blocks of
    // `from / gcd(from, to)` input frames, which can span many chunks (44101
    // Hz holds 44101 frames), so an empty answer is not the end; the zeros
    // fed are bounded by one block and the delay beyond the chunks.
    let block = (from / gcd(from, to)) as usize;
    let chunk = resampler.input_frames_next().max(1);
    let mut empty_answers_left = block.div_ceil(chunk) + delay.div_ceil(chunk) + 2;
    while out.len() < expected + delay {
        let input = (!rest.is_empty()).then_some([rest]);
        let produced = resampler
            .process_partial(input.as_ref().map(|i| &i[..]), None)
            .map_err(|e| failed(e.to_string()))?;
        rest = &[];
        if produced[0].is_empty() {
            if empty_answers_left == 0 {
                break;
            }
            empty_answers_left -= 1;
        }
        out.extend_from_slice(&produced[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(expected);
    Ok(out)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mono or stereo 16-bit PCM WAV file.
    fn wav(rate: u32, channels: u16, frames: &[Vec<i16>]) -> Vec<u8> {
        let data: Vec<u8> = frames
            .iter()
            .flatten()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&rate.wrapping_mul(u32::from(channels) * 2).to_le_bytes());
        out.extend_from_slice(&(channels * 2).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    fn spec(rate: u32, length: usize) -> AudioInput {
        AudioInput {
            sample_rate: rate,
            length,
        }
    }

    #[test]
    fn stereo_is_mixed_and_short_clips_are_padded() {
        let frames: Vec<Vec<i16>> = (0..100).map(|_| vec![16384, -16384 + 8192]).collect();
        let bytes = Bytes::from(wav(8000, 2, &frames));
        let t = audio_to_tensor(bytes, FileType::Wav, &spec(8000, 160), 2).unwrap();
        assert_eq!(t.tensor.shape, [1, 160]);
        assert_eq!((t.sample_rate, t.channels), (8000, 2));
        let v = t.tensor.to_f32().unwrap();
        assert!((v[0] - 0.125).abs() < 1e-4, "{}", v[0]);
        assert_eq!(v[100..], [0.0; 60]);
    }

    #[test]
    fn long_clips_keep_their_start() {
        let frames: Vec<Vec<i16>> = (0..5000).map(|i| vec![i as i16]).collect();
        let t = audio_to_tensor(
            Bytes::from(wav(1000, 1, &frames)),
            FileType::Wav,
            &spec(1000, 10),
            3,
        )
        .unwrap();
        assert_eq!(t.tensor.shape, [1, 1, 10]);
        assert!((t.tensor.to_f32().unwrap()[9] - 9.0 / 32768.0).abs() < 1e-7);
        assert_eq!(t.seconds, 0.01);
    }

    #[test]
    fn seconds_read_stop_at_the_models_length_at_any_rate() {
        // 0.1 s at 16 kHz needs 100.1 frames at 1001 Hz: 101 are read, and the
        // clip's seconds are still the model's 0.1 (found by `make fuzz`).
        let frames: Vec<Vec<i16>> = (0..300).map(|i| vec![i as i16]).collect();
        for (rate, want) in [(1001, 0.1), (1000, 0.1), (44_101, 300.0 / 44_101.0)] {
            let t = audio_to_tensor(
                Bytes::from(wav(rate, 1, &frames)),
                FileType::Wav,
                &spec(16_000, 1_600),
                2,
            )
            .unwrap();
            assert_eq!(t.seconds, want, "at {rate} Hz");
        }
    }

    #[test]
    fn resampling_keeps_a_tone_and_its_timing() {
        // 44101 and 44056 Hz have FFT blocks longer than a chunk (44101 and
        // 5507 frames); 0.5 s of them must come out whole, not zero-padded.
        // Off by at most a third of an output sample (0.05 at this slope).
        for (from, seconds) in [(44100, 1.0), (44101, 0.5), (44056, 0.5), (8000, 1.0)] {
            let n = (f64::from(from) * seconds) as usize;
            let tone: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / from as f32).sin())
                .collect();
            let out = resample(&tone, from, 16000).unwrap();
            let len = (16000.0 * seconds) as usize;
            assert_eq!(out.len(), len, "from {from} Hz");
            for i in (len / 8..len * 7 / 8).step_by(97) {
                let want = (i as f32 * 440.0 * std::f32::consts::TAU / 16000.0).sin();
                assert!(
                    (out[i] - want).abs() < 0.05,
                    "from {from} Hz, sample {i}: {} vs {want}",
                    out[i]
                );
            }
        }
    }

    /// `bytes` with the WAV header's RIFF and data lengths set to `length`
    /// (as a writer to a pipe, which cannot seek back, leaves them).
    fn with_data_length(mut bytes: Vec<u8>, length: u32) -> Vec<u8> {
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        bytes[40..44].copy_from_slice(&length.to_le_bytes());
        bytes
    }

    #[test]
    fn chunks_that_overrun_the_file_are_refused_before_decoding() {
        let frames: Vec<Vec<i16>> = (0..100).map(|i| vec![i as i16]).collect();
        let clip = wav(8000, 1, &frames);
        // A LIST/INFO chunk before the audio whose INAM claims 4 GiB, inside
        // a LIST that claims as much (else the decoder's own check fires).
        for (list, named) in [
            (0xFFFF_FFF0u32, "'LIST' chunk declares 4294967280"),
            (16, "'INAM' chunk declares 4294967264"),
        ] {
            let mut hostile = clip[..12].to_vec();
            hostile.extend_from_slice(b"LIST");
            hostile.extend_from_slice(&list.to_le_bytes());
            hostile.extend_from_slice(b"INFOINAM");
            hostile.extend_from_slice(&0xFFFF_FFE0u32.to_le_bytes());
            hostile.extend_from_slice(b"abcd");
            hostile.extend_from_slice(&clip[12..]);
            let err = audio_to_tensor(Bytes::from(hostile), FileType::Wav, &spec(8000, 200), 2)
                .unwrap_err();
            assert!(
                matches!(err, MediaError::Undecodable(ref m) if m.contains(named)),
                "{err:?}"
            );
        }
        // A well-formed LIST chunk is fine.
        let mut tagged = clip[..12].to_vec();
        tagged.extend_from_slice(b"LIST");
        tagged.extend_from_slice(&16u32.to_le_bytes());
        tagged.extend_from_slice(b"INFOINAM");
        tagged.extend_from_slice(&4u32.to_le_bytes());
        tagged.extend_from_slice(b"owl\0");
        tagged.extend_from_slice(&clip[12..]);
        let riff = u32::from_le_bytes(tagged[4..8].try_into().unwrap()) + 24;
        tagged[4..8].copy_from_slice(&riff.to_le_bytes());
        let t = audio_to_tensor(Bytes::from(tagged), FileType::Wav, &spec(8000, 200), 2).unwrap();
        assert_eq!(t.tensor.shape, [1, 200]);
    }

    #[test]
    fn streamed_wavs_and_absurd_rates() {
        let frames: Vec<Vec<i16>> = (0..100).map(|i| vec![i as i16]).collect();
        let streamed = Bytes::from(with_data_length(wav(8000, 1, &frames), u32::MAX));
        let t = audio_to_tensor(streamed, FileType::Wav, &spec(8000, 200), 2).unwrap();
        assert_eq!(t.tensor.shape, [1, 200]);
        for rate in [1, 4_000_000_000] {
            let odd = Bytes::from(wav(rate, 1, &frames));
            let err = audio_to_tensor(odd, FileType::Wav, &spec(16000, 16000), 2).unwrap_err();
            assert!(
                matches!(err, MediaError::Undecodable(ref m) if m.contains("sample rate")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn format_chunks_the_decoder_would_divide_by_are_refused() {
        let frames: Vec<Vec<i16>> = (0..100).map(|i| vec![i as i16]).collect();
        let clip = wav(8000, 1, &frames);
        // (offset in the file, bytes, what the error names): a rate of 0
        // panicked inside the decoder (found by the `audio` fuzz target).
        for (at, bytes, named) in [
            (24, &0u32.to_le_bytes()[..], "sample rate of 0 Hz"),
            (22, &0u16.to_le_bytes()[..], "0 channels"),
            (32, &0u16.to_le_bytes()[..], "0 bytes per frame"),
            (34, &0u16.to_le_bytes()[..], "0 bits per sample"),
        ] {
            let mut bad = clip.clone();
            bad[at..at + bytes.len()].copy_from_slice(bytes);
            let err =
                audio_to_tensor(Bytes::from(bad), FileType::Wav, &spec(8000, 200), 2).unwrap_err();
            assert!(
                matches!(err, MediaError::Undecodable(ref m) if m.contains(named)),
                "{named}: {err:?}"
            );
        }
        // A 'fmt ' chunk of 12 bytes.
        let mut short = clip[..16].to_vec();
        short.extend_from_slice(&12u32.to_le_bytes());
        short.extend_from_slice(&clip[20..32]);
        short.extend_from_slice(&clip[36..]);
        let err =
            audio_to_tensor(Bytes::from(short), FileType::Wav, &spec(8000, 200), 2).unwrap_err();
        assert!(
            matches!(err, MediaError::Undecodable(ref m) if m.contains("fewer than 16")),
            "{err:?}"
        );
    }

    #[test]
    fn non_finite_samples_are_refused_not_resampled() {
        // A 32-bit float WAV; the resampler's FFT panicked on NaN.
        for (bad, other) in [
            (f32::NAN, 0.0),
            (f32::INFINITY, 0.0),
            (3e38, 0.0),
            (3e38, 3e38),
        ] {
            let mut samples = vec![0.25f32; 2000];
            samples[700] = bad;
            samples[701] = other;
            let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            let mut file = wav(8000, 2, &[]);
            file[20..22].copy_from_slice(&3u16.to_le_bytes());
            file[28..32].copy_from_slice(&(8000u32 * 8).to_le_bytes());
            file[32..34].copy_from_slice(&8u16.to_le_bytes());
            file[34..36].copy_from_slice(&32u16.to_le_bytes());
            file[4..8].copy_from_slice(&(36 + data.len() as u32).to_le_bytes());
            file[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
            file.extend_from_slice(&data);
            let err = audio_to_tensor(Bytes::from(file), FileType::Wav, &spec(16000, 1600), 2)
                .unwrap_err();
            assert!(
                matches!(err, MediaError::Undecodable(ref m) if m.contains("not a finite number within")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn truncated_and_empty_files_are_refused() {
        let frames: Vec<Vec<i16>> = (0..1000).map(|i| vec![i as i16]).collect();
        let full = wav(8000, 1, &frames);
        let cut = Bytes::copy_from_slice(&full[..full.len() - 600]);
        let err = audio_to_tensor(cut, FileType::Wav, &spec(8000, 8000), 2).unwrap_err();
        assert!(
            matches!(err, MediaError::Undecodable(ref m) if m.contains("truncated")),
            "{err:?}"
        );
        let header_only = Bytes::copy_from_slice(&full[..20]);
        let err = audio_to_tensor(header_only, FileType::Wav, &spec(8000, 10), 2).unwrap_err();
        assert!(matches!(err, MediaError::Undecodable(_)), "{err:?}");
        let err = audio_to_tensor(
            Bytes::from_static(b"\x89PNG"),
            FileType::Png,
            &spec(8000, 10),
            2,
        )
        .unwrap_err();
        assert!(matches!(err, MediaError::Unsupported(_)), "{err:?}");
    }
}
