//! The compact binary form of cached outputs stored in Redis: a magic and
//! version, then per output its name, datatype, shape and raw bytes. Floats
//! stay bit-exact (no JSON round trip).

use gantry_actors::{DataType, Tensor};

const MAGIC: &[u8; 4] = b"GNT1";

/// Encodes named outputs.
pub fn encode(outputs: &[(String, Tensor)]) -> Vec<u8> {
    let size: usize = outputs
        .iter()
        .map(|(n, t)| n.len() + t.data.len() + 8 * t.shape.len() + 16)
        .sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(outputs.len() as u32).to_le_bytes());
    for (name, tensor) in outputs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(
            DataType::ALL
                .iter()
                .position(|d| *d == tensor.dtype)
                .unwrap_or(0) as u8,
        );
        out.push(tensor.shape.len() as u8);
        for d in &tensor.shape {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&(tensor.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&tensor.data);
    }
    out
}

/// Decodes what [`encode`] wrote; `None` for anything else.
pub fn decode(bytes: &[u8]) -> Option<Vec<(String, Tensor)>> {
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return None;
    }
    let count = r.u32()? as usize;
    let mut outputs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name_len = r.u32()? as usize;
        let name = String::from_utf8(r.take(name_len)?.to_vec()).ok()?;
        let dtype = *DataType::ALL.get(r.take(1)?[0] as usize)?;
        let rank = r.take(1)?[0] as usize;
        let shape = (0..rank)
            .map(|_| r.u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()?;
        let len = usize::try_from(r.u64()?).ok()?;
        let data = r.take(len)?.to_vec();
        outputs.push((name, Tensor::new(dtype, shape, data).ok()?));
    }
    r.0.is_empty().then_some(outputs)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bit_exact_and_rejects_garbage() {
        let outputs = vec![
            (
                "mask".to_string(),
                Tensor::from_f32(vec![1, 2], &[f32::MIN_POSITIVE, -0.0]).unwrap(),
            ),
            (
                "flag".to_string(),
                Tensor::new(DataType::Bool, vec![], vec![1]).unwrap(),
            ),
        ];
        let bytes = encode(&outputs);
        assert_eq!(decode(&bytes).unwrap(), outputs);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(b"GNT1\xff\xff\xff\xff").is_none());
        assert!(decode(b"nope").is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
    }
}
