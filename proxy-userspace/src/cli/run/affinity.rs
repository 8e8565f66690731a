//! CPU affinity: which CPUs the process may use, and pinning a worker to one
//! (`pin_workers`).

/// The CPUs the calling thread may run on (the process's cgroup's cpuset,
/// say), in order.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data, filled in by the kernel; CPU_ISSET
    // reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Pins `thread` (a live thread of this process) to `cpu`.
pub fn pin(thread: libc::pthread_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: as above; CPU_SET writes inside the set (cpu came from
    // `allowed_cpus`, so it is below CPU_SETSIZE), and the JoinHandle the
    // caller holds keeps `thread` valid.
    let err = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::pthread_setaffinity_np(thread, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    Ok(())
}
