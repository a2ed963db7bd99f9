//! A classifier's scores turned into an answer: optional softmax, then the
//! `top_k` labels with their scores, best first.

use gantry_actors::Tensor;
use serde::Serialize;

/// One class in the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub label: String,
    pub score: f32,
}

/// The best `top_k` classes of `output` (one row of scores).
pub fn top_classes(
    output: &Tensor,
    labels: Option<&[String]>,
    softmax: bool,
    top_k: usize,
) -> Result<Vec<ClassScore>, String> {
    let rows: usize = output.shape.iter().rev().skip(1).product();
    if rows != 1 || output.shape.is_empty() {
        return Err(format!(
            "a classes output is one row of scores; this one is {:?}",
            output.shape
        ));
    }
    let mut scores = output
        .to_f32()
        .ok_or_else(|| format!("a classes output is FP32; this one is {}", output.dtype))?;
    if let Some(labels) = labels.filter(|l| l.len() != scores.len()) {
        return Err(format!(
            "the model answers {} scores but its labels file has {} labels",
            scores.len(),
            labels.len()
        ));
    }
    if softmax {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = scores
            .iter_mut()
            .map(|s| {
                *s = (*s - max).exp();
                *s
            })
            .sum();
        scores.iter_mut().for_each(|s| *s /= sum);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    Ok(order
        .into_iter()
        .take(top_k)
        .map(|i| ClassScore {
            label: labels.map_or_else(|| i.to_string(), |l| l[i].clone()),
            score: scores[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_top_k() {
        let t = Tensor::from_f32(vec![1, 3], &[1.0, 3.0, 2.0]).unwrap();
        let labels = ["a".to_string(), "b".into(), "c".into()];
        let top = top_classes(&t, Some(&labels), true, 2).unwrap();
        assert_eq!(
            top.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert!((top[0].score - 0.665).abs() < 1e-3, "{}", top[0].score);
        let raw = top_classes(&t, None, false, 5).unwrap();
        assert_eq!(raw.len(), 3);
        assert_eq!((raw[0].label.as_str(), raw[0].score), ("1", 3.0));
    }

    #[test]
    fn mismatched_labels_and_shapes_are_errors() {
        let t = Tensor::from_f32(vec![1, 3], &[1.0, 3.0, 2.0]).unwrap();
        let err = top_classes(&t, Some(&["a".to_string()]), false, 1).unwrap_err();
        assert!(
            err.contains("3 scores") && err.contains("1 labels"),
            "{err}"
        );
        let two_rows = Tensor::from_f32(vec![2, 3], &[0.0; 6]).unwrap();
        assert!(top_classes(&two_rows, None, false, 1).is_err());
    }
}
