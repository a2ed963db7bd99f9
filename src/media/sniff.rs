//! What a file is, read from its first bytes (its name and the client's
//! content type are not trusted).

/// A file type Gantry recognises, supported or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Png,
    Jpeg,
    Tiff,
    WebP,
    Gif,
    Bmp,
    Wav,
    Flac,
    Mp3,
    Ogg,
    Npy,
    Pdf,
    Zip,
}

/// What a file type holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Image,
    Audio,
    Tensor,
    Other,
}

impl FileType {
    /// The type's usual name, as used in answers and error messages.
    pub fn name(self) -> &'static str {
        match self {
            FileType::Png => "png",
            FileType::Jpeg => "jpeg",
            FileType::Tiff => "tiff",
            FileType::WebP => "webp",
            FileType::Gif => "gif",
            FileType::Bmp => "bmp",
            FileType::Wav => "wav",
            FileType::Flac => "flac",
            FileType::Mp3 => "mp3",
            FileType::Ogg => "ogg",
            FileType::Npy => "npy",
            FileType::Pdf => "pdf",
            FileType::Zip => "zip",
        }
    }

    /// Whether Gantry decodes this type (GIF and BMP are recognised only
    /// to name them in errors).
    pub fn readable(self) -> bool {
        !matches!(
            self,
            FileType::Gif | FileType::Bmp | FileType::Pdf | FileType::Zip
        )
    }

    pub fn family(self) -> Family {
        match self {
            FileType::Png
            | FileType::Jpeg
            | FileType::Tiff
            | FileType::WebP
            | FileType::Gif
            | FileType::Bmp => Family::Image,
            FileType::Wav | FileType::Flac | FileType::Mp3 | FileType::Ogg => Family::Audio,
            FileType::Npy => Family::Tensor,
            FileType::Pdf | FileType::Zip => Family::Other,
        }
    }
}

/// The image types a model with `[input] kind = "image"` takes.
pub const IMAGE_TYPES: &str = "PNG, JPEG, TIFF or WebP";
/// The audio types a model with `[input] kind = "audio"` takes.
pub const AUDIO_TYPES: &str = "WAV, FLAC, MP3 or Ogg Vorbis";

/// The type of `bytes`, or `None` when no known signature matches.
pub fn sniff(bytes: &[u8]) -> Option<FileType> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    let riff = |form: &[u8]| starts(b"RIFF") && bytes.get(8..12) == Some(form);
    Some(if starts(b"\x89PNG\r\n\x1a\n") {
        FileType::Png
    } else if starts(&[0xFF, 0xD8, 0xFF]) {
        FileType::Jpeg
    } else if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        FileType::Tiff
    } else if riff(b"WEBP") {
        FileType::WebP
    } else if riff(b"WAVE") {
        FileType::Wav
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        FileType::Gif
    } else if starts(b"BM") && bytes.len() >= 26 {
        FileType::Bmp
    } else if starts(b"fLaC") {
        FileType::Flac
    } else if starts(b"OggS") {
        FileType::Ogg
    } else if starts(b"ID3") || is_mpeg_audio_frame(bytes) {
        FileType::Mp3
    } else if starts(b"\x93NUMPY") {
        FileType::Npy
    } else if starts(b"%PDF-") {
        FileType::Pdf
    } else if starts(b"PK\x03\x04") {
        FileType::Zip
    } else {
        return None;
    })
}

/// An MPEG audio frame header: 11 sync bits, a valid version, layer,
/// bitrate and sample rate (AAC's ADTS headers, layer 0, do not match).
fn is_mpeg_audio_frame(bytes: &[u8]) -> bool {
    let [a, b, c, ..] = bytes else {
        return false;
    };
    let version = (b >> 3) & 0b11;
    let layer = (b >> 1) & 0b11;
    let bitrate = c >> 4;
    let rate = (c >> 2) & 0b11;
    *a == 0xFF
        && b & 0xE0 == 0xE0
        && version != 0b01
        && layer != 0
        && bitrate != 0xF
        && rate != 0b11
}

/// Describes bytes no signature matched, for an error message.
pub fn describe_unknown(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "the file is empty".into();
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let text = std::str::from_utf8(&bytes[..bytes.len().min(64)]).is_ok();
    format!(
        "the file type is not recognised from its first bytes ({}){}",
        head.join(" "),
        if text { "; it looks like text" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_recognised() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some(FileType::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(FileType::Jpeg));
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Some(FileType::Tiff));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8L"), Some(FileType::WebP));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), Some(FileType::Wav));
        assert_eq!(sniff(b"fLaC\0\0\0\x22"), Some(FileType::Flac));
        assert_eq!(sniff(b"ID3\x04\0\0"), Some(FileType::Mp3));
        assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), Some(FileType::Mp3));
        assert_eq!(sniff(b"OggS\0\x02"), Some(FileType::Ogg));
        assert_eq!(sniff(b"GIF89a.."), Some(FileType::Gif));
        assert_eq!(sniff(b"\x93NUMPY\x01\0"), Some(FileType::Npy));
    }

    #[test]
    fn lookalikes_are_not_matched() {
        // AAC ADTS (layer 0) and a bare sync word with a bad bitrate.
        assert_eq!(sniff(&[0xFF, 0xF1, 0x50, 0x80]), None);
        assert_eq!(sniff(&[0xFF, 0xFB, 0xF0, 0x00]), None);
        assert_eq!(sniff(b"RIFF\x10\0\0\0AVI LIST"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(describe_unknown(b""), "the file is empty");
        assert!(describe_unknown(b"hello world").contains("text"));
    }
}
