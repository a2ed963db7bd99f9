//! Triton's `reshape` of an input or output (`config.pbtxt`): clients send
//! and receive a tensor in the shape the configuration's `dims` give, the
//! model takes and gives it in the `reshape` shape; the bytes are the same.
//! A `-1` in either stands for the one size the element count leaves.

/// One reshaped tensor of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorReshape {
    pub name: String,
    /// An input (else an output).
    pub input: bool,
    /// The shape clients see, per item (`dims`).
    pub dims: Vec<i64>,
    /// The shape the model has, per item (`reshape.shape`).
    pub model_dims: Vec<i64>,
    /// Whether tensors carry a batch dimension first (`max_batch_size` > 0).
    pub batched: bool,
}

impl TensorReshape {
    /// Checks the pair as a configuration gives it: at most one `-1` in
    /// the model's shape, and equal element counts when both are fixed.
    pub fn check(&self) -> Result<(), String> {
        let what = if self.input { "input" } else { "output" };
        if self.model_dims.iter().filter(|&&d| d == -1).count() > 1 {
            return Err(format!(
                "{what} '{}': reshape.shape may hold one -1 at most",
                self.name
            ));
        }
        if self.model_dims.iter().chain(&self.dims).any(|&d| d < -1) {
            return Err(format!("{what} '{}': a dimension below -1", self.name));
        }
        let fixed = |dims: &[i64]| {
            dims.iter()
                .all(|&d| d >= 0)
                .then(|| dims.iter().product::<i64>())
        };
        if let (Some(a), Some(b)) = (fixed(&self.dims), fixed(&self.model_dims)) {
            if a != b {
                return Err(format!(
                    "{what} '{}': dims {:?} hold {a} elements, reshape.shape {:?} {b}",
                    self.name, self.dims, self.model_dims
                ));
            }
        }
        Ok(())
    }

    /// The model's shape of a client's tensor (`shape`), or why it does
    /// not fit the configuration's `dims`.
    pub fn to_model(&self, shape: &[usize]) -> Result<Vec<usize>, String> {
        let (batch, item) = self.split(shape, &self.dims);
        if !fits(item, &self.dims) {
            return Err(format!(
                "input '{}' has shape {shape:?}; its configuration gives {}{:?} per item",
                self.name,
                if self.batched {
                    "a batch dimension, then "
                } else {
                    ""
                },
                self.dims
            ));
        }
        let model = resolve(item.iter().product(), &self.model_dims).ok_or_else(|| {
            format!(
                "input '{}' of shape {shape:?} cannot take the model's shape {:?}",
                self.name, self.model_dims
            )
        })?;
        Ok(batch.into_iter().chain(model).collect())
    }

    /// The client's shape of the model's output `shape` (unchanged when it
    /// does not fit the configuration).
    pub fn to_client(&self, shape: &[usize]) -> Vec<usize> {
        let (batch, item) = self.split(shape, &self.model_dims);
        match resolve(item.iter().product(), &self.dims) {
            Some(client) if fits(item, &self.model_dims) => {
                batch.into_iter().chain(client).collect()
            }
            _ => shape.to_vec(),
        }
    }

    /// The batch dimension (when `shape` carries one beyond `dims`) and
    /// the item's shape.
    fn split<'s>(&self, shape: &'s [usize], dims: &[i64]) -> (Option<usize>, &'s [usize]) {
        match shape.split_first() {
            Some((&batch, item)) if self.batched && shape.len() == dims.len() + 1 => {
                (Some(batch), item)
            }
            _ => (None, shape),
        }
    }
}

/// True when `shape` has `dims`' rank and sizes (`-1` takes any).
fn fits(shape: &[usize], dims: &[i64]) -> bool {
    shape.len() == dims.len()
        && shape
            .iter()
            .zip(dims)
            .all(|(&s, &d)| d == -1 || i64::try_from(s).is_ok_and(|s| s == d))
}

/// `dims` with its `-1` (one at most) sized so that it holds `elements`.
fn resolve(elements: usize, dims: &[i64]) -> Option<Vec<usize>> {
    let known: usize = dims
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let open = dims.iter().filter(|&&d| d == -1).count();
    let fill = match open {
        0 => (known == elements).then_some(0)?,
        1 if known > 0 && elements.is_multiple_of(known) => elements / known,
        1 if known == 0 && elements == 0 => 0,
        _ => return None,
    };
    Some(
        dims.iter()
            .map(|&d| if d == -1 { fill } else { d as usize })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(input: bool, dims: &[i64], model_dims: &[i64], batched: bool) -> TensorReshape {
        TensorReshape {
            name: "t".into(),
            input,
            dims: dims.to_vec(),
            model_dims: model_dims.to_vec(),
            batched,
        }
    }

    #[test]
    fn densenet_output_loses_its_trailing_ones() {
        let out = pair(false, &[1000], &[1000, 1, 1], true);
        out.check().unwrap();
        assert_eq!(out.to_client(&[2, 1000, 1, 1]), vec![2, 1000]);
        // Not the model's shape: left as it is.
        assert_eq!(out.to_client(&[2, 10]), vec![2, 10]);
    }

    #[test]
    fn inputs_take_the_models_shape_with_or_without_the_batch_dimension() {
        let input = pair(true, &[16], &[1, 16], true);
        assert_eq!(input.to_model(&[3, 16]).unwrap(), vec![3, 1, 16]);
        assert_eq!(input.to_model(&[16]).unwrap(), vec![1, 16]);
        let err = input.to_model(&[3, 15]).unwrap_err();
        assert!(err.contains("[3, 15]") && err.contains("[16]"), "{err}");
        let open = pair(true, &[-1, 4], &[-1], true);
        assert_eq!(open.to_model(&[2, 3, 4]).unwrap(), vec![2, 12]);
        let unbatched = pair(true, &[2, 3], &[6], false);
        assert_eq!(unbatched.to_model(&[2, 3]).unwrap(), vec![6]);
        assert!(unbatched.to_model(&[1, 2, 3]).is_err());
        // A scalar per item.
        let scalar = pair(true, &[1], &[], true);
        assert_eq!(scalar.to_model(&[5, 1]).unwrap(), vec![5]);
    }

    #[test]
    fn configurations_that_cannot_hold_are_refused() {
        for (dims, model, says) in [
            (&[4][..], &[-1, -1][..], "one -1"),
            (&[4], &[5], "hold 4 elements"),
            (&[-2], &[4], "below -1"),
        ] {
            let err = pair(true, dims, model, true).check().unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        pair(true, &[-1], &[-1, 2], true).check().unwrap();
    }
}
