//! A replica's warmup: inferences on zeros at batch size 1 and at the
//! model's cap, so the first requests do not pay for the runtime's lazy
//! allocations and the memory they take can be read.

use tracing::warn;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::signature::ModelSignature;
use crate::tensor::Tensor;

/// One inference on zeros with `rows` in the batch dimension (a dynamic
/// one; a fixed one keeps its size). Models whose non-batch dimensions are
/// dynamic get size 1 there, which not every model accepts: for those a
/// failed warmup is only logged. So is a failure at the cap (size 1 passed):
/// batches that run out of memory are split when they come.
pub(super) fn warm_up(
    engine: &mut dyn Engine,
    signature: &ModelSignature,
    rows: usize,
) -> Result<(), EngineError> {
    let fully_static = signature
        .inputs
        .iter()
        .all(|s| s.dims.iter().skip(1).all(Option::is_some));
    let inputs: Vec<Tensor> = signature
        .inputs
        .iter()
        .map(|s| {
            // Zeros could be a wrong value for a weight: the model's own.
            if s.optional {
                return Tensor::absent(s.dtype);
            }
            let shape = s
                .dims
                .iter()
                .enumerate()
                .map(|(axis, d)| d.unwrap_or(if axis == 0 { rows } else { 1 }))
                .collect();
            Tensor::zeros(s.dtype, shape)
        })
        .collect();
    match engine.infer(&inputs) {
        Ok(_) => Ok(()),
        Err(EngineError::OutOfMemory(e)) if rows > 1 => {
            warn!(error = %e, rows, "warmup ran out of memory at the batch cap; larger batches will be split");
            Ok(())
        }
        Err(e) if rows > 1 => {
            warn!(error = %e, rows, "warmup at the batch cap failed; the replica serves anyway");
            Ok(())
        }
        Err(e) if !fully_static => {
            warn!(error = %e, "warmup with size-1 dynamic dimensions failed; the replica serves anyway");
            Ok(())
        }
        Err(e) => Err(EngineError::Load(format!("warmup failed: {e}"))),
    }
}
