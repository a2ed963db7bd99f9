//! The JSON tensor codec: every datatype both ways, nested data, values
//! that do not fit, NaN and infinities, and the scanner's fast path rounding
//! as a correct parser does and leaving the rest to the general path.

use super::*;
use serde_json::value::RawValue;

fn decode(datatype: &str, shape: Vec<usize>, json: &str) -> Result<Tensor, ApiError> {
    let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
    tensor_from_json("x", datatype, shape, raw.get())
}

fn encode(t: &Tensor) -> String {
    serde_json::to_string(&JsonData(t)).unwrap()
}

#[test]
fn half_floats_and_strings_round_trip_through_json() {
    let half = decode("FP16", vec![4], "[1.5, -2, \"NaN\", 65504]").unwrap();
    assert_eq!(encode(&half), "[1.5,-2.0,\"NaN\",65504.0]");
    let brain = decode("BF16", vec![2], "[0.5, 3e38]").unwrap();
    assert_eq!(brain.data.len(), 4);
    assert_eq!(encode(&brain), "[0.5,3.0040553e+38]");
    let text = decode(
        "BYTES",
        vec![2, 2],
        r#"[["a", ""], ["\u00e9t\u00e9", "x y"]]"#,
    )
    .unwrap();
    assert_eq!(text.bytes_elements().unwrap()[2], "été".as_bytes());
    assert_eq!(encode(&text), r#"["a","","été","x y"]"#);
}

#[test]
fn flat_and_nested_arrays_decode_alike() {
    let flat = decode("FP32", vec![2, 2], "[1, 2.5, 3, 4]").unwrap();
    let nested = decode("FP32", vec![2, 2], "[[1, 2.5], [3, 4]]").unwrap();
    assert_eq!(flat, nested);
    assert_eq!(flat.to_f32().unwrap(), vec![1.0, 2.5, 3.0, 4.0]);
}

#[test]
fn every_datatype_round_trips_through_json() {
    let cases = [
        ("BOOL", "[true,false,true]"),
        ("UINT8", "[0,7,255]"),
        ("UINT16", "[0,7,65535]"),
        ("UINT32", "[0,7,4294967295]"),
        ("UINT64", "[0,7,18446744073709551615]"),
        ("INT8", "[-128,0,127]"),
        ("INT16", "[-32768,0,32767]"),
        ("INT32", "[-2147483648,0,2147483647]"),
        ("INT64", "[-9223372036854775808,0,9223372036854775807]"),
        ("FP32", "[-1.5,0.0,3.25]"),
        ("FP32", "[-3.4028235e+38,1e-45,3.4028235e+38]"),
        ("FP64", "[-1.5,0.0,1e+300]"),
    ];
    for (datatype, json) in cases {
        let t = decode(datatype, vec![3], json).unwrap();
        assert_eq!(t.dtype.as_str(), datatype);
        assert_eq!(encode(&t), json, "{datatype}");
    }
    // Whole numbers written as floats are integers.
    let t = decode("INT32", vec![3], "[3.0, -1e3, 0.0]").unwrap();
    assert_eq!(encode(&t), "[3,-1000,0]");
    assert_eq!(
        encode(&decode("BOOL", vec![2], "[1, 0.0]").unwrap()),
        "[true,false]"
    );
}

#[test]
fn values_that_do_not_fit_are_refused_with_index_and_range() {
    let cases = [
        ("FP32", "[0, 1e39]", "the value 1e39 at index 1 is out of range for FP32 (-3.4028235e38 to 3.4028235e38"),
        ("FP32", "[[0, 1], [-3.5e38, 2]]", "the value -3.5e38 at index 2 is out of range for FP32"),
        ("FP64", "[1, 1e400]", "the value at index 1 is out of range for FP64 (-1.7976931348623157e308"),
        ("UINT8", "[[1, 2], [3, 256]]", "the value 256 at index 3 is out of range for UINT8 (0 to 255)"),
        ("UINT8", "[-1]", "the value -1 at index 0 is out of range for UINT8 (0 to 255)"),
        ("UINT16", "[65536]", "65536 at index 0 is out of range for UINT16 (0 to 65535)"),
        ("UINT32", "[-5]", "-5 at index 0 is out of range for UINT32 (0 to 4294967295)"),
        ("UINT64", "[18446744073709551616]", "the value 18446744073709551616 at index 0 is out of range for UINT64 (0 to 18446744073709551615)"),
        ("INT8", "[127, -129]", "-129 at index 1 is out of range for INT8 (-128 to 127)"),
        ("INT16", "[32768]", "32768 at index 0 is out of range for INT16 (-32768 to 32767)"),
        ("INT32", "[2147483648]", "out of range for INT32 (-2147483648 to 2147483647)"),
        ("INT32", "[1e10]", "10000000000 at index 0 is out of range for INT32"),
        ("INT64", "[9223372036854775808]", "out of range for INT64 (-9223372036854775808 to 9223372036854775807)"),
        ("INT64", "[-9223372036854775809]", "at index 0 is out of range for INT64"),
        ("INT32", "[1, 1.5]", "the value 1.5 at index 1 is not a whole number, as needed by INT32"),
        ("UINT8", "[0.5]", "0.5 at index 0 is not a whole number, as needed by UINT8"),
        ("BOOL", "[true, 2]", "the value 2 at index 1 is not a value of BOOL (true or false, or 0 or 1)"),
        ("BOOL", "[0.5]", "0.5 at index 0 is not a value of BOOL"),
        ("BOOL", "[\"true\"]", "\"true\" at index 0 is not a value of BOOL"),
        ("FP32", "[true]", "true at index 0 is not a value of FP32"),
        ("FP32", "[\"a\"]", "\"a\" at index 0 is not a value of FP32 (-3.4028235e38 to 3.4028235e38, or the strings \"NaN\", \"Infinity\", \"-Infinity\")"),
        ("FP32", "[1, null]", "null at index 1 is not a value of FP32"),
        ("FP64", "[\"nan\"]", "\"nan\" at index 0 is not a value of FP64"),
        ("INT32", "[\"NaN\"]", "\"NaN\" at index 0 is not a value of INT32"),
        ("FP8", "[1]", "datatype 'FP8' is not supported"),
        ("FP16", "[1, 2, 70000.5, 4]", "70000.5 at index 2 is out of range for FP16"),
        ("FP16", "[1, 2, 3, 70000]", "70000 at index 3 is out of range for FP16"),
        ("BF16", "[1, 2, 3, 1e39]", "at index 3 is out of range for BF16"),
        ("BYTES", "[\"a\", 2, \"c\", \"d\"]", "2 at index 1 is not a value of BYTES"),
        ("BYTES", "[\"a\", \"b\"]", "needs 4 values, data holds 2"),
    ];
    for (datatype, json, needle) in cases {
        let err = decode(datatype, vec![4], json).unwrap_err();
        assert!(matches!(err, ApiError::InvalidTensor(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("input 'x'"), "{err} lacks the input name");
        assert!(
            err.contains(needle),
            "{datatype} {json}: {err} lacks {needle}"
        );
        assert!(!err.contains("line 1"), "{err}");
    }
    let err = decode("FP32", vec![2, 2], "[1, 2, 3]")
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 4 values, data holds 3"), "{err}");
}

#[test]
fn binary_bools_are_zero_or_one() {
    let ok = Tensor::new(DataType::Bool, vec![3], vec![0, 1, 1]).unwrap();
    assert!(check_bools("x", &ok).is_ok());
    let bad = Tensor::new(DataType::Bool, vec![3], vec![0, 1, 2]).unwrap();
    let err = check_bools("x", &bad).unwrap_err().to_string();
    assert!(err.contains("input 'x': the byte 2 at index 2"), "{err}");
    let bytes = Tensor::new(DataType::Uint8, vec![1], vec![7]).unwrap();
    assert!(check_bools("x", &bytes).is_ok());
}

#[test]
fn nan_and_infinities_are_strings_both_ways() {
    let t = Tensor::from_f32(vec![4], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.5]).unwrap();
    let json = encode(&t);
    assert_eq!(json, r#"["NaN","Infinity","-Infinity",-0.5]"#);
    let back = decode("FP32", vec![4], &json).unwrap().to_f32().unwrap();
    assert!(back[0].is_nan());
    assert_eq!(back[1..], [f32::INFINITY, f32::NEG_INFINITY, -0.5]);

    let wide: Vec<u8> = [f64::NEG_INFINITY, f64::NAN, 1e300]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let t = Tensor::new(DataType::Fp64, vec![3], wide).unwrap();
    let json = encode(&t);
    assert_eq!(json, r#"["-Infinity","NaN",1e+300]"#);
    assert_eq!(encode(&decode("FP64", vec![3], &json).unwrap()), json);
}

#[test]
fn the_wire_speed_path_rounds_every_float_correctly() {
    // Floats of every magnitude, integers, nesting and whitespace.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let floats: Vec<String> = (0..2000)
        .map(|_| {
            let bits = next();
            let mantissa = (bits >> 11) as f64 / (1u64 << 53) as f64;
            let exponent = (bits % 60) as i32 - 30;
            let v = (mantissa - 0.5) * 10f64.powi(exponent);
            match bits % 3 {
                0 => format!("{v}"),
                1 => format!("{v:e}"),
                _ => format!("{:.4}", v),
            }
        })
        .collect();
    let text = format!("[{}]", floats.join(", "));
    // The scanner rounds correctly, as Rust's own parser does (serde_json's
    // default float parser may be one unit off in the last place, so the
    // general path is not the yardstick here).
    let exact: Vec<f64> = floats.iter().map(|f| f.parse().unwrap()).collect();
    let fp32: Vec<u8> = floats
        .iter()
        .flat_map(|f| f.parse::<f32>().unwrap().to_le_bytes())
        .collect();
    let fp64: Vec<u8> = exact.iter().flat_map(|v| v.to_le_bytes()).collect();
    let fp16: Vec<u8> = exact
        .iter()
        .flat_map(|&v| f16::from_f64(v).to_le_bytes())
        .collect();
    let bf16s: Vec<u8> = exact
        .iter()
        .flat_map(|&v| bf16::from_f64(v).to_le_bytes())
        .collect();
    assert_eq!(
        scan::plain_numbers(DataType::Fp32, text.as_bytes(), 2000),
        Some(fp32)
    );
    assert_eq!(
        scan::plain_numbers(DataType::Fp64, text.as_bytes(), 2000),
        Some(fp64)
    );
    assert_eq!(
        scan::plain_numbers(DataType::Bf16, text.as_bytes(), 2000),
        Some(bf16s)
    );
    // Values beyond FP16's range go to the general path, which refuses them.
    let small: Vec<&String> = floats
        .iter()
        .filter(|f| f.parse::<f64>().unwrap().abs() < 60000.0)
        .collect();
    let small_text = format!(
        "[{}]",
        small
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let small_fp16: Vec<u8> = small
        .iter()
        .flat_map(|f| f16::from_f64(f.parse().unwrap()).to_le_bytes())
        .collect();
    assert_eq!(
        scan::plain_numbers(DataType::Fp16, small_text.as_bytes(), small.len()),
        Some(small_fp16)
    );
    assert!(fp16.len() > small.len() * 2);
    assert_eq!(
        scan::plain_numbers(DataType::Fp16, text.as_bytes(), 2000),
        None
    );
    let ints = "[[0, -1, 127], [-128, 42, 7]]";
    for dtype in [
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
    ] {
        let raw: Box<RawValue> = serde_json::from_str(ints).unwrap();
        assert_eq!(
            scan::plain_numbers(dtype, ints.as_bytes(), 6).unwrap(),
            general("x", dtype, raw.get(), 6).unwrap(),
            "{dtype}"
        );
    }
}

#[test]
fn the_wire_speed_path_leaves_what_it_cannot_judge_to_the_general_one() {
    let cases = [
        (DataType::Fp32, "[1, \"NaN\"]"),
        (DataType::Fp32, "[1e39]"),
        (DataType::Fp32, "[null]"),
        (DataType::Fp32, "[true]"),
        (DataType::Int32, "[3.0]"),
        (DataType::Int32, "[1e3]"),
        (DataType::Int32, "[2147483648]"),
        (DataType::Uint8, "[-1]"),
        (DataType::Int64, "[123456789012345678901234]"),
        (DataType::Bool, "[2]"),
        (DataType::Fp64, "[{\"a\": 1}]"),
    ];
    for (dtype, text) in cases {
        assert_eq!(
            scan::plain_numbers(dtype, text.as_bytes(), 4),
            None,
            "{dtype} {text}"
        );
    }
    assert_eq!(
        scan::plain_numbers(DataType::Bool, b"[true, 0, false, 1]", 4),
        Some(vec![1, 0, 0, 1])
    );
    assert_eq!(
        scan::plain_numbers(DataType::Uint64, b"[18446744073709551615]", 1),
        Some(u64::MAX.to_le_bytes().to_vec())
    );
}

#[test]
fn short_decimals_take_the_exact_division_and_round_as_rust_does() {
    // Mantissas around FP32's and FP64's exact limits (2^24, 2^53), with
    // every count of fraction digits the fast path takes and one more, and
    // signs, leading zeros and negative zero.
    let mut tokens: Vec<String> = Vec::new();
    for m in [
        0u64,
        1,
        7,
        1234,
        99_999,
        16_777_215,
        16_777_216,
        16_777_217,
        123_456_789,
        9_007_199_254_740_992,
        9_007_199_254_740_993,
        1_234_567_890_123_456_789,
    ] {
        for fraction in 0..=23usize {
            let digits = format!("{m:0>width$}", width = fraction + 1);
            let (whole, frac) = digits.split_at(digits.len() - fraction);
            let token = if fraction == 0 {
                whole.to_string()
            } else {
                format!("{whole}.{frac}")
            };
            tokens.push(format!("-{token}"));
            tokens.push(token);
        }
    }
    tokens.push("-0".into());
    tokens.push("0.000000000000000000001".into());
    let text = format!("[{}]", tokens.join(","));
    let fp32: Vec<u8> = tokens
        .iter()
        .flat_map(|t| t.parse::<f32>().unwrap().to_le_bytes())
        .collect();
    let fp64: Vec<u8> = tokens
        .iter()
        .flat_map(|t| t.parse::<f64>().unwrap().to_le_bytes())
        .collect();
    let n = tokens.len();
    assert_eq!(
        scan::plain_numbers(DataType::Fp32, text.as_bytes(), n),
        Some(fp32)
    );
    assert_eq!(
        scan::plain_numbers(DataType::Fp64, text.as_bytes(), n),
        Some(fp64)
    );
}

#[test]
fn the_writer_writes_what_serde_json_writes() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let floats: Vec<f32> = (0..3000)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match i % 3 {
                0 => {
                    f32::from_bits(seed as u32 & 0x7f7f_ffff)
                        * if seed & 1 == 0 { 1.0 } else { -1.0 }
                }
                1 => (seed % 10_000) as f32 / 10_000.0,
                _ => (seed % 1000) as f32 - 500.0,
            }
        })
        .collect();
    let t = Tensor::from_f32(vec![floats.len()], &floats).unwrap();
    assert_eq!(encode(&t), serde_json::to_string(&floats).unwrap());
    let doubles: Vec<f64> = floats.iter().map(|&v| f64::from(v) / 3.0).collect();
    let bytes: Vec<u8> = doubles.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = Tensor::new(DataType::Fp64, vec![doubles.len()], bytes).unwrap();
    assert_eq!(encode(&t), serde_json::to_string(&doubles).unwrap());
    let ints: Vec<i64> = vec![0, -1, i64::MIN, i64::MAX, 42];
    let bytes: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = Tensor::new(DataType::Int64, vec![ints.len()], bytes).unwrap();
    assert_eq!(encode(&t), serde_json::to_string(&ints).unwrap());
    let empty = Tensor::new(DataType::Fp32, vec![0], Vec::new()).unwrap();
    assert_eq!(encode(&empty), "[]");
}

#[test]
fn python_length_decimals_round_to_fp32_as_rust_does() {
    // What Python's json and NumPy's tolist() write: 16-17 significant
    // digits of an FP64 value, at several magnitudes, and FP32 ties
    // (odd integers just above 2^24) that a double rounding would get wrong.
    let mut seed = 0x0123_4567_89ab_cdef_u64;
    let mut tokens: Vec<String> = (0..50_000)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let unit = (seed >> 11) as f64 / (1u64 << 53) as f64;
            format!("{:?}", unit * [1.0, 1e-3, 1e3, 1e6][i % 4])
        })
        .collect();
    tokens.extend((0..200).map(|k| format!("{}", (1u64 << 24) + 2 * k + 1)));
    tokens.extend((0..200).map(|k| format!("{}.0", (1u64 << 25) + 4 * k + 2)));
    // The shortest decimals of FP32 halfway points (FP64 values): they are
    // not the points themselves, so the right FP32 is above or below.
    tokens.extend((0..2000u64).map(|k| {
        let halfway =
            f64::from_bits((0x3fe0_0000_0000_0000 | (k * 7919 % (1 << 23)) << 29) | 1 << 28);
        format!("{halfway:?}")
    }));
    let text = format!("[{}]", tokens.join(","));
    let expected: Vec<u8> = tokens
        .iter()
        .flat_map(|t| t.parse::<f32>().unwrap().to_le_bytes())
        .collect();
    assert_eq!(
        scan::plain_numbers(DataType::Fp32, text.as_bytes(), tokens.len()),
        Some(expected)
    );
}
