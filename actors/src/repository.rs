//! The model repository: one folder per model, in Gantry's layout
//! (`model.onnx` and an optional `model.toml`) or in Triton's
//! (`config.pbtxt` and version folders `<n>/model.onnx`, see
//! [`crate::triton_config`]); both may sit in one repository. Scanning it
//! yields the models to serve, for each folder that cannot be served an
//! error naming the file and key, and the folders that hold no model.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::model_settings::ModelSettings;
use crate::processing::OutputProcessing;
pub use crate::sequence::{SequenceSettings, StateSettings};
use crate::triton_config;

/// A model ready to be served: where it is, what version, how to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub onnx_path: PathBuf,
    /// The version clients name: the SHA-256 of the `.onnx` file (hex) in
    /// Gantry's layout, the version folder's number in Triton's.
    pub version: String,
    /// SHA-256 of the `.onnx` file, hex: what cached results are keyed by.
    pub sha256: String,
    /// For a folder in Triton's layout, its `config.pbtxt` as read
    /// (protobuf's JSON mapping), which the model's configuration answers.
    pub triton_config: Option<serde_json::Value>,
    pub settings: ModelSettings,
    /// Memory each replica reserves from the budget.
    pub memory_mb: u64,
    /// The `.onnx` file's size in MB (rounded up): the least a loaded
    /// replica holds, whatever its measurement says.
    pub file_mb: u64,
    /// Class labels from the `[output]` table's `labels` file, in score order.
    pub labels: Option<Vec<String>>,
}

impl ModelSpec {
    /// The model's file as the repository holds it (`name/model.onnx`,
    /// `name/1/model.onnx`): how errors name it, never by where the
    /// server keeps it.
    pub fn file_label(&self) -> String {
        let folder = self
            .onnx_path
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == self.name.as_str()));
        folder
            .and_then(Path::parent)
            .and_then(|repository| self.onnx_path.strip_prefix(repository).ok())
            .unwrap_or_else(|| Path::new(self.onnx_path.file_name().unwrap_or_default()))
            .display()
            .to_string()
    }
}

/// What a load request overrides: its Triton configuration as sent (JSON)
/// and that configuration as `model.toml` keys. A model in Gantry's layout
/// takes the keys over its `model.toml`; one in Triton's takes the
/// configuration's fields over its `config.pbtxt`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOverrides {
    pub settings: toml::Table,
    pub triton: serde_json::Map<String, serde_json::Value>,
}

/// A folder that could not be turned into a model, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    pub model: String,
    pub error: String,
}

/// Result of reading the repository: what loads and what does not.
#[derive(Debug, Default)]
pub struct RepositoryScan {
    pub models: Vec<ModelSpec>,
    pub errors: Vec<LoadError>,
    /// Folders that hold no model, with why they are not one.
    pub skipped: Vec<LoadError>,
}

/// Why a folder that holds no model is not one.
const NOT_A_MODEL: &str = "holds no model: neither model.onnx or model.toml (Gantry's layout) nor config.pbtxt or a version folder such as 1/model.onnx (Triton's)";

/// Estimated per-replica memory when `memory_mb` is not set: the weights
/// twice (file and session copy) plus room for activations.
pub fn estimate_memory_mb(file_bytes: u64) -> u64 {
    const MB: u64 = 1024 * 1024;
    2 * file_bytes.div_ceil(MB) + 64
}

/// Reads every model folder under `dir`. Hidden folders (`.`), folders
/// starting with `_` and plain files are ignored; a folder that cannot be
/// served (a bad name, a symbolic link out of `dir`, a broken `model.toml`)
/// becomes a [`LoadError`].
pub fn scan(dir: &Path) -> Result<RepositoryScan, String> {
    let mut scan = scan_folders(dir)?;
    for e in scan.errors.iter_mut() {
        e.error = within_repository(dir, &e.error);
    }
    Ok(scan)
}

/// `message` with the repository's own path taken out, so that what
/// clients read (load answers, health, the repository index) names a file
/// as `model/model.toml`, never by where the server keeps it.
pub fn within_repository(dir: &Path, message: &str) -> String {
    let mut message = message.to_string();
    let canonical = fs::canonicalize(dir).ok();
    for root in [Some(dir.to_path_buf()), canonical].into_iter().flatten() {
        let root = root.display().to_string();
        if root.is_empty() || root == "/" {
            continue;
        }
        message = message
            .replace(&format!("{root}/"), "")
            .replace(&root, "models.dir");
    }
    message
}

fn scan_folders(dir: &Path) -> Result<RepositoryScan, String> {
    let entries = fs::read_dir(dir)
        .map_err(|e| format!("cannot read model repository {}: {e}", dir.display()))?;
    let root = fs::canonicalize(dir)
        .map_err(|e| format!("cannot read model repository {}: {e}", dir.display()))?;
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| !file_name(p).starts_with('.') && !file_name(p).starts_with('_'))
        .collect();
    folders.sort();
    let mut scan = RepositoryScan::default();
    for folder in folders {
        let name = file_name(&folder);
        let loaded = if resolves_inside(&root, &folder) {
            load_model(&folder, &name, None)
        } else if holds_model(&folder) {
            Err(NameError::Outside(name.clone()).to_string())
        } else {
            Ok(None)
        };
        match loaded {
            Ok(Some(spec)) => scan.models.push(spec),
            Ok(None) => scan.skipped.push(LoadError {
                model: name,
                error: NOT_A_MODEL.into(),
            }),
            Err(error) => scan.errors.push(LoadError { model: name, error }),
        }
    }
    Ok(scan)
}

/// Longest model name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Why a name given to load or unload a model is refused before any file
/// is read. Such a name leaves no trace: it is not a repository folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("'{0}' is not a model name: model names are 1 to {MAX_NAME_LEN} letters, digits, '-', '_' and '.', and start with a letter or digit")]
    Malformed(String),
    #[error("a model name is at most {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("model folder '{0}' resolves outside models.dir")]
    Outside(String),
}

/// Checks that `name` can name a model folder: 1 to [`MAX_NAME_LEN`] ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or digit. So
/// no separator, no `.` or `..`, and nothing the repository scan skips
/// (names starting with `.` or `_`).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !starts_well || !name.chars().all(allowed) {
        return Err(NameError::Malformed(name.to_string()));
    }
    Ok(())
}

/// Why one named model could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanOneError {
    /// The name is refused; nothing was read.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The folder holds a model that cannot be served.
    #[error("{0}")]
    Load(String),
}

/// Reads the one model folder `dir/name`; `Ok(None)` when it holds no
/// model. The name is checked first, and the folder must resolve (symbolic
/// links followed) inside `dir`.
pub fn scan_one(dir: &Path, name: &str) -> Result<Option<ModelSpec>, ScanOneError> {
    scan_one_with(dir, name, None)
}

/// [`scan_one`] with `overrides`: `model.toml` keys that replace the
/// file's (tables merge key by key), as a load request may ask. The merged
/// settings are checked like the file's own.
pub fn scan_one_with(
    dir: &Path,
    name: &str,
    overrides: Option<&LoadOverrides>,
) -> Result<Option<ModelSpec>, ScanOneError> {
    read_one(dir, name, overrides).map_err(|e| match e {
        ScanOneError::Load(why) => ScanOneError::Load(within_repository(dir, &why)),
        other => other,
    })
}

fn read_one(
    dir: &Path,
    name: &str,
    overrides: Option<&LoadOverrides>,
) -> Result<Option<ModelSpec>, ScanOneError> {
    check_name(name)?;
    let folder = dir.join(name);
    if !folder.is_dir() {
        return Ok(None);
    }
    let root = fs::canonicalize(dir).map_err(|e| {
        ScanOneError::Load(format!(
            "cannot read model repository {}: {e}",
            dir.display()
        ))
    })?;
    if !resolves_inside(&root, &folder) {
        return Err(NameError::Outside(name.to_string()).into());
    }
    load_model(&folder, name, overrides).map_err(ScanOneError::Load)
}

/// True when `folder`, symbolic links followed, is a folder strictly
/// inside `root` (canonical). One that cannot be resolved is not.
fn resolves_inside(root: &Path, folder: &Path) -> bool {
    fs::canonicalize(folder).is_ok_and(|resolved| resolved.starts_with(root) && resolved != root)
}

/// True when `folder` has a model file or settings, in either layout: a
/// folder without any (scripts, say) is not a model.
fn holds_model(folder: &Path) -> bool {
    folder.join("model.onnx").exists()
        || folder.join("model.toml").exists()
        || triton_config::is_triton_folder(folder)
}

/// Loads one folder; `Ok(None)` for a folder that holds no model at all
/// (neither `model.onnx` nor `model.toml`), such as a scripts folder.
fn load_model(
    folder: &Path,
    name: &str,
    overrides: Option<&LoadOverrides>,
) -> Result<Option<ModelSpec>, String> {
    if !holds_model(folder) {
        return Ok(None);
    }
    if let Err(e) = check_name(name) {
        return Err(format!("{}: {e}", folder.display()));
    }
    if triton_config::is_triton_folder(folder) {
        return load_triton_model(folder, name, overrides.map(|o| &o.triton)).map(Some);
    }
    let onnx_path = folder.join("model.onnx");
    let toml_path = folder.join("model.toml");
    let text = if toml_path.exists() {
        fs::read_to_string(&toml_path).map_err(|e| format!("{}: {e}", toml_path.display()))?
    } else {
        String::new()
    };
    let settings = match overrides {
        Some(overrides) => ModelSettings::with_overrides(&text, &overrides.settings, &toml_path)?,
        None => ModelSettings::parse(&text, &toml_path)?,
    };
    if !onnx_path.is_file() {
        return Err(format!("{}: file not found", onnx_path.display()));
    }
    let (version, bytes) =
        sha256_file(&onnx_path).map_err(|e| format!("{}: {e}", onnx_path.display()))?;
    let memory_mb = settings
        .memory_mb
        .unwrap_or_else(|| estimate_memory_mb(bytes));
    let labels = match &settings.output {
        OutputProcessing::Classes(classes) => classes
            .labels
            .as_deref()
            .map(|file| read_labels(&folder.join(file)))
            .transpose()?,
        _ => None,
    };
    Ok(Some(ModelSpec {
        name: name.to_string(),
        onnx_path,
        sha256: version.clone(),
        version,
        triton_config: None,
        settings,
        memory_mb,
        file_mb: bytes.div_ceil(1024 * 1024),
        labels,
    }))
}

/// Loads a folder in Triton's layout.
fn load_triton_model(
    folder: &Path,
    name: &str,
    overrides: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<ModelSpec, String> {
    let read = triton_config::read(folder, name, overrides)?;
    let (sha256, bytes) =
        sha256_file(&read.onnx_path).map_err(|e| format!("{}: {e}", read.onnx_path.display()))?;
    let labels = read.labels_file.as_deref().map(read_labels).transpose()?;
    Ok(ModelSpec {
        name: name.to_string(),
        onnx_path: read.onnx_path,
        version: read.version.to_string(),
        sha256,
        triton_config: Some(read.config),
        memory_mb: read
            .settings
            .memory_mb
            .unwrap_or_else(|| estimate_memory_mb(bytes)),
        settings: read.settings,
        file_mb: bytes.div_ceil(1024 * 1024),
        labels,
    })
}

/// A labels file: one label per line; blank lines at the end are ignored.
fn read_labels(path: &Path) -> Result<Vec<String>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let labels: Vec<String> = text
        .trim_end()
        .lines()
        .map(|line| line.trim().to_string())
        .collect();
    if labels.is_empty() || labels.iter().any(String::is_empty) {
        return Err(format!(
            "{}: a labels file holds one non-empty label per line",
            path.display()
        ));
    }
    Ok(labels)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// SHA-256 of a file (hex) and its size in bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DevicePreference, Placement};

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn defaults_apply_to_missing_keys() {
        let s = ModelSettings::parse("replicas = 3\n", Path::new("m/model.toml")).unwrap();
        assert_eq!(s.replicas, 3);
        assert_eq!(s.max_batch_size, 8);
        assert_eq!(s.batch_window_ms, 100);
        assert_eq!(s.queue_capacity, 1000);
    }

    #[test]
    fn errors_name_file_and_key() {
        let file = Path::new("models/m/model.toml");
        let unknown = ModelSettings::parse("replica = 2\n", file).unwrap_err();
        assert!(unknown.contains("models/m/model.toml"), "{unknown}");
        assert!(unknown.contains("replica"), "{unknown}");
        let wrong_type = ModelSettings::parse("max_batch_size = \"big\"\n", file).unwrap_err();
        assert!(wrong_type.contains("max_batch_size"), "{wrong_type}");
        let zero = ModelSettings::parse("max_batch_size = 0\n", file).unwrap_err();
        assert!(zero.contains("key `max_batch_size`"), "{zero}");
    }

    #[test]
    fn device_and_gpus_are_read_and_checked() {
        let file = Path::new("models/m/model.toml");
        let default = ModelSettings::parse("", file).unwrap();
        assert_eq!(default.placement(), Placement::default());
        assert_eq!(default.device, DevicePreference::Auto);
        let gpu = ModelSettings::parse("device = \"gpu\"\ngpus = [1, 0]\n", file).unwrap();
        assert_eq!(
            gpu.placement(),
            Placement {
                preference: DevicePreference::Gpu,
                gpus: Some(vec![1, 0])
            }
        );
        let cpu = ModelSettings::parse("device = \"cpu\"\n", file).unwrap();
        assert_eq!(cpu.placement(), Placement::cpu());
        for (text, named) in [
            ("device = \"tpu\"\n", "unknown variant `tpu`"),
            ("device = \"GPU\"\n", "unknown variant `GPU`"),
            ("gpus = []\n", "key `gpus` must list at least one"),
            ("gpus = [-1]\n", "gpus"),
            ("gpus = [0, 0]\n", "lists a GPU twice"),
            (
                "device = \"cpu\"\ngpus = [0]\n",
                "cannot be set with device = \"cpu\"",
            ),
        ] {
            let err = ModelSettings::parse(text, file).unwrap_err();
            assert!(
                err.contains(named) && err.contains("models/m/model.toml"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn one_bad_model_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "good/model.onnx", "not really onnx");
        write(dir.path(), "good/model.toml", "replicas = 2\n");
        write(dir.path(), "bad/model.onnx", "x");
        write(dir.path(), "bad/model.toml", "replicas = -1\n");
        write(dir.path(), "missing/model.toml", "");
        write(dir.path(), "scripts/build.py", "");
        let scan = scan(dir.path()).unwrap();
        let names: Vec<_> = scan.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        assert_eq!(scan.models[0].settings.replicas, 2);
        assert_eq!(scan.models[0].version.len(), 64);
        let failed: Vec<_> = scan.errors.iter().map(|e| e.model.as_str()).collect();
        assert_eq!(failed, ["bad", "missing"]);
        assert!(scan.errors[0].error.contains("bad/model.toml"));
    }

    #[test]
    fn labels_are_read_and_a_missing_file_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let classes = "[output]\nkind = \"classes\"\nlabels = \"labels.txt\"\n";
        write(dir.path(), "calls/model.onnx", "x");
        write(dir.path(), "calls/model.toml", classes);
        write(dir.path(), "calls/labels.txt", "owl\nfrog\n\n");
        write(dir.path(), "nolabels/model.onnx", "x");
        write(dir.path(), "nolabels/model.toml", classes);
        let scan = scan(dir.path()).unwrap();
        assert_eq!(
            scan.models[0].labels.as_deref(),
            Some(&["owl".to_string(), "frog".into()][..])
        );
        assert_eq!(scan.errors[0].model, "nolabels");
        assert!(
            scan.errors[0].error.contains("labels.txt"),
            "{}",
            scan.errors[0].error
        );
    }

    #[test]
    fn errors_and_labels_name_files_within_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "m/model.onnx", "x");
        write(dir.path(), "m/model.toml", "replicas = -1\n");
        write(dir.path(), "t/7/model.onnx", "x");
        let scan = scan(dir.path()).unwrap();
        let root = dir.path().display().to_string();
        assert!(
            scan.errors[0].error.starts_with("m/model.toml: "),
            "{}",
            scan.errors[0].error
        );
        assert!(!scan.errors[0].error.contains(&root));
        assert_eq!(scan.models[0].file_label(), "t/7/model.onnx");
        let gone = within_repository(dir.path(), &format!("cannot read {root}: gone"));
        assert_eq!(gone, "cannot read models.dir: gone");
    }

    #[test]
    fn model_names_are_names() {
        for good in ["a", "unet-seg", "tiny_classifier", "v1.2", "A9", "a..b"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        let long = "n".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "", ".", "..", ".hidden", "_private", "-flag", "a/b", "../a", "a\\b", "a b", "a\0",
            "é", &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} passed");
        }
        assert_eq!(check_name(&"n".repeat(MAX_NAME_LEN)), Ok(()));
    }

    #[test]
    fn a_folder_must_resolve_inside_the_repository() {
        let outer = tempfile::tempdir().unwrap();
        write(outer.path(), "model.onnx", "x");
        write(outer.path(), "elsewhere/model.onnx", "x");
        write(outer.path(), "elsewhere-scripts/run.py", "");
        let dir = outer.path().join("models");
        write(&dir, "a/model.onnx", "x");
        std::os::unix::fs::symlink(outer.path().join("elsewhere"), dir.join("out")).unwrap();
        std::os::unix::fs::symlink(outer.path().join("elsewhere-scripts"), dir.join("tools"))
            .unwrap();
        std::os::unix::fs::symlink(dir.join("a"), dir.join("alias")).unwrap();
        assert_eq!(
            scan_one(&dir, ".."),
            Err(ScanOneError::Name(NameError::Malformed("..".into())))
        );
        assert_eq!(
            scan_one(&dir, "out"),
            Err(ScanOneError::Name(NameError::Outside("out".into())))
        );
        assert_eq!(scan_one(&dir, "alias").unwrap().unwrap().name, "alias");
        assert_eq!(scan_one(&dir, "nope"), Ok(None));
        let scan = scan(&dir).unwrap();
        let served: Vec<_> = scan.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(served, ["a", "alias"]);
        assert_eq!(scan.errors.len(), 1, "{:?}", scan.errors);
        assert_eq!(scan.errors[0].model, "out");
        assert!(scan.errors[0].error.contains("outside models.dir"));
    }
}
