//! `.npy` files (`gantry::media::npy`): an array read has exactly the bytes
//! its shape needs, and writing it back and reading again gives it again.

#![no_main]

use gantry::media::npy::{read_npy, write_npy};
use gantry_actors::tensor::element_count;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(tensor) = read_npy(input) else {
        return;
    };
    assert_eq!(
        tensor.data.len(),
        element_count(&tensor.shape) * tensor.dtype.size()
    );
    assert_eq!(read_npy(&write_npy(&tensor)).as_ref(), Ok(&tensor));
});
