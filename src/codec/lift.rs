//! Tensor data lifted out of a JSON body before serde reads it.
//!
//! serde_json checks every number of a `data` array it hands over as a
//! `RawValue`, which on a large tensor costs as much as decoding it. Here a
//! pass over the body's structure finds each input's `data` (the value of
//! key `data` in an object directly inside the root's `inputs`, an array in
//! the v2 protocol and an object in the REST one), checks that it is an
//! array of JSON numbers (strictly, by JSON's grammar) and puts `[]` in
//! its place in a copy of the rest of the body, the skeleton, which serde
//! then parses. [`LiftedBody::data`] gives back the original text of a
//! placeholder that serde borrowed, by where it lies in the skeleton; any
//! other `RawValue` is its own text.
//!
//! Hand-written: no JSON crate skips a number array without parsing each
//! number. An array that holds anything else (strings, `null`, booleans),
//! and every key elsewhere, stays in the skeleton for serde to judge, so
//! what is accepted, and every error message, is what serde alone gives:
//! a skeleton serde refuses is parsed again from the body as sent for the
//! message.

use std::ops::Range;

use serde_json::value::RawValue;

use crate::error::ApiError;

/// Arrays nested deeper than this are left to serde (and its own limit).
const MAX_DEPTH: usize = 64;

/// A JSON body with its inputs' number arrays lifted out.
pub struct LiftedBody<'a> {
    body: &'a [u8],
    /// The body with `[]` for each lifted array; empty when none was.
    skeleton: Vec<u8>,
    /// Where each placeholder starts in the skeleton, and the range of the
    /// array it stands for in the body, in order.
    lifted: Vec<(usize, Range<usize>)>,
}

impl<'a> LiftedBody<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        let spans = data_arrays(body);
        let mut lifted = Vec::with_capacity(spans.len());
        let mut skeleton = Vec::new();
        if !spans.is_empty() {
            let kept: usize = body.len() - spans.iter().map(|s| s.len()).sum::<usize>();
            skeleton.reserve(kept + 2 * spans.len());
            let mut from = 0;
            for span in spans {
                skeleton.extend_from_slice(&body[from..span.start]);
                lifted.push((skeleton.len(), span.clone()));
                skeleton.extend_from_slice(b"[]");
                from = span.end;
            }
            skeleton.extend_from_slice(&body[from..]);
        }
        LiftedBody {
            body,
            skeleton,
            lifted,
        }
    }

    /// What serde parses: the skeleton, or the body when nothing was lifted.
    fn text(&self) -> &[u8] {
        if self.lifted.is_empty() {
            self.body
        } else {
            &self.skeleton
        }
    }

    /// The body through serde, with serde's message (line, column of the
    /// body as sent) on failure.
    pub fn parse<'s, T: serde::Deserialize<'s>>(&'s self) -> Result<T, ApiError> {
        let error = match serde_json::from_slice(self.text()) {
            Ok(parsed) => return Ok(parsed),
            Err(e) if self.lifted.is_empty() => e,
            // Parsed again as sent: the error's line and column are the body's.
            Err(e) => serde_json::from_slice::<T>(self.body).err().unwrap_or(e),
        };
        Err(ApiError::BadRequest(format!("invalid JSON body: {error}")))
    }

    /// What to answer when a lifted array was refused by the decoder: the
    /// error serde gives on the body as sent, when there is one (a lifted
    /// array is only known to be valid JSON once the scanner has read it),
    /// else the decoder's `error`.
    pub fn refused<'s, T: serde::Deserialize<'s>>(&'s self, error: ApiError) -> ApiError {
        if self.lifted.is_empty() {
            return error;
        }
        match serde_json::from_slice::<T>(self.body) {
            Err(e) => ApiError::BadRequest(format!("invalid JSON body: {e}")),
            Ok(_) => error,
        }
    }

    /// The text `raw` stands for: the lifted array when `raw` is one of the
    /// placeholders serde borrowed from the skeleton, else `raw` itself.
    pub fn data<'s>(&'s self, raw: &'s RawValue) -> &'s str {
        let text = raw.get();
        if self.lifted.is_empty() {
            return text;
        }
        let at = (text.as_ptr() as usize).wrapping_sub(self.skeleton.as_ptr() as usize);
        match self.lifted.binary_search_by_key(&at, |(offset, _)| *offset) {
            Ok(index) if text.len() == 2 => {
                let span = self.lifted[index].1.clone();
                // Lifted arrays hold ASCII only (brackets, commas, spaces
                // and number characters), so this never fails.
                std::str::from_utf8(&self.body[span]).unwrap_or(text)
            }
            _ => text,
        }
    }
}

/// What a container the structure pass is inside stands for.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Other,
    /// The value of the root's `inputs` (an array or an object).
    Inputs,
    /// An object directly inside `inputs`: one input.
    Input,
}

/// The byte ranges of the inputs' `data` number arrays in `body`, in order.
/// Only the structure is followed (strings skipped with their escapes);
/// the rest of the JSON is serde's to check.
fn data_arrays(body: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    // Open containers: whether each is an object, and its role.
    let mut stack: Vec<(bool, Role)> = Vec::new();
    // The last key read, when it matters: `inputs` in the root, `data` in
    // an input.
    let mut key_inputs = false;
    let mut key_data = false;
    let mut expect_key = false;
    let mut i = 0;
    let n = body.len();
    while i < n {
        match body[i] {
            b'"' => {
                let Some(end) = string_end(body, i) else {
                    return spans;
                };
                if expect_key {
                    let key = &body[i + 1..end - 1];
                    key_inputs = stack.len() == 1 && key == b"inputs";
                    key_data = stack.last() == Some(&(true, Role::Input)) && key == b"data";
                    expect_key = false;
                }
                i = end;
                continue;
            }
            open @ (b'{' | b'[') => {
                if key_data && open == b'[' {
                    if let Some(end) = number_array_end(body, i) {
                        spans.push(i..end);
                        key_data = false;
                        i = end;
                        continue;
                    }
                }
                let object = open == b'{';
                let role = match stack.last() {
                    Some((true, Role::Other)) if stack.len() == 1 && key_inputs => Role::Inputs,
                    Some((_, Role::Inputs)) if object => Role::Input,
                    _ => Role::Other,
                };
                stack.push((object, role));
                expect_key = object;
                key_inputs = false;
                key_data = false;
            }
            b'}' | b']' => {
                stack.pop();
                key_inputs = false;
                key_data = false;
                expect_key = false;
            }
            b',' => {
                expect_key = matches!(stack.last(), Some((true, _)));
                key_inputs = false;
                key_data = false;
            }
            _ => {}
        }
        i += 1;
    }
    spans
}

/// The index just past the string that starts at `start` (a quote).
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match *body.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The bytes a lifted array may hold besides its brackets: what numbers,
/// commas and whitespace are written with.
static NUMERIC: [bool; 256] = {
    let mut numeric = [false; 256];
    let bytes = b"0123456789-+.eE, \n\r\t";
    let mut i = 0;
    while i < bytes.len() {
        numeric[bytes[i] as usize] = true;
        i += 1;
    }
    numeric
};

/// The index just past the array at `start` (a `[`) when it holds only
/// brackets and [`NUMERIC`] bytes; `None` otherwise. Its grammar is not
/// checked here: the number scanner reads it strictly, and a refusal sends
/// the body as sent to serde ([`LiftedBody::refused`]).
fn number_array_end(body: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    loop {
        // The numbers between brackets, in one tight search.
        i += body[i..].iter().position(|&b| !NUMERIC[b as usize])?;
        match body[i] {
            b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
            }
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => return None,
        }
        i += 1;
    }
}

/// A v2-shaped body, for [`both_ways`].
#[derive(serde::Deserialize, Debug)]
struct Body<'a> {
    #[serde(borrow)]
    inputs: Vec<Input<'a>>,
    /// Read by the tests: a `data` key here is not an input's.
    #[serde(default)]
    #[cfg_attr(not(test), allow(dead_code))]
    parameters: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Deserialize, Debug)]
struct Input<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Decoded tensors' bytes, or the error's message.
pub type Decoded = Result<Vec<Vec<u8>>, String>;

/// Each input's data of a v2-shaped `body` decoded as FP32 of shape [2],
/// through the lifted body (as the handlers do) and through serde alone on
/// the body as sent; they must agree, errors included. For the tests and
/// the fuzz target.
#[doc(hidden)]
pub fn both_ways(body: &str) -> (Decoded, Decoded) {
    let decode = |text: &str| crate::codec::tensor_from_json("x", "FP32", vec![2], text);
    let lifted = LiftedBody::new(body.as_bytes());
    let through_lift = lifted
        .parse::<Body>()
        .and_then(|b| {
            b.inputs
                .iter()
                .map(|i| decode(lifted.data(i.data)).map(|t| t.data))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| lifted.refused::<Body>(e))
        })
        .map_err(|e| e.to_string());
    let alone = serde_json::from_str::<Body>(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
        .and_then(|b| {
            b.inputs
                .iter()
                .map(|i| decode(i.data.get()).map(|t| t.data))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| e.to_string());
    (through_lift, alone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_arrays_of_inputs_are_lifted_and_read_back_as_sent() {
        let body = r#"{"inputs": [{"name": "a", "data": [1, -2.5e3, 0.25]},
            {"data": [[1,2],[3,4]], "name": "b"}], "parameters": {"data": [9]}}"#;
        let lifted = LiftedBody::new(body.as_bytes());
        assert_eq!(lifted.lifted.len(), 2);
        let parsed: Body = lifted.parse().unwrap();
        let texts: Vec<&str> = parsed.inputs.iter().map(|i| lifted.data(i.data)).collect();
        assert_eq!(texts, ["[1, -2.5e3, 0.25]", "[[1,2],[3,4]]"]);
        // Only the inputs' data: parameters keep theirs.
        assert_eq!(parsed.parameters["data"], serde_json::json!([9]));

        // The REST body: inputs by name.
        let rest = r#"{"model": "m", "inputs": {"x": {"shape": [2], "data": [1,2]}}}"#;
        let lifted = LiftedBody::new(rest.as_bytes());
        assert_eq!(lifted.lifted.len(), 1);
        assert_eq!(
            lifted.lifted[0]
                .1
                .clone()
                .map(|i| rest.as_bytes()[i] as char)
                .collect::<String>(),
            "[1,2]"
        );
    }

    #[test]
    fn anything_but_numbers_stays_for_serde() {
        for data in [
            r#"["a", 1]"#,
            "[null]",
            "[true, false]",
            r#"[{"x": 1}]"#,
            r#"["NaN", 1]"#,
            "[Infinity]",
        ] {
            let body = format!(r#"{{"inputs": [{{"data": {data}}}]}}"#);
            assert!(
                LiftedBody::new(body.as_bytes()).lifted.is_empty(),
                "{data} was lifted"
            );
            let (through_lift, alone) = both_ways(&body);
            assert_eq!(through_lift, alone, "{data}");
        }
        // Deeper than the limit: left to serde.
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let body = format!(r#"{{"inputs": [{{"data": {deep}}}]}}"#);
        assert!(LiftedBody::new(body.as_bytes()).lifted.is_empty());
    }

    #[test]
    fn numbers_json_does_not_write_are_refused_as_serde_refuses_them() {
        for data in [
            "[01, 1]",
            "[1., 1]",
            "[.5, 1]",
            "[-, 1]",
            "[1e, 1]",
            "[1e+, 1]",
            "[+1, 1]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[[1] [2]]",
            "[1,,2]",
            "[1-2, 1]",
            "[1e5.3, 1]",
            "[1.2.3, 1]",
            "[[1, 2]]",
            "[[1], [2]]",
            "[1, 2]",
            "[-0.0, 1e-3]",
            "[1E+2, 0]",
            "[]",
        ] {
            let body = format!(r#"{{"inputs": [{{"data": {data}}}]}}"#);
            assert!(
                !LiftedBody::new(body.as_bytes()).lifted.is_empty(),
                "{data} was not lifted"
            );
            let (through_lift, alone) = both_ways(&body);
            assert_eq!(through_lift, alone, "{data}");
        }
    }

    #[test]
    fn a_placeholder_the_client_wrote_is_its_own_text() {
        let body = r#"{"inputs": [{"data": []}, {"data": [5]}]}"#;
        let lifted = LiftedBody::new(body.as_bytes());
        let parsed: Body = lifted.parse().unwrap();
        let texts: Vec<&str> = parsed.inputs.iter().map(|i| lifted.data(i.data)).collect();
        assert_eq!(texts, ["[]", "[5]"]);
    }

    #[test]
    fn errors_name_the_place_in_the_body_as_sent() {
        for body in [
            r#"{"inputs": [{"data": [1, 2, 3]}], "x": }"#,
            r#"{"inputs": [{"data": [1, 2, 3]}, {"data": [4]}"#,
            r#"{"inputs": [{"data": [1, 2, 3], "data": [4]}]}"#,
            r#"{"inputs": [{"data": [1, 2, 3]} {"data": [4]}]}"#,
            r#"{"inputs": [{"data": [1, 2, 3]}]}   x"#,
            r#"{"inputs": [{"data": [1, 2, 3]}], "p": "\q"}"#,
            r#"{"inputs": [{"da\"ta": [1]}]}"#,
        ] {
            let (through_lift, alone) = both_ways(body);
            assert!(alone.is_err(), "{body}");
            assert_eq!(through_lift, alone, "{body}");
        }
    }

    /// Bodies built from pieces, valid and not: the lifted path accepts and
    /// refuses exactly what serde does, with the same data and messages.
    #[test]
    fn lifting_never_changes_what_a_body_means() {
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            r#""inputs""#,
            r#""data""#,
            r#""name""#,
            "1",
            "-0.5",
            "2e3",
            "01",
            r#""s""#,
            "null",
            "[1,2]",
            "[[1],[2]]",
            "[1,",
            r#""\"""#,
        ];
        let tails = [
            "}]}",
            r#"}, {"data": [3, 4]}]}"#,
            r#"}], "data": [1]}"#,
            r#", "data": [2]}]}"#,
            "}]",
            "}]} 1",
            r#"}], "parameters": {"inputs": [{"data": [1]}]}}"#,
            "",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut agreed_ok = 0;
        for _ in 0..20_000 {
            let mut body = String::from(r#"{"inputs": [{"data": "#);
            for _ in 0..(next() % 4) {
                body.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            body.push_str(tails[(next() % tails.len() as u64) as usize]);
            let (through_lift, alone) = both_ways(&body);
            assert_eq!(through_lift, alone, "{body}");
            let was_lifted = !LiftedBody::new(body.as_bytes()).lifted.is_empty();
            agreed_ok += usize::from(alone.is_ok() && was_lifted);
        }
        assert!(agreed_ok > 100, "{agreed_ok} valid bodies had data lifted");
    }
}
