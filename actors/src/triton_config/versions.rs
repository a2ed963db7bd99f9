//! Version folders (`<model>/<n>/`) and the one `version_policy` selects.

use std::fs;
use std::path::{Path, PathBuf};

use super::text::VersionPolicy;

/// The numbered version folders of `folder` (`<n>/`, n >= 1), by number.
pub(super) fn version_folders(folder: &Path) -> Vec<(u64, PathBuf)> {
    let mut versions: Vec<(u64, PathBuf)> = fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.parse().ok().filter(|&n| n > 0)?;
            // "01" is not version 1's folder.
            (n.to_string() == name).then(|| (n, e.path()))
        })
        .collect();
    versions.sort();
    versions
}

/// The one version `policy` selects among the folder's version folders.
pub(super) fn select_version(folder: &Path, policy: Option<&VersionPolicy>) -> Result<u64, String> {
    let present: Vec<u64> = version_folders(folder)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if present.is_empty() {
        return Err("no version folder (such as 1/ holding model.onnx) next to it".into());
    }
    let selected: Vec<u64> = match policy {
        None => present.last().copied().into_iter().collect(),
        Some(VersionPolicy::Latest { num_versions }) => {
            if *num_versions == 0 {
                return Err("version_policy.latest.num_versions must be at least 1".into());
            }
            let n = usize::try_from(*num_versions).unwrap_or(usize::MAX);
            present.iter().rev().take(n).rev().copied().collect()
        }
        Some(VersionPolicy::All {}) => present.clone(),
        Some(VersionPolicy::Specific { versions }) => {
            let mut wanted = Vec::new();
            for &v in versions {
                let v = u64::try_from(v)
                    .ok()
                    .filter(|v| present.contains(v))
                    .ok_or_else(|| {
                        format!("version_policy.specific names version {v}, which has no folder")
                    })?;
                if !wanted.contains(&v) {
                    wanted.push(v);
                }
            }
            wanted
        }
    };
    match selected.as_slice() {
        [one] => Ok(*one),
        [] => Err("version_policy selects no version".into()),
        several => Err(format!(
            "version_policy selects versions {several:?}; Gantry serves one version of a model at a time"
        )),
    }
}
