//! Where each device's budget total comes from: a GPU's memory from NVML
//! (times `memory.gpu_fraction`); the CPU's from `memory.limit_mb` when
//! set, else from the container's cgroup memory limit (v2 `memory.max`, v1
//! `memory.limit_in_bytes`), else from the machine's RAM.

use std::path::Path;

/// Where a device's total came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// NVML reported the GPU's memory.
    Nvml,
    /// The cgroup (container) memory limit.
    Cgroup,
    /// `memory.limit_mb` from configuration.
    Config,
    /// The system's RAM.
    SystemRam,
}

impl MemorySource {
    pub fn as_str(self) -> &'static str {
        match self {
            MemorySource::Nvml => "nvml",
            MemorySource::Cgroup => "cgroup",
            MemorySource::Config => "config",
            MemorySource::SystemRam => "system_ram",
        }
    }
}

/// Share of the cgroup limit or of RAM replicas may reserve: the rest is
/// left to the process's other memory (uploads, caches, the runtime).
const CPU_SHARE: (u64, u64) = (3, 4);

/// The CPU budget's total in MB and where it came from.
pub fn cpu_total_mb(limit_mb: Option<u64>) -> (MemorySource, u64) {
    if let Some(limit) = limit_mb {
        return (MemorySource::Config, limit);
    }
    let ram = system_ram_mb();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|membership| cgroup_limit_bytes(&membership, Path::new("/sys/fs/cgroup")))
        .map(|bytes| bytes / MIB)
        .filter(|&mb| mb < ram);
    let (source, mb) = match cgroup {
        Some(mb) => (MemorySource::Cgroup, mb),
        None => (MemorySource::SystemRam, ram),
    };
    (source, mb * CPU_SHARE.0 / CPU_SHARE.1)
}

const MIB: u64 = 1024 * 1024;

/// The memory limit, in bytes, of the cgroup a process belongs to:
/// `membership` is its `/proc/<pid>/cgroup`, `root` where the cgroup file
/// systems are mounted (`/sys/fs/cgroup`). The smallest limit set on the
/// process's cgroup or any cgroup above it counts; `None` when none is set.
///
/// Inside a container the membership path is often the host's
/// (`/docker/<id>`) while the container sees its own cgroup at the mount's
/// root, so the root itself is read too.
pub fn cgroup_limit_bytes(membership: &str, root: &Path) -> Option<u64> {
    let mut limits = Vec::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // v2: "0::/path"; v1: "4:memory:/path" (or "4:memory,other:/path").
        let (folder, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut at = Some(Path::new(path.trim()));
        while let Some(dir) = at {
            let relative = dir.strip_prefix("/").unwrap_or(dir);
            if let Some(limit) = read_limit(&folder.join(relative).join(file)) {
                limits.push(limit);
            }
            at = dir.parent();
        }
    }
    limits.into_iter().min()
}

/// A limit file's value; `None` for `max` (v2), for v1's "no limit" (a
/// page-rounded `i64::MAX`) and for a file that is not there.
fn read_limit(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let value: u64 = text.trim().parse().ok()?;
    (value < (1 << 62)).then_some(value)
}

/// Total RAM from `/proc/meminfo`, or 4 GiB when it cannot be read.
pub fn system_ram_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cgroup_v2_reads_memory_max_up_the_tree() {
        let root = tempfile::tempdir().unwrap();
        let membership = "0::/kubepods/pod1/gantry\n";
        // No limit anywhere.
        write(root.path(), "kubepods/pod1/gantry/memory.max", "max\n");
        assert_eq!(cgroup_limit_bytes(membership, root.path()), None);
        // The pod's limit counts for the container under it.
        write(root.path(), "kubepods/pod1/memory.max", "4294967296\n");
        assert_eq!(cgroup_limit_bytes(membership, root.path()), Some(4 << 30));
        // The smallest limit wins.
        write(
            root.path(),
            "kubepods/pod1/gantry/memory.max",
            "2147483648\n",
        );
        assert_eq!(cgroup_limit_bytes(membership, root.path()), Some(2 << 30));
    }

    #[test]
    fn cgroup_v2_inside_a_container_reads_the_mount_root() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "memory.max", "1073741824\n");
        assert_eq!(cgroup_limit_bytes("0::/\n", root.path()), Some(1 << 30));
        // A host path the container cannot see falls back to its root.
        assert_eq!(
            cgroup_limit_bytes("0::/docker/abc\n", root.path()),
            Some(1 << 30)
        );
    }

    #[test]
    fn cgroup_v1_reads_the_memory_controller_and_ignores_no_limit() {
        let root = tempfile::tempdir().unwrap();
        let membership =
            "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n";
        write(
            root.path(),
            "memory/docker/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(cgroup_limit_bytes(membership, root.path()), None);
        write(
            root.path(),
            "memory/docker/abc/memory.limit_in_bytes",
            "536870912\n",
        );
        assert_eq!(cgroup_limit_bytes(membership, root.path()), Some(512 << 20));
        // The cpu controller's files are not memory limits.
        write(root.path(), "cpu,cpuacct/docker/abc/memory.max", "1\n");
        assert_eq!(cgroup_limit_bytes(membership, root.path()), Some(512 << 20));
    }

    #[test]
    fn no_cgroup_file_means_no_limit() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_limit_bytes("0::/\n", root.path()), None);
        assert_eq!(cgroup_limit_bytes("garbage", root.path()), None);
    }

    #[test]
    fn the_configured_limit_wins() {
        assert_eq!(cpu_total_mb(Some(1234)), (MemorySource::Config, 1234));
        let (source, mb) = cpu_total_mb(None);
        assert!(matches!(
            source,
            MemorySource::Cgroup | MemorySource::SystemRam
        ));
        assert!(mb > 0 && mb <= system_ram_mb());
    }
}
