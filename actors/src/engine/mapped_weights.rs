//! Weights ONNX Runtime maps from disk instead of copying into memory.
//!
//! A model file holds its weights inline (protobuf `raw_data`): loading it,
//! ONNX Runtime parses them into one copy and prepacks matrix weights into
//! another, holding more than the weights while it loads and taking about
//! a tenth of a second for a 40 MB model (the load times of
//! load-tests/TRACE_RESULTS.md). When a model is loaded because requests
//! wait for it, its replica instead loads a *split copy*: the same graph
//! with each large initializer moved into `weights.bin` beside it (ONNX's
//! external data), with prepacking off. ONNX Runtime then maps the weights from the file:
//! the load takes milliseconds and no transient, the pages come from the
//! page cache (kept after an eviction, so a reload reads nothing from
//! disk), and dropping the session gives them back. Runs at batch size 1
//! cost the same; larger batches of matrix products run slower without
//! prepacked weights, so replicas loaded at startup or added for a hot
//! model keep loading the file as it is.
//!
//! The copy is made once per model file (keyed by its SHA-256) under
//! `memory.weights_dir`, written beside its final name and renamed, so a
//! copy found there is whole. A directory in RAM (tmpfs) would keep every
//! copy in memory whatever is evicted: there, and where the directory
//! cannot be written, replicas load the file as it is.
//!
//! The rewrite works on the protobuf wire format (`prost`'s varint
//! helpers): every field but a large initializer's `raw_data` is copied
//! byte for byte, so fields this code does not know survive unchanged.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost::encoding::{decode_varint, encode_varint};
use tracing::{info, warn};

/// Initializers at least this large go to `weights.bin`.
const MIN_MAPPED_BYTES: usize = 4096;

/// Each tensor's offset in `weights.bin` is a multiple of this (vector
/// loads of any width find their data aligned).
const ALIGNMENT: usize = 64;

/// ModelProto.graph, GraphProto.initializer, TensorProto's raw_data,
/// external_data and data_location (onnx.proto).
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const LOCATION_EXTERNAL: u64 = 1;

const WEIGHTS_FILE: &str = "weights.bin";

/// Where split copies go, once the server has said so; `None` when weights
/// are not mapped.
static WEIGHTS_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Sets where split copies go (`dir` created if missing); `None` turns
/// mapping off. Returns why the directory cannot serve, when it cannot
/// (mapping is then off). Only the first call counts.
pub fn init(dir: Option<&Path>) -> Result<(), String> {
    let usable = dir.map(|d| usable_dir(d).map(|()| d.to_path_buf()));
    let (chosen, outcome) = match usable {
        None => (None, Ok(())),
        Some(Ok(dir)) => (Some(dir), Ok(())),
        Some(Err(why)) => (None, Err(why)),
    };
    let _ = WEIGHTS_DIR.set(chosen);
    outcome
}

/// True when replicas loaded on demand map their weights.
pub fn enabled() -> bool {
    dir().is_some()
}

/// Where split copies go, when weights are mapped.
pub fn dir() -> Option<&'static Path> {
    WEIGHTS_DIR.get().and_then(Option::as_deref)
}

/// The split copy of `model` (whose SHA-256 is `sha256`), made now if it is
/// not there yet. `Ok(None)`: mapping is off, or the model has no weights
/// worth mapping (or already keeps them in external files).
pub fn split_copy(model: &Path, sha256: &str) -> Result<Option<PathBuf>, String> {
    let Some(Some(dir)) = WEIGHTS_DIR.get() else {
        return Ok(None);
    };
    write_split(model, sha256, dir)
}

/// Makes the split copies of `files` (model file, SHA-256) on a thread of
/// its own, so that the first load on demand finds its copy made.
pub fn prepare_in_background(files: Vec<(PathBuf, String)>) {
    if !enabled() || files.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("weights-split".into())
        .spawn(move || {
            for (file, sha256) in files {
                if let Err(why) = split_copy(&file, &sha256) {
                    warn!(file = %file.display(), reason = %why, "no split copy made ahead");
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "split copies are made at each model's first load on demand");
    }
}

/// [`split_copy`] into `dir`. Two splits of one file at once (the thread
/// ahead and a load) each write their own staging folder; the first
/// rename wins and the other finds the copy made.
fn write_split(model: &Path, sha256: &str, dir: &Path) -> Result<Option<PathBuf>, String> {
    static STAGINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let target = dir.join(sha256);
    let graph = target.join("model.onnx");
    if graph.is_file() {
        return Ok(Some(graph));
    }
    // Read in pieces: the weights never sit in this process's memory.
    let file = std::fs::File::open(model).map_err(|e| format!("reading the model: {e}"))?;
    let src = FileSource(file);
    let Some(split) = split(&src)? else {
        return Ok(None);
    };
    let n = STAGINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = dir.join(format!(".{sha256}.{}.{n}", std::process::id()));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&staging)?;
        std::fs::write(staging.join("model.onnx"), &split.graph)?;
        let mut weights =
            std::io::BufWriter::new(std::fs::File::create(staging.join(WEIGHTS_FILE))?);
        let mut at = 0;
        let mut piece = vec![0; COPY_PIECE];
        for (offset, range) in &split.weights {
            weights.write_all(&vec![0; offset - at])?;
            let mut from = range.start;
            while from < range.end {
                let n = (range.end - from).min(COPY_PIECE);
                src.read_exact_at(&mut piece[..n], from)?;
                weights.write_all(&piece[..n])?;
                from += n;
            }
            at = range.end - range.start + offset;
        }
        weights
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        std::fs::rename(&staging, &target)
    };
    let written = write();
    let _ = std::fs::remove_dir_all(&staging);
    match written {
        Ok(()) => Ok(Some(graph)),
        // Another process made it meanwhile.
        Err(_) if graph.is_file() => Ok(Some(graph)),
        Err(e) => Err(format!("writing the split copy: {e}")),
    }
}

/// A directory for split copies: writable, and on a disk (not in RAM).
fn usable_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    if in_memory(dir) {
        return Err(format!(
            "{} is in memory (tmpfs): copies there would keep every model's weights in RAM",
            dir.display()
        ));
    }
    Ok(())
}

/// True when `dir` is on a file system held in RAM.
#[cfg(target_os = "linux")]
fn in_memory(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string for the call's duration.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    let kind = stat.f_type as i64;
    kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
}

#[cfg(not(target_os = "linux"))]
fn in_memory(_dir: &Path) -> bool {
    false
}

/// Logs once how replicas loaded on demand treat their weights.
pub fn describe() {
    match WEIGHTS_DIR.get() {
        Some(Some(dir)) => {
            info!(dir = %dir.display(), "weights of models loaded on demand are mapped from split copies")
        }
        _ => info!("weights are loaded as the model files hold them"),
    }
}

/// Bytes copied from the model file to `weights.bin` at a time.
const COPY_PIECE: usize = 1 << 20;

/// Where a model's bytes are read from: a file, read in pieces, or (in
/// tests) a slice.
trait Source {
    fn len(&self) -> usize;
    fn read_exact_at(&self, buf: &mut [u8], offset: usize) -> std::io::Result<()>;

    /// The bytes of `range`.
    fn bytes(&self, range: Range<usize>) -> Result<Vec<u8>, String> {
        let mut out = vec![0; range.len()];
        self.read_exact_at(&mut out, range.start)
            .map_err(|e| format!("reading the model: {e}"))?;
        Ok(out)
    }
}

struct FileSource(std::fs::File);

impl Source for FileSource {
    fn len(&self) -> usize {
        self.0.metadata().map_or(0, |m| m.len() as usize)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: usize) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset as u64)
    }
}

impl Source for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: usize) -> std::io::Result<()> {
        let end = offset + buf.len();
        let part = self
            .get(offset..end)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(part);
        Ok(())
    }
}

/// A model split in two: the graph (protobuf) and, for each initializer
/// moved out, its offset in `weights.bin` and its bytes' range in the
/// original file.
#[derive(Debug)]
struct Split {
    graph: Vec<u8>,
    weights: Vec<(usize, Range<usize>)>,
}

/// One field of a protobuf message: its number, wire type, the range of its
/// whole encoding (key included) and, for a length-delimited field, of its
/// payload.
struct Field {
    number: u64,
    wire_type: u64,
    whole: Range<usize>,
    payload: Range<usize>,
    value: u64,
}

/// The fields of the message in `src[range]`, in order.
fn fields<S: Source + ?Sized>(src: &S, range: Range<usize>) -> Result<Vec<Field>, String> {
    let bad = |what: &str| format!("the model file is not valid ONNX protobuf ({what})");
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let start = at;
        // A key and a varint take at most 20 bytes.
        let header = src.bytes(at..(at + 20).min(range.end))?;
        let mut buf = &header[..];
        let consumed = |rest: &[u8]| start + header.len() - rest.len();
        let key = decode_varint(&mut buf).map_err(|_| bad("a field key"))?;
        let (number, wire_type) = (key >> 3, key & 7);
        let mut value = 0;
        let payload_start;
        let len = match wire_type {
            0 => {
                value = decode_varint(&mut buf).map_err(|_| bad("a varint"))?;
                payload_start = consumed(buf);
                0
            }
            1 => {
                payload_start = consumed(buf);
                8
            }
            2 => {
                let n = decode_varint(&mut buf).map_err(|_| bad("a length"))? as usize;
                payload_start = consumed(buf);
                n
            }
            5 => {
                payload_start = consumed(buf);
                4
            }
            _ => return Err(bad("a group field")),
        };
        let end = payload_start
            .checked_add(len)
            .filter(|&e| e <= range.end)
            .ok_or_else(|| bad("a field past the end"))?;
        out.push(Field {
            number,
            wire_type,
            whole: start..end,
            payload: payload_start..end,
            value,
        });
        at = end;
    }
    Ok(out)
}

fn put_key(out: &mut Vec<u8>, number: u64, wire_type: u64) {
    encode_varint((number << 3) | wire_type, out);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_key(out, number, 2);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `src` (a ModelProto) with its graph's large initializers moved out;
/// `None` when none is large enough or one is already external.
fn split<S: Source + ?Sized>(src: &S) -> Result<Option<Split>, String> {
    let mut graph_out = Vec::with_capacity(64 * 1024);
    let mut weights = Vec::new();
    let mut next = 0usize;
    let mut model_out = Vec::with_capacity(64 * 1024);
    for field in fields(src, 0..src.len())? {
        if field.number != MODEL_GRAPH || field.wire_type != 2 {
            model_out.extend(src.bytes(field.whole)?);
            continue;
        }
        graph_out.clear();
        for g in fields(src, field.payload.clone())? {
            if g.number != GRAPH_INITIALIZER || g.wire_type != 2 {
                graph_out.extend(src.bytes(g.whole)?);
                continue;
            }
            let tensor = fields(src, g.payload.clone())?;
            let external = tensor
                .iter()
                .any(|t| t.number == TENSOR_DATA_LOCATION && t.value == LOCATION_EXTERNAL);
            if external {
                return Ok(None);
            }
            let raw = tensor
                .iter()
                .rev()
                .find(|t| t.number == TENSOR_RAW_DATA && t.wire_type == 2)
                .filter(|t| t.payload.len() >= MIN_MAPPED_BYTES);
            let Some(raw) = raw else {
                graph_out.extend(src.bytes(g.whole)?);
                continue;
            };
            let offset = next.next_multiple_of(ALIGNMENT);
            next = offset + raw.payload.len();
            weights.push((offset, raw.payload.clone()));
            let mut t_out = Vec::new();
            for t in &tensor {
                if t.number != TENSOR_RAW_DATA && t.number != TENSOR_DATA_LOCATION {
                    t_out.extend(src.bytes(t.whole.clone())?);
                }
            }
            let length = raw.payload.len().to_string();
            let offset = offset.to_string();
            for (key, value) in [
                ("location", WEIGHTS_FILE),
                ("offset", offset.as_str()),
                ("length", length.as_str()),
            ] {
                let mut entry = Vec::new();
                put_bytes(&mut entry, 1, key.as_bytes());
                put_bytes(&mut entry, 2, value.as_bytes());
                put_bytes(&mut t_out, TENSOR_EXTERNAL_DATA, &entry);
            }
            put_key(&mut t_out, TENSOR_DATA_LOCATION, 0);
            encode_varint(LOCATION_EXTERNAL, &mut t_out);
            put_bytes(&mut graph_out, GRAPH_INITIALIZER, &t_out);
        }
        put_bytes(&mut model_out, MODEL_GRAPH, &graph_out);
    }
    if weights.is_empty() {
        return Ok(None);
    }
    Ok(Some(Split {
        graph: model_out,
        weights,
    }))
}

/// The file a replica loads and whether its weights are mapped: the split
/// copy of `model` when `map` is asked and one can be had, else `model`.
pub fn file_to_load(model: &Path, sha256: &str, map: bool) -> (PathBuf, bool) {
    if !map {
        return (model.to_path_buf(), false);
    }
    match split_copy(model, sha256) {
        Ok(Some(graph)) => (graph, true),
        Ok(None) => (model.to_path_buf(), false),
        Err(why) => {
            warn!(reason = %why, "weights not mapped; the model file loads as it is");
            (model.to_path_buf(), false)
        }
    }
}

#[cfg(test)]
mod tests;
