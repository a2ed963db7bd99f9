//! ONNX string tensors that hold any bytes. An ONNX Runtime string element
//! is a `std::string`, which holds NUL bytes and bytes that are not UTF-8
//! as well as text; `ort`'s own constructor goes through C strings (NUL
//! ends an element) and its extraction through `String` (UTF-8 only). So
//! BYTES elements go in through `GetResizedStringTensorElementBuffer` (a
//! buffer of the element's length, filled here) and come out through
//! `GetStringTensorContent` (the bytes and their offsets), both of ONNX
//! Runtime's C API: Triton's clients send strings with NUL bytes and binary
//! blobs, and an identity model must give them back unchanged.

use std::ffi::CStr;

use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};
use ort::AsPointer;

/// `Err` with ONNX Runtime's message when `status` is one.
fn checked(status: ort::sys::OrtStatusPtr) -> ort::Result<()> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API, read then released once.
    let message = unsafe {
        let message = CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        message
    };
    Err(ort::Error::new(message))
}

/// A string tensor of `shape` whose elements are `elements`, byte for byte.
pub fn string_tensor(shape: Vec<i64>, elements: &[&[u8]]) -> ort::Result<DynValue> {
    // Empty elements first (a C string each is fine), then each resized
    // to its bytes and filled.
    let empty = vec![""; elements.len()];
    let value: DynValue = OrtTensor::from_string_array((shape, &empty[..]))?.into();
    let api = ort::api();
    for (index, bytes) in elements.iter().enumerate() {
        let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: `value` is a string tensor of `elements.len()` elements
        // that this function owns; the buffer ONNX Runtime hands back holds
        // `bytes.len()` bytes and is written before anything else runs.
        unsafe {
            checked((api.GetResizedStringTensorElementBuffer)(
                value.ptr().cast_mut(),
                index,
                bytes.len(),
                &mut buffer,
            ))?;
            if !bytes.is_empty() {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len());
            }
        }
    }
    Ok(value)
}

/// The shape and the elements (Gantry's BYTES layout: each a 4-byte
/// little-endian length, then its bytes) of the string tensor `value`.
pub fn string_elements(value: &DynValue) -> ort::Result<(Vec<usize>, Vec<u8>)> {
    let shape: Vec<usize> = match value.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::String,
            shape,
            ..
        } => shape.iter().map(|&d| d.max(0) as usize).collect(),
        other => {
            return Err(ort::Error::new(format!(
                "expected a string tensor, got {other:?}"
            )))
        }
    };
    let count: usize = shape.iter().product();
    let api = ort::api();
    let mut total = 0usize;
    // SAFETY: `value` is a string tensor of `count` elements (checked
    // above); the content buffer holds `total` bytes and the offsets
    // `count`, as ONNX Runtime asks.
    let (content, mut offsets) = unsafe {
        checked((api.GetStringTensorDataLength)(value.ptr(), &mut total))?;
        let mut content = vec![0u8; total];
        let mut offsets = vec![0usize; count + 1];
        if count > 0 {
            checked((api.GetStringTensorContent)(
                value.ptr(),
                content.as_mut_ptr().cast(),
                total,
                offsets.as_mut_ptr(),
                count,
            ))?;
        }
        (content, offsets)
    };
    offsets[count] = total;
    let elements = offsets.windows(2).map(|w| &content[w[0]..w[1]]);
    Ok((shape, crate::tensor::bytes_data(elements)))
}
