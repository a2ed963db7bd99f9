//! Triton's system shared memory extension, the core side: a registry of
//! named windows (`offset`, `byte_size`) into POSIX shared memory objects,
//! held by the inference service for HTTP and gRPC alike. An infer request
//! may then name a region instead of carrying a tensor's bytes: its inputs
//! are copied out of the region and its outputs into one
//! (`crate::service::shared_tensors`; the registration routes are
//! `crate::api::shm_regions` and the gRPC RPCs).
//!
//! How an object is reached: `shm_open("/name")` on Linux opens
//! `/dev/shm/name`, so a region's key must be a shared memory name (one
//! optional leading `/`, then a file name without `/`, not `.` and without
//! `..`): anything else is refused before any file is touched, so a client
//! cannot make the server open an arbitrary file. The file is opened
//! read-write with `O_NOFOLLOW | O_NONBLOCK` (as glibc's `shm_open` does
//! with the first), and must be a regular file (not a FIFO or device node)
//! at least `offset + byte_size` long.
//!
//! Why no mapping: a registered region keeps the object's file descriptor
//! open and copies with `pread`/`pwrite` at `offset + ...`
//! (`std::os::unix::fs::FileExt`), instead of `mmap`ing the window. On
//! Linux a shared memory object is a tmpfs file, so these read and write
//! the very pages the client has mapped, in one copy, as a copy out of a
//! mapping would. What it spares: `unsafe` code, and a crash. A process
//! that shrinks its object (`ftruncate`) after registering it would make a
//! copy out of a mapping fault with SIGBUS and kill the server (Triton has
//! that hazard); `pread` past the end just comes up short, answered 422.
//! Before writing, the object's current size is checked too, so an output
//! never grows a shrunk object. No crate is needed beyond `libc` for the
//! `O_*` flags (their values differ between architectures); `memmap2`'s
//! `MmapRaw` (raw pointers only, meant for memory shared with untrusted
//! processes) would be the choice should copies ever need to be avoided.
//!
//! Every offset and size a request gives is checked against the region
//! with checked arithmetic before any byte moves: nothing is read or
//! written outside the window. A region dropped from the registry while a
//! request still copies stays open until that request lets go of it.
//! Unregistering, and dropping the registry at shutdown, close the objects.
//! Errors are [`ApiError`]s: 400 for registration and unknown names, 422
//! for a request's offsets and sizes that do not fit.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::error::ApiError;

/// Where Linux keeps POSIX shared memory objects.
const SHM_DIR: &str = "/dev/shm";
/// The longest file name (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// A registered region as Triton's status lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RegionStatus {
    pub name: String,
    /// The shared memory object's name, as registered (`/input0`).
    pub key: String,
    /// Where the region starts in the object, in bytes.
    pub offset: u64,
    pub byte_size: u64,
}

/// Every registered region, by name.
#[derive(Default)]
pub struct SharedMemoryRegistry {
    regions: RwLock<BTreeMap<String, Arc<Region>>>,
}

impl SharedMemoryRegistry {
    /// Opens the object `key` and registers `byte_size` bytes of it from
    /// `offset` as `name`; 400 when the key is not a shared memory name,
    /// the object cannot be opened, the window does not fit in it, or the
    /// name is taken.
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), ApiError> {
        let invalid = |why: String| {
            ApiError::BadRequest(format!(
                "failed to register shared memory region '{name}': {why}"
            ))
        };
        if name.is_empty() {
            return Err(invalid("the name is empty".into()));
        }
        let path = object_path(key).map_err(invalid)?;
        if self.read().contains_key(name) {
            return Err(already_registered(name));
        }
        if byte_size == 0 {
            return Err(invalid("byte_size must be positive".into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => invalid(format!(
                    "unable to open shared memory object '{key}': no such object"
                )),
                _ => invalid(format!("unable to open shared memory object '{key}': {e}")),
            })?;
        let metadata = file
            .metadata()
            .map_err(|e| invalid(format!("cannot read the size of '{key}': {e}")))?;
        if !metadata.is_file() {
            return Err(invalid(format!("'{key}' is not a shared memory object")));
        }
        let object_size = metadata.len();
        match offset.checked_add(byte_size) {
            Some(end) if end <= object_size => {}
            _ => {
                return Err(invalid(format!(
                    "invalid args: offset {offset} + byte_size {byte_size} exceeds the \
                     {object_size} bytes of '{key}'"
                )))
            }
        }
        // Within the object, so within u64; a request's window must fit usize.
        let window = usize::try_from(byte_size)
            .map_err(|_| invalid(format!("byte_size {byte_size} is too large")))?;
        let region = Region {
            status: RegionStatus {
                name: name.to_string(),
                key: key.to_string(),
                offset,
                byte_size,
            },
            window,
            file,
        };
        let mut regions = self.write();
        if regions.contains_key(name) {
            return Err(already_registered(name));
        }
        regions.insert(name.to_string(), Arc::new(region));
        Ok(())
    }

    /// Drops `name`; true when it was registered (Triton answers success
    /// either way).
    pub fn unregister(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }

    /// Drops every region; how many there were.
    pub fn unregister_all(&self) -> usize {
        std::mem::take(&mut *self.write()).len()
    }

    /// Every region, by name; or the one named, 400 when there is none.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, ApiError> {
        let regions = self.read();
        match name {
            None => Ok(regions.values().map(|r| r.status.clone()).collect()),
            Some(name) => regions
                .get(name)
                .map(|r| vec![r.status.clone()])
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "Unable to find system shared memory region: '{name}'"
                    ))
                }),
        }
    }

    /// The region named `name`, for one request to copy with; 400 when
    /// there is none.
    pub fn region(&self, name: &str) -> Result<Arc<Region>, ApiError> {
        self.read().get(name).cloned().ok_or_else(|| {
            ApiError::BadRequest(format!("Unable to find shared memory region: '{name}'"))
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn already_registered(name: &str) -> ApiError {
    ApiError::BadRequest(format!("shared memory region '{name}' already in manager"))
}

/// The file behind the shared memory name `key`, or why it is not one.
fn object_path(key: &str) -> Result<PathBuf, String> {
    let name = key.strip_prefix('/').unwrap_or(key);
    let refuse = |why: &str| {
        Err(format!(
            "key '{key}' is not a shared memory name ({why}; expected '/name')"
        ))
    };
    if name.is_empty() {
        return refuse("it names nothing");
    }
    if name.len() > NAME_MAX {
        return refuse("it is longer than 255 bytes");
    }
    if name.contains('/') {
        return refuse("only one leading '/' is allowed");
    }
    if name == "." || name.contains("..") {
        return refuse("'.' and '..' are not allowed");
    }
    if name.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    Ok(PathBuf::from(SHM_DIR).join(name))
}

/// The range `offset..offset + len` when it lies within `size` bytes.
fn window(size: usize, offset: usize, len: usize) -> Option<Range<usize>> {
    let end = offset.checked_add(len)?;
    (end <= size).then_some(offset..end)
}

/// One registered window into a shared memory object.
pub struct Region {
    status: RegionStatus,
    /// `status.byte_size`, as a length in memory.
    window: usize,
    /// The object, open read-write; closed when the last holder drops it.
    file: File,
}

impl Region {
    pub fn status(&self) -> &RegionStatus {
        &self.status
    }

    /// Where `len` bytes from `offset` (relative to the region's start) lie
    /// in the object; 422 when they leave the region.
    fn span(&self, offset: usize, len: usize, what: &str) -> Result<u64, ApiError> {
        window(self.window, offset, len)
            .and_then(|r| self.status.offset.checked_add(r.start as u64))
            .ok_or_else(|| {
                ApiError::InvalidTensor(format!(
                    "{what}: offset {offset} + byte_size {len} exceeds the {} bytes of shared \
                     memory region '{}'",
                    self.window, self.status.name
                ))
            })
    }

    /// Checks that `len` bytes from `offset` lie within the region (422).
    pub fn check(&self, offset: usize, len: usize, what: &str) -> Result<(), ApiError> {
        self.span(offset, len, what).map(|_| ())
    }

    /// A copy of `len` bytes from `offset`; 422 when they leave the region
    /// or the object no longer holds them.
    pub fn read(&self, offset: usize, len: usize, what: &str) -> Result<Vec<u8>, ApiError> {
        let at = self.span(offset, len, what)?;
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, at)
            .map_err(|e| self.failed(what, "read", e))?;
        Ok(bytes)
    }

    /// Writes `bytes` at `offset`; 422 when they would leave the region or
    /// the object has shrunk below it (a write never grows it).
    pub fn write(&self, offset: usize, bytes: &[u8], what: &str) -> Result<(), ApiError> {
        let at = self.span(offset, bytes.len(), what)?;
        let size = self
            .file
            .metadata()
            .map_err(|e| self.failed(what, "write", e))?
            .len();
        if at
            .checked_add(bytes.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(self.failed(
                what,
                "write",
                std::io::Error::other(format!("the object shrank to {size} bytes")),
            ));
        }
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| self.failed(what, "write", e))
    }

    fn failed(&self, what: &str, doing: &str, e: std::io::Error) -> ApiError {
        let why = match e.kind() {
            ErrorKind::UnexpectedEof => "the object shrank since it was registered".to_string(),
            _ => e.to_string(),
        };
        ApiError::InvalidTensor(format!(
            "{what}: cannot {doing} shared memory region '{}' (key '{}'): {why}",
            self.status.name, self.status.key
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_checked_without_overflow() {
        assert_eq!(window(64, 0, 64), Some(0..64));
        assert_eq!(window(64, 16, 48), Some(16..64));
        assert_eq!(window(64, 64, 0), Some(64..64));
        assert_eq!(window(64, 0, 65), None);
        assert_eq!(window(64, 60, 8), None);
        assert_eq!(window(64, 65, 0), None);
        assert_eq!(window(64, usize::MAX, 1), None);
        assert_eq!(window(64, 1, usize::MAX), None);
        assert_eq!(
            window(usize::MAX, usize::MAX - 32, 32),
            Some(usize::MAX - 32..usize::MAX)
        );
        assert_eq!(window(usize::MAX, usize::MAX - 31, 32), None);
    }

    #[test]
    fn keys_must_be_shared_memory_names() {
        assert_eq!(
            object_path("/input0").unwrap(),
            PathBuf::from("/dev/shm/input0")
        );
        assert_eq!(
            object_path("input0").unwrap(),
            PathBuf::from("/dev/shm/input0")
        );
        assert_eq!(
            object_path("/a.b_c-1").unwrap(),
            PathBuf::from("/dev/shm/a.b_c-1")
        );
        let long = format!("/{}", "x".repeat(256));
        for key in [
            "",
            "/",
            "//x",
            "/../etc/passwd",
            "/a/b",
            "../x",
            "/..",
            "..",
            "/.",
            "/x\0",
            "/etc/passwd",
            "a/",
            &long,
        ] {
            assert!(object_path(key).is_err(), "{key:?} accepted");
        }
    }

    /// A shared memory object of `size` bytes under /dev/shm, removed on drop.
    struct Object(String);

    impl Object {
        fn new(tag: &str, bytes: &[u8]) -> Object {
            let key = format!("/gantry-test-{}-{tag}", std::process::id());
            std::fs::write(object_path(&key).unwrap(), bytes).unwrap();
            Object(key)
        }
    }

    impl Drop for Object {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(object_path(&self.0).unwrap());
        }
    }

    fn status_of(e: ApiError) -> u16 {
        actix_web::ResponseError::status_code(&e).as_u16()
    }

    #[test]
    fn register_checks_the_window_against_the_object() {
        let object = Object::new("register", &[7u8; 64]);
        let registry = SharedMemoryRegistry::default();
        for (offset, size) in [
            (0, 65),
            (1, 64),
            (64, 1),
            (u64::MAX, 2),
            (2, u64::MAX),
            (0, 0),
        ] {
            let e = registry.register("r", &object.0, offset, size).unwrap_err();
            assert_eq!(status_of(e), 400, "offset {offset} byte_size {size}");
        }
        let e = registry
            .register("r", "/gantry-test-no-such-object", 0, 1)
            .unwrap_err();
        assert_eq!(status_of(e), 400);
        let e = registry.register("r", "/../etc/passwd", 0, 1).unwrap_err();
        assert_eq!(status_of(e), 400);
        registry.register("r", &object.0, 16, 48).unwrap();
        let e = registry.register("r", &object.0, 0, 8).unwrap_err();
        assert!(e.to_string().contains("already in manager"), "{e}");
        assert_eq!(
            registry.status(None).unwrap(),
            vec![RegionStatus {
                name: "r".into(),
                key: object.0.clone(),
                offset: 16,
                byte_size: 48,
            }]
        );
        assert_eq!(status_of(registry.status(Some("other")).unwrap_err()), 400);
        assert_eq!(status_of(registry.region("other").err().unwrap()), 400);
        assert!(registry.unregister("r"));
        assert!(!registry.unregister("r"));
        assert!(registry.status(None).unwrap().is_empty());
    }

    #[test]
    fn copies_stay_within_the_region() {
        let bytes: Vec<u8> = (0..64).collect();
        let object = Object::new("copies", &bytes);
        let registry = SharedMemoryRegistry::default();
        registry.register("r", &object.0, 16, 32).unwrap();
        let region = registry.region("r").unwrap();
        assert_eq!(region.read(0, 4, "x").unwrap(), vec![16, 17, 18, 19]);
        assert_eq!(region.read(28, 4, "x").unwrap(), vec![44, 45, 46, 47]);
        for (offset, len) in [(29, 4), (32, 1), (0, 33), (usize::MAX, 1), (1, usize::MAX)] {
            let e = region.read(offset, len, "x").unwrap_err();
            assert_eq!(status_of(e), 422, "read offset {offset} len {len}");
            let e = region.check(offset, len, "x").unwrap_err();
            assert_eq!(status_of(e), 422, "check offset {offset} len {len}");
        }
        region.write(30, &[0xAA, 0xBB], "y").unwrap();
        assert_eq!(status_of(region.write(31, &[1, 2], "y").unwrap_err()), 422);
        let now = std::fs::read(object_path(&object.0).unwrap()).unwrap();
        assert_eq!(&now[46..48], &[0xAA, 0xBB]);
        assert_eq!(now[48], 48, "nothing written past the region");
        assert_eq!(now.len(), 64);

        // The object shrinks under the region: reads and writes answer 422
        // and the object does not grow back.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(object_path(&object.0).unwrap())
            .unwrap();
        file.set_len(20).unwrap();
        assert_eq!(status_of(region.read(0, 8, "x").unwrap_err()), 422);
        assert_eq!(status_of(region.write(0, &[1; 8], "y").unwrap_err()), 422);
        assert_eq!(file.metadata().unwrap().len(), 20);

        // Unregistered while held: the holder still copies, then lets go.
        assert_eq!(registry.unregister_all(), 1);
        assert_eq!(region.read(0, 4, "x").unwrap(), vec![16, 17, 18, 19]);
    }

    #[test]
    fn only_regular_files_are_objects() {
        let registry = SharedMemoryRegistry::default();
        let key = format!("/gantry-test-{}-dir", std::process::id());
        let path = object_path(&key).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = registry.register("d", &key, 0, 1);
        std::fs::remove_dir(&path).unwrap();
        assert_eq!(status_of(e.unwrap_err()), 400);

        // A link in /dev/shm to a file elsewhere is not followed.
        let target = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(target.path(), [1u8; 16]).unwrap();
        let key = format!("/gantry-test-{}-link", std::process::id());
        let path = object_path(&key).unwrap();
        std::os::unix::fs::symlink(target.path(), &path).unwrap();
        let e = registry.register("l", &key, 0, 16);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(status_of(e.unwrap_err()), 400);
        assert!(registry.status(None).unwrap().is_empty());
    }
}
