//! Triton's classification extension: an output requested with
//! `parameters.classification = k` is answered as its top `k` classes
//! instead of its scores, each a BYTES element `"score:index"` or, when the
//! model has labels, `"score:index:label"` (score with six decimals, as
//! Triton writes it).
//!
//! An output of shape `[n, c...]` is `n` rows of `c...` classes (flattened)
//! and becomes `[n, k]`; a one-dimensional output is one row and becomes
//! `[k]`. `k` beyond the number of classes gives every class. Ties keep the
//! lower index first.

use gantry_actors::tensor::{bytes_data, DataType, Tensor};
use half::{bf16, f16};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The top `k` classes of every row of `scores`; `labels` name the classes
/// when there is one per class. Errors say why the output cannot be
/// classified.
pub fn top_classes(scores: &Tensor, k: usize, labels: Option<&[String]>) -> Result<Tensor, String> {
    if k == 0 {
        return Err("classification must ask for at least one class".into());
    }
    let values = as_f64(scores)
        .ok_or_else(|| format!("a {} output has no scores to classify", scores.dtype))?;
    let (rows, shape_rows) = match scores.shape.as_slice() {
        [] => return Err("a scalar output has no classes to classify".into()),
        [_] => (1, None),
        [n, ..] => (*n, Some(*n)),
    };
    let classes = values.len().checked_div(rows).unwrap_or(0);
    let labels = labels.filter(|l| l.len() == classes);
    let take = k.min(classes);
    let mut elements: Vec<String> = Vec::with_capacity(rows * take);
    for row in values.chunks(classes.max(1)).take(rows) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Descending score, NaN last, lower index first on ties.
        order.sort_by(|&a, &b| {
            let (x, y) = (row[a], row[b]);
            match (x.is_nan(), y.is_nan()) {
                (true, true) => a.cmp(&b),
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => y.total_cmp(&x).then(a.cmp(&b)),
            }
        });
        for &index in order.iter().take(take) {
            elements.push(match labels {
                Some(labels) => format!("{:.6}:{index}:{}", row[index], labels[index]),
                None => format!("{:.6}:{index}", row[index]),
            });
        }
    }
    let shape = match shape_rows {
        Some(n) => vec![n, take],
        None => vec![take],
    };
    Tensor::new(
        DataType::Bytes,
        shape,
        bytes_data(elements.iter().map(String::as_bytes)),
    )
    .map_err(|e| e.to_string())
}

/// Every element as `f64`; `None` for BOOL and BYTES.
fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    macro_rules! each {
        ($ty:ty, $n:expr) => {
            t.data
                .chunks_exact($n)
                .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunk size")) as f64)
                .collect()
        };
    }
    Some(match t.dtype {
        DataType::Bool | DataType::Bytes => return None,
        DataType::Uint8 => each!(u8, 1),
        DataType::Uint16 => each!(u16, 2),
        DataType::Uint32 => each!(u32, 4),
        DataType::Uint64 => each!(u64, 8),
        DataType::Int8 => each!(i8, 1),
        DataType::Int16 => each!(i16, 2),
        DataType::Int32 => each!(i32, 4),
        DataType::Int64 => each!(i64, 8),
        DataType::Fp32 => each!(f32, 4),
        DataType::Fp64 => each!(f64, 8),
        DataType::Fp16 => t
            .data
            .chunks_exact(2)
            .map(|c| f64::from(f16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DataType::Bf16 => t
            .data
            .chunks_exact(2)
            .map(|c| f64::from(bf16::from_le_bytes([c[0], c[1]])))
            .collect(),
    })
}

/// `parameters.classification` of a requested output: a positive integer.
pub fn class_count(
    parameters: &Map<String, Value>,
    output: &str,
) -> Result<Option<usize>, ApiError> {
    match parameters.get("classification") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&k| k > 0)
            .map(|k| Some(k as usize))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "output '{output}': parameters.classification must be a positive integer, not {v}"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(t: &Tensor) -> Vec<String> {
        t.bytes_elements()
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn rows_become_their_top_classes() {
        let scores = Tensor::from_f32(vec![2, 3], &[0.1, 0.7, 0.2, 0.5, 0.5, f32::NAN]).unwrap();
        let top = top_classes(&scores, 2, None).unwrap();
        assert_eq!(top.shape, vec![2, 2]);
        assert_eq!(
            strings(&top),
            ["0.700000:1", "0.200000:2", "0.500000:0", "0.500000:1"]
        );
        let labels: Vec<String> = ["cat", "dog", "owl"].map(String::from).to_vec();
        let top = top_classes(&scores, 9, Some(&labels)).unwrap();
        assert_eq!(top.shape, vec![2, 3]);
        assert_eq!(strings(&top)[0], "0.700000:1:dog");
        assert_eq!(strings(&top)[5], "NaN:2:owl");
        let one = Tensor::from_f32(vec![3], &[1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            strings(&top_classes(&one, 1, None).unwrap()),
            ["3.000000:1"]
        );
    }

    #[test]
    fn what_cannot_be_classified_says_why() {
        let scalar = Tensor::from_f32(vec![], &[1.0]).unwrap();
        assert!(top_classes(&scalar, 1, None)
            .unwrap_err()
            .contains("scalar"));
        let flags = Tensor::new(DataType::Bool, vec![2], vec![0, 1]).unwrap();
        assert!(top_classes(&flags, 1, None).unwrap_err().contains("BOOL"));
        let scores = Tensor::from_f32(vec![1, 2], &[1.0, 2.0]).unwrap();
        assert!(top_classes(&scores, 0, None).is_err());
    }
}
