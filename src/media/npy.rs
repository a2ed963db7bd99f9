//! Reading NumPy `.npy` files (format versions 1 to 3) into tensors: the
//! header gives datatype, byte order and shape; the payload is taken as is,
//! byte-swapped when it is big-endian.

use gantry_actors::tensor::{element_count, DataType, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Why a file could not be read as `.npy`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NpyError {
    /// Not an `.npy` file at all.
    #[error("the file is not a NumPy .npy array (its first bytes are not \\x93NUMPY)")]
    NotNpy,
    /// An `.npy` file that is damaged or uses what Gantry does not read.
    #[error("invalid .npy file: {0}")]
    Invalid(String),
}

/// Parses a whole `.npy` file.
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, NpyError> {
    if !bytes.starts_with(MAGIC) {
        return Err(NpyError::NotNpy);
    }
    let invalid = |why: &str| NpyError::Invalid(why.to_string());
    let major = *bytes.get(6).ok_or_else(|| invalid("truncated header"))?;
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes(array(bytes, 8)?) as usize, 10usize),
        2 | 3 => (u32::from_le_bytes(array(bytes, 8)?) as usize, 12),
        v => {
            return Err(NpyError::Invalid(format!(
                "format version {v} is not supported"
            )))
        }
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| invalid("truncated header"))?;
    let header = std::str::from_utf8(&bytes[header_start..header_end])
        .map_err(|_| invalid("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| invalid("header lacks 'descr'"))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| invalid("header lacks 'fortran_order'"))?;
    let shape_text = dict_value(header, "shape").ok_or_else(|| invalid("header lacks 'shape'"))?;
    if fortran.starts_with("True") {
        return Err(invalid(
            "Fortran-order arrays are not supported; save with np.ascontiguousarray(a)",
        ));
    }
    let (dtype, big_endian) = parse_descr(descr.trim_matches(|c| c == '\'' || c == '"'))?;
    let shape = parse_shape(shape_text)?;
    let expected = element_count(&shape)
        .checked_mul(dtype.size())
        .ok_or_else(|| invalid("shape is too large"))?;
    let payload = &bytes[header_end..];
    if payload.len() != expected {
        return Err(NpyError::Invalid(format!(
            "shape {shape:?} of {dtype} needs {expected} bytes of data, the file has {}",
            payload.len()
        )));
    }
    if dtype == DataType::Bool && payload.iter().any(|&b| b > 1) {
        return Err(invalid("a bool array holds a byte other than 0 or 1"));
    }
    let mut data = payload.to_vec();
    if big_endian && dtype.size() > 1 {
        for element in data.chunks_exact_mut(dtype.size()) {
            element.reverse();
        }
    }
    Tensor::new(dtype, shape, data).map_err(|e| NpyError::Invalid(e.to_string()))
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], NpyError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| NpyError::Invalid("truncated header".into()))
}

/// The text of `'key': value` in the header's Python dict literal, up to
/// the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_descr(descr: &str) -> Result<(DataType, bool), NpyError> {
    let mut chars = descr.chars();
    let order = chars.next().unwrap_or('?');
    let kind = chars.as_str();
    let big_endian = match order {
        '<' | '|' | '=' => false,
        '>' => true,
        _ => {
            return Err(NpyError::Invalid(format!(
                "datatype '{descr}' is not supported"
            )))
        }
    };
    let dtype = match kind {
        "b1" => DataType::Bool,
        "u1" => DataType::Uint8,
        "u2" => DataType::Uint16,
        "u4" => DataType::Uint32,
        "u8" => DataType::Uint64,
        "i1" => DataType::Int8,
        "i2" => DataType::Int16,
        "i4" => DataType::Int32,
        "i8" => DataType::Int64,
        "f4" => DataType::Fp32,
        "f8" => DataType::Fp64,
        "f2" => DataType::Fp16,
        _ => {
            return Err(NpyError::Invalid(format!(
                "datatype '{descr}' is not supported"
            )))
        }
    };
    Ok((dtype, big_endian))
}

fn parse_shape(text: &str) -> Result<Vec<usize>, NpyError> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| NpyError::Invalid(format!("shape '{text}' is not a tuple")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| NpyError::Invalid(format!("shape '{text}' is not a tuple of sizes")))
        })
        .collect()
}

/// Writes a tensor as a version 1 `.npy` file (tests, tools, load generators).
///
/// # Panics
/// For BF16 and BYTES, which `.npy` has no datatype for.
pub fn write_npy(tensor: &Tensor) -> Vec<u8> {
    let descr = match tensor.dtype {
        DataType::Bool => "|b1",
        DataType::Uint8 => "|u1",
        DataType::Uint16 => "<u2",
        DataType::Uint32 => "<u4",
        DataType::Uint64 => "<u8",
        DataType::Int8 => "|i1",
        DataType::Int16 => "<i2",
        DataType::Int32 => "<i4",
        DataType::Int64 => "<i8",
        DataType::Fp32 => "<f4",
        DataType::Fp64 => "<f8",
        DataType::Fp16 => "<f2",
        DataType::Bf16 | DataType::Bytes => {
            panic!("a .npy file holds no {}", tensor.dtype)
        }
    };
    let dims: Vec<String> = tensor.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + tensor.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&tensor.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_datatype_and_scalars() {
        let written = DataType::ALL
            .into_iter()
            .filter(|d| !matches!(d, DataType::Bf16 | DataType::Bytes));
        for dtype in written {
            for shape in [vec![2, 3], vec![4], vec![]] {
                let data: Vec<u8> = (0..element_count(&shape) * dtype.size())
                    .map(|i| {
                        if dtype == DataType::Bool {
                            (i % 2) as u8
                        } else {
                            i as u8
                        }
                    })
                    .collect();
                let t = Tensor::new(dtype, shape.clone(), data).unwrap();
                assert_eq!(read_npy(&write_npy(&t)).unwrap(), t, "{dtype} {shape:?}");
            }
        }
    }

    #[test]
    fn reads_numpy_header_and_big_endian() {
        // Header as numpy writes it for np.array([1, 2], dtype='>i2').
        let header = "{'descr': '>i2', 'fortran_order': False, 'shape': (2,), }";
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend_from_slice(&(header.len() as u16).to_le_bytes());
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&[0, 1, 0, 2]);
        let t = read_npy(&file).unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DataType::Int16, vec![2]));
        assert_eq!(t.data, vec![1, 0, 2, 0]);
    }

    #[test]
    fn rejects_damaged_files() {
        assert_eq!(read_npy(b"PNG..."), Err(NpyError::NotNpy));
        let t = Tensor::zeros(DataType::Fp32, vec![2, 2]);
        let file = write_npy(&t);
        let truncated = read_npy(&file[..file.len() - 1]).unwrap_err();
        assert!(
            truncated.to_string().contains("needs 16 bytes"),
            "{truncated}"
        );
        assert!(read_npy(&file[..9]).is_err());
        let at = file.windows(3).position(|w| w == b"<f4").unwrap();
        let mut complex = file.clone();
        complex[at..at + 3].copy_from_slice(b"<c8");
        let err = read_npy(&complex).unwrap_err();
        assert!(err.to_string().contains("'<c8' is not supported"), "{err}");
        let bools = write_npy(&Tensor::new(DataType::Bool, vec![2], vec![1, 2]).unwrap());
        let err = read_npy(&bools).unwrap_err();
        assert!(err.to_string().contains("other than 0 or 1"), "{err}");
    }
}
