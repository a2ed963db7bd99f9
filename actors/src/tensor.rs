//! Tensors as the actor system moves them: a datatype, a shape and the raw
//! little-endian bytes of a row-major array.
//!
//! Keeping the payload as bytes makes batching dtype-agnostic: stacking
//! requests along the batch dimension and splitting outputs back are plain
//! byte copies, whatever the element type.
//!
//! BYTES (strings) elements vary in length: a BYTES tensor's data is its
//! elements in row-major order, each a little-endian `u32` length and that
//! many bytes (the layout of Triton's binary tensor extension), so stacking
//! is still a byte copy and splitting walks the length prefixes.

use std::fmt;

/// Element types Gantry serves, named as the KServe v2 protocol names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp32,
    Fp64,
    Fp16,
    Bf16,
    Bytes,
}

impl DataType {
    /// Every supported datatype, for listings and error messages. New ones
    /// go at the end: the result cache stores a datatype as its index here.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Bytes,
    ];

    /// Size of one element in bytes (BOOL is one byte, 0 or 1). BYTES
    /// elements vary: 4 is the size of an empty one (its length prefix),
    /// the least any element takes.
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 | DataType::Bytes => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    /// True for BYTES, whose elements vary in length.
    pub fn is_variable(self) -> bool {
        self == DataType::Bytes
    }

    /// The KServe v2 datatype name (`FP32`, `INT64`, `BOOL`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a KServe v2 datatype name; `None` for unknown or unsupported ones.
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dense row-major tensor with little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A prediction's outputs by name, in signature order: shared (not
/// copied) by the answer, the result cache and coalesced requests.
pub type Outputs = std::sync::Arc<Vec<(String, Tensor)>>;

/// Why a tensor could not be built from the given parts.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("shape {shape:?} of {dtype} needs {expected} bytes, got {actual}")]
pub struct TensorSizeError {
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub expected: usize,
    pub actual: usize,
}

/// Why BYTES data does not hold the elements its shape needs.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BytesLayoutError {
    #[error("shape {shape:?} of BYTES needs {expected} elements, the data holds {found} and then ends inside a length prefix or an element")]
    Truncated {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("shape {shape:?} of BYTES needs {expected} elements, {extra} bytes follow them")]
    Trailing {
        shape: Vec<usize>,
        expected: usize,
        extra: usize,
    },
}

/// The byte offset where each of `count` BYTES elements ends, walking the
/// length prefixes; `None` when `data` ends inside one.
fn bytes_element_ends(data: &[u8], count: usize) -> Result<Vec<usize>, usize> {
    let mut ends = Vec::with_capacity(count.min(data.len() / 4));
    let mut at = 0usize;
    while ends.len() < count {
        let Some(prefix) = data.get(at..at + 4) else {
            return Err(ends.len());
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let end = at + 4 + len;
        if end > data.len() {
            return Err(ends.len());
        }
        ends.push(end);
        at = end;
    }
    Ok(ends)
}

/// Serializes strings as BYTES data: each a `u32` length and its bytes.
pub fn bytes_data<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut data = Vec::new();
    for element in elements {
        data.extend_from_slice(&(element.len() as u32).to_le_bytes());
        data.extend_from_slice(element);
    }
    data
}

/// A tensor construction failed: wrong byte length, or BYTES data that
/// does not hold its elements.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error(transparent)]
    Size(#[from] TensorSizeError),
    #[error(transparent)]
    Bytes(#[from] BytesLayoutError),
}

impl Tensor {
    /// Builds a tensor, checking that the byte length matches the shape
    /// (for BYTES, that the data holds exactly its elements).
    pub fn new(dtype: DataType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, TensorError> {
        if dtype.is_variable() {
            let expected = element_count(&shape);
            let ends = bytes_element_ends(&data, expected).map_err(|found| {
                BytesLayoutError::Truncated {
                    shape: shape.clone(),
                    expected,
                    found,
                }
            })?;
            let used = ends.last().copied().unwrap_or(0);
            if used != data.len() {
                return Err(BytesLayoutError::Trailing {
                    shape,
                    expected,
                    extra: data.len() - used,
                }
                .into());
            }
            return Ok(Tensor { dtype, shape, data });
        }
        let expected = element_count(&shape).saturating_mul(dtype.size());
        if expected != data.len() {
            return Err(TensorSizeError {
                dtype,
                shape,
                expected,
                actual: data.len(),
            }
            .into());
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// The elements of a BYTES tensor; `None` for other datatypes.
    pub fn bytes_elements(&self) -> Option<Vec<&[u8]>> {
        if !self.dtype.is_variable() {
            return None;
        }
        let ends = bytes_element_ends(&self.data, self.len()).ok()?;
        let mut start = 0;
        Some(
            ends.into_iter()
                .map(|end| {
                    let element = &self.data[start + 4..end];
                    start = end;
                    element
                })
                .collect(),
        )
    }

    /// A zero-filled tensor (used for warmup runs); BYTES elements empty.
    pub fn zeros(dtype: DataType, shape: Vec<usize>) -> Self {
        let len = element_count(&shape) * dtype.size();
        Tensor {
            dtype,
            shape,
            data: vec![0; len],
        }
    }

    /// The place of an optional input a request left out: no shape and no
    /// bytes (a real scalar has one element). It travels with the request's
    /// tensors so each keeps its position; the engine leaves it unbound.
    pub fn absent(dtype: DataType) -> Self {
        Tensor {
            dtype,
            shape: Vec::new(),
            data: Vec::new(),
        }
    }

    /// True for [`Tensor::absent`]'s placeholder.
    pub fn is_absent(&self) -> bool {
        self.shape.is_empty() && self.data.is_empty()
    }

    /// Builds an FP32 tensor from values (tests and tools).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self, TensorError> {
        Tensor::new(DataType::Fp32, shape, bytemuck::cast_slice(values).to_vec())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        element_count(&self.shape)
    }

    /// True when the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the elements as `f32` when the tensor is FP32.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DataType::Fp32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    /// Leading (batch) dimension, if the tensor has one.
    pub fn batch_len(&self) -> Option<usize> {
        self.shape.first().copied()
    }

    /// Stacks tensors along dimension 0. All parts must share dtype and the
    /// trailing dimensions; the caller groups requests so that they do.
    pub fn concat_batch(parts: &[&Tensor]) -> Tensor {
        let first = parts[0];
        if parts.len() == 1 || first.is_absent() {
            // Absent in one, absent in all: the queue groups by it.
            return first.clone();
        }
        let rows: usize = parts.iter().map(|t| t.shape[0]).sum();
        let mut shape = first.shape.clone();
        shape[0] = rows;
        let mut data = Vec::with_capacity(parts.iter().map(|t| t.data.len()).sum());
        for part in parts {
            data.extend_from_slice(&part.data);
        }
        Tensor {
            dtype: first.dtype,
            shape,
            data,
        }
    }

    /// Splits along dimension 0 into consecutive pieces of `rows[i]` rows.
    /// Returns `None` when the tensor has no batch dimension or the row counts
    /// do not add up to it.
    pub fn split_batch(self, rows: &[usize]) -> Option<Vec<Tensor>> {
        let total = *self.shape.first()?;
        if rows.iter().sum::<usize>() != total {
            return None;
        }
        if rows.len() == 1 {
            return Some(vec![self]);
        }
        // Where each row ends: fixed strides, or for BYTES the end of each
        // row's last element.
        let row_ends: Vec<usize> = if self.dtype.is_variable() {
            let per_row = element_count(&self.shape[1..]);
            let ends = bytes_element_ends(&self.data, self.len()).ok()?;
            (1..=total)
                .map(|r| {
                    if r * per_row == 0 {
                        0
                    } else {
                        ends[r * per_row - 1]
                    }
                })
                .collect()
        } else {
            let row_bytes = self.data.len().checked_div(total).unwrap_or(0);
            (1..=total).map(|r| r * row_bytes).collect()
        };
        let mut out = Vec::with_capacity(rows.len());
        let mut offset = 0;
        let mut row = 0;
        for &n in rows {
            let mut shape = self.shape.clone();
            shape[0] = n;
            row += n;
            let end = if row == 0 { 0 } else { row_ends[row - 1] };
            out.push(Tensor {
                dtype: self.dtype,
                shape,
                data: self.data[offset..end].to_vec(),
            });
            offset = end;
        }
        Some(out)
    }
}

/// Product of the dimensions (1 for a scalar). Saturates instead of
/// overflowing, so an absurd shape from a client can never match a real
/// payload length.
pub fn element_count(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("FP8"), None);
        assert_eq!(DataType::parse("fp32"), None);
    }

    #[test]
    fn new_checks_byte_length() {
        assert!(Tensor::new(DataType::Fp32, vec![2, 2], vec![0; 16]).is_ok());
        let err = Tensor::new(DataType::Fp32, vec![2, 2], vec![0; 15]).unwrap_err();
        assert!(matches!(
            err,
            TensorError::Size(TensorSizeError { expected: 16, .. })
        ));
    }

    #[test]
    fn concat_then_split_restores_parts() {
        let a = Tensor::from_f32(vec![1, 3], &[1.0, 2.0, 3.0]).unwrap();
        let b = Tensor::from_f32(vec![2, 3], &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]).unwrap();
        let joined = Tensor::concat_batch(&[&a, &b]);
        assert_eq!(joined.shape, vec![3, 3]);
        let parts = joined.split_batch(&[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn bytes_tensors_check_their_layout_and_split_by_rows() {
        let words: [&[u8]; 6] = [b"a", b"", b"ccc", b"dd", b"\xff\x00", b"zz"];
        let data = bytes_data(words);
        let t = Tensor::new(DataType::Bytes, vec![3, 2], data.clone()).unwrap();
        assert_eq!(t.bytes_elements().unwrap(), words);
        let parts = t.clone().split_batch(&[1, 2]).unwrap();
        assert_eq!(parts[0].bytes_elements().unwrap(), &words[..2]);
        assert_eq!(parts[1].bytes_elements().unwrap(), &words[2..]);
        let joined = Tensor::concat_batch(&[&parts[0], &parts[1]]);
        assert_eq!(joined, t);
        assert!(matches!(
            Tensor::new(DataType::Bytes, vec![7], data.clone()),
            Err(TensorError::Bytes(BytesLayoutError::Truncated {
                found: 6,
                ..
            }))
        ));
        assert!(matches!(
            Tensor::new(DataType::Bytes, vec![5], data.clone()),
            Err(TensorError::Bytes(BytesLayoutError::Trailing {
                extra: 6,
                ..
            }))
        ));
        let mut lying = data;
        lying[0] = 200;
        assert!(Tensor::new(DataType::Bytes, vec![6], lying).is_err());
        let empty = Tensor::zeros(DataType::Bytes, vec![2, 2]);
        assert_eq!(empty.bytes_elements().unwrap(), vec![b"" as &[u8]; 4]);
    }

    #[test]
    fn absurd_shapes_never_overflow() {
        let huge = vec![usize::MAX / 2, 3];
        assert_eq!(element_count(&huge), usize::MAX);
        assert!(Tensor::new(DataType::Fp32, huge, vec![0; 4]).is_err());
    }

    #[test]
    fn split_rejects_wrong_row_counts() {
        let t = Tensor::from_f32(vec![2, 1], &[1.0, 2.0]).unwrap();
        assert!(t.clone().split_batch(&[1, 2]).is_none());
        let scalar = Tensor::from_f32(vec![], &[1.0]).unwrap();
        assert!(scalar.split_batch(&[1]).is_none());
    }
}
