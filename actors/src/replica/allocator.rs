//! The process's memory after an engine is gone: what an evicted or
//! scaled-down replica held must leave the process, or the room the budget
//! shows would not be room the system has.

/// Makes glibc serve every allocation of 1 MiB or more with its own
/// mapping, given back to the system when freed. By default the threshold
/// rises to the largest block freed (up to 32 MiB), so once one model's
/// weights were freed the next model's would land in the heap, where
/// freeing them fragments it and the process never shrinks: after an
/// eviction the room the budget shows would not be room the system has.
/// Set once, before the first engine loads.
pub(super) fn return_large_blocks_to_the_system() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets the allocator's tuning parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    });
}

/// Returns the heap's free memory to the system once an engine is gone
/// (evicted, scaled down, reloaded): glibc keeps freed chunks below its
/// mmap threshold in the heap, so without this the process's resident
/// memory would stay at its peak, and loading another model in the room an
/// eviction made would grow it past the budget.
pub(super) fn give_freed_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes the arena locks itself and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
