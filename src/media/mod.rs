//! Uploaded files turned into tensors. Today: NumPy `.npy` arrays.

pub mod npy;
