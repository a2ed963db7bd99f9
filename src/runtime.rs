//! Finding the ONNX Runtime shared library: `runtime.onnxruntime_lib` from
//! config, else `ORT_DYLIB_PATH`, else the `.onnxruntime/` folder that
//! `make onnxruntime` fills (in the working directory or above the binary).

use std::path::{Path, PathBuf};

/// The folder `make onnxruntime` extracts the library into.
pub const LOCAL_DIR: &str = ".onnxruntime";
/// The library's file name there.
pub const LIBRARY: &str = "libonnxruntime.so";

/// The library to load, or a message that says exactly what to do.
pub fn locate_onnxruntime(configured: &str) -> Result<PathBuf, String> {
    if !configured.is_empty() {
        let path = PathBuf::from(configured);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "runtime.onnxruntime_lib is {configured}, which does not exist. Fix the path, \
                 or run `make onnxruntime` in the Gantry repository and clear the key."
            ))
        };
    }
    if let Some(value) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(&value);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "ORT_DYLIB_PATH is {}, which does not exist. Point it at libonnxruntime.so, \
                 or unset it and run `make onnxruntime` in the Gantry repository.",
                path.display()
            ))
        };
    }
    let mut searched = Vec::new();
    for dir in search_dirs() {
        let candidate = dir.join(LOCAL_DIR).join(LIBRARY);
        if candidate.is_file() {
            return Ok(candidate);
        }
        searched.push(candidate.display().to_string());
    }
    Err(format!(
        "ONNX Runtime library not found (looked for {}). Run `make onnxruntime` in the Gantry \
         repository (it fetches the onnxruntime==1.31.1 wheel from PyPI and extracts the \
         library into {LOCAL_DIR}/), or set ORT_DYLIB_PATH=/path/to/{LIBRARY}.",
        searched.join(", ")
    ))
}

/// The working directory, then the binary's folder and its ancestors (so
/// `target/release/gantry` finds the repository's folder).
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    dirs.dedup();
    dirs
}
