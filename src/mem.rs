//! Memory helpers for the large-list paths.

/// The process's peak resident memory so far (MiB), for the phase timings that
/// debug logging shows; 0 where `/proc` is not available.
pub fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Frees a large structure on another thread. A million small allocations take
/// tens of milliseconds to free; a one-shot CLI run exits without waiting, a
/// daemon frees them in the background.
pub fn dispose<T: Send + 'static>(garbage: T) {
    let spawned = std::thread::Builder::new().name("rcptsync-free".into()).spawn(move || drop(garbage));
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "could not free in the background");
    }
}

/// Page-faults the unused capacity of a vector on another thread, ahead of its
/// being filled. A fresh page costs the kernel a zeroing at first write (on a
/// virtual machine much more), and the big vectors of a merge are filled by
/// one thread: this lets an idle core take those faults first. The contents
/// are not touched (`MADV_POPULATE_WRITE`, Linux 5.14+; elsewhere a no-op).
/// Join the handle before the vector grows or is dropped.
pub fn prefault<T>(v: &Vec<T>) -> Option<std::thread::JoinHandle<()>> {
    prefault_spare(v.as_ptr().cast(), std::mem::size_of_val(v.as_slice()), v.capacity() * std::mem::size_of::<T>())
}

/// [`prefault`] for a string's unused capacity.
pub fn prefault_str(s: &String) -> Option<std::thread::JoinHandle<()>> {
    prefault_spare(s.as_ptr(), s.len(), s.capacity())
}

fn prefault_spare(base: *const u8, used: usize, capacity: usize) -> Option<std::thread::JoinHandle<()>> {
    const PAGE: usize = 4096;
    let (start, end) = (base as usize + used, base as usize + capacity);
    let (start, end) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
    if end <= start + (1 << 20) {
        return None;
    }
    std::thread::Builder::new()
        .name("rcptsync-prefault".into())
        .spawn(move || {
            // SAFETY: advice on whole pages of a live allocation (the caller joins
            // before freeing it); MADV_POPULATE_WRITE maps them in and never
            // changes their contents.
            let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
        })
        .ok()
}
