//! The cache key: SHA-256 over the model's name and version and every input's
//! name, datatype, shape and bytes (inputs in name order), each field length-
//! prefixed so that no two different requests hash the same bytes.

use gantry_actors::Tensor;
use sha2::{Digest, Sha256};

/// A request's identity for caching and for the prediction log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn of(model: &str, version: &str, inputs: &[(String, Tensor)]) -> CacheKey {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(model.as_bytes());
        field(version.as_bytes());
        let mut ordered: Vec<&(String, Tensor)> = inputs.iter().collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, tensor) in ordered {
            field(name.as_bytes());
            field(tensor.dtype.as_str().as_bytes());
            let dims: Vec<u8> = tensor
                .shape
                .iter()
                .flat_map(|d| (*d as u64).to_le_bytes())
                .collect();
            field(&dims);
            field(&tensor.data);
        }
        CacheKey(hasher.finalize().into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_actors::DataType;

    fn t(shape: Vec<usize>, data: Vec<u8>) -> Tensor {
        Tensor::new(DataType::Uint8, shape, data).unwrap()
    }

    #[test]
    fn order_of_inputs_does_not_matter_but_everything_else_does() {
        let a = ("a".to_string(), t(vec![2], vec![1, 2]));
        let b = ("b".to_string(), t(vec![1], vec![3]));
        let base = CacheKey::of("m", "v1", &[a.clone(), b.clone()]);
        assert_eq!(base, CacheKey::of("m", "v1", &[b.clone(), a.clone()]));
        let variants = [
            CacheKey::of("m2", "v1", &[a.clone(), b.clone()]),
            CacheKey::of("m", "v2", &[a.clone(), b.clone()]),
            CacheKey::of("m", "v1", &[("c".into(), a.1.clone()), b.clone()]),
            CacheKey::of(
                "m",
                "v1",
                &[("a".into(), t(vec![1, 2], vec![1, 2])), b.clone()],
            ),
            CacheKey::of(
                "m",
                "v1",
                &[("a".into(), t(vec![2], vec![1, 9])), b.clone()],
            ),
            CacheKey::of(
                "m",
                "v1",
                &[
                    (
                        "a".into(),
                        Tensor::new(DataType::Int8, vec![2], vec![1, 2]).unwrap(),
                    ),
                    b,
                ],
            ),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
        assert_eq!(base.hex().len(), 64);
    }
}
