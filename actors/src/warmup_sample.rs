//! A model's own warmup samples (Triton's `model_warmup`): named inputs of
//! zeros, random values or a file's bytes, run `count` times at a batch
//! size before the replica is ready, in place of the default warmup on
//! zeros. A sample that fails fails the load, as in Triton.

use crate::signature::ModelSignature;
use crate::tensor::{bytes_data, DataType, Tensor};

/// One warmup sample.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupSample {
    pub name: String,
    /// Items in the batch dimension (batched models).
    pub batch_size: usize,
    /// Runs of it.
    pub count: u32,
    pub inputs: Vec<WarmupInput>,
}

/// One input of a sample: its datatype, its shape per item and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupInput {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<usize>,
    pub data: WarmupData,
}

/// Where a sample input's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WarmupData {
    Zero,
    /// Numbers in [0, 1) (floats), 0-127 (integers), short letters (BYTES).
    Random,
    /// The tensor's raw bytes (BYTES: Triton's length-prefixed elements),
    /// read from the model's `warmup/` folder.
    File(Vec<u8>),
}

impl WarmupSample {
    /// The sample's tensors in the model's input order, or why it does not
    /// fit the model.
    pub fn tensors(&self, signature: &ModelSignature) -> Result<Vec<Tensor>, String> {
        let batched = signature.is_batched();
        signature
            .inputs
            .iter()
            .map(|spec| {
                let Some(input) = self.inputs.iter().find(|i| i.name == spec.name) else {
                    return if spec.optional {
                        Ok(Tensor::absent(spec.dtype))
                    } else {
                        Err(format!("gives no input '{}'", spec.name))
                    };
                };
                if input.dtype != spec.dtype {
                    return Err(format!(
                        "input '{}' is {}, the model takes {}",
                        input.name, input.dtype, spec.dtype
                    ));
                }
                let shape: Vec<usize> = batched
                    .then_some(self.batch_size.max(1))
                    .into_iter()
                    .chain(input.dims.iter().copied())
                    .collect();
                input.tensor(shape)
            })
            .collect()
    }
}

impl WarmupInput {
    fn tensor(&self, shape: Vec<usize>) -> Result<Tensor, String> {
        let count: usize = shape.iter().product();
        match &self.data {
            WarmupData::Zero => Ok(Tensor::zeros(self.dtype, shape)),
            WarmupData::Random => Ok(Tensor {
                dtype: self.dtype,
                data: random_data(self.dtype, count),
                shape,
            }),
            WarmupData::File(bytes) => Tensor::new(self.dtype, shape, bytes.clone())
                .map_err(|e| format!("input '{}' from its file: {e}", self.name)),
        }
    }
}

/// `count` random elements of `dtype`, in Gantry's tensor layout.
fn random_data(dtype: DataType, count: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    match dtype {
        DataType::Bytes => {
            let words: Vec<Vec<u8>> = (0..count)
                .map(|_| (0..4).map(|_| rng.u8(b'a'..=b'z')).collect())
                .collect();
            bytes_data(words.iter().map(Vec::as_slice))
        }
        DataType::Fp32 => (0..count).flat_map(|_| rng.f32().to_le_bytes()).collect(),
        DataType::Fp64 => (0..count).flat_map(|_| rng.f64().to_le_bytes()).collect(),
        DataType::Fp16 => (0..count)
            .flat_map(|_| half::f16::from_f32(rng.f32()).to_le_bytes())
            .collect(),
        DataType::Bf16 => (0..count)
            .flat_map(|_| half::bf16::from_f32(rng.f32()).to_le_bytes())
            .collect(),
        DataType::Bool => (0..count).map(|_| u8::from(rng.bool())).collect(),
        // Integers: small non-negative values, each in the type's width.
        other => (0..count)
            .flat_map(|_| {
                let mut element = vec![0u8; other.size()];
                element[0] = rng.u8(0..128);
                element
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::TensorSpec;

    fn spec(name: &str, dtype: DataType, dims: Vec<Option<usize>>) -> TensorSpec {
        TensorSpec::new(name, dtype, dims)
    }

    fn input(name: &str, dtype: DataType, dims: Vec<usize>, data: WarmupData) -> WarmupInput {
        WarmupInput {
            name: name.into(),
            dtype,
            dims,
            data,
        }
    }

    #[test]
    fn samples_become_the_models_inputs_in_order() {
        let signature = ModelSignature {
            inputs: vec![
                spec("a", DataType::Fp32, vec![None, Some(2)]),
                spec("t", DataType::Bytes, vec![None, Some(1)]),
            ],
            outputs: vec![],
            unbatched: false,
        };
        let sample = WarmupSample {
            name: "w".into(),
            batch_size: 3,
            count: 1,
            inputs: vec![
                input("t", DataType::Bytes, vec![1], WarmupData::Random),
                input("a", DataType::Fp32, vec![2], WarmupData::File(vec![0; 24])),
            ],
        };
        let tensors = sample.tensors(&signature).unwrap();
        assert_eq!(tensors[0].shape, vec![3, 2]);
        assert_eq!(tensors[1].shape, vec![3, 1]);
        assert_eq!(tensors[1].bytes_elements().unwrap().len(), 3);
        let short = WarmupSample {
            inputs: vec![input("a", DataType::Fp32, vec![2], WarmupData::Zero)],
            ..sample.clone()
        };
        assert!(short
            .tensors(&signature)
            .unwrap_err()
            .contains("no input 't'"));
        let wrong = WarmupSample {
            inputs: vec![
                input("a", DataType::Fp32, vec![2], WarmupData::File(vec![0; 8])),
                input("t", DataType::Bytes, vec![1], WarmupData::Zero),
            ],
            ..sample
        };
        assert!(wrong
            .tensors(&signature)
            .unwrap_err()
            .contains("from its file"));
    }

    #[test]
    fn random_values_stay_in_range() {
        let floats = random_data(DataType::Fp32, 100);
        assert!(floats
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .all(|v| (0.0..1.0).contains(&v)));
        let ints = random_data(DataType::Int64, 10);
        assert_eq!(ints.len(), 80);
    }
}
