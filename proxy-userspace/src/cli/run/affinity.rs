//! CPU affinity: which CPUs the process may use, and pinning a worker to one
//! (`pin_workers`).

use std::{io, mem::size_of, os::unix::thread::JoinHandleExt, thread::JoinHandle};

/// The CPUs the calling thread may run on (the process's cgroup's cpuset,
/// say), in order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let mut set = empty_set();
    // SAFETY: the kernel writes at most the size passed, which is `set`'s
    // own, into `set`, a live local; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads the set (its array index is
        // bounds-checked, and `c` is below CPU_SETSIZE anyway).
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the thread that `handle` runs to `cpu` (one of `allowed_cpus`).
pub fn pin<T>(handle: &JoinHandle<T>, cpu: usize) -> io::Result<()> {
    let set = only(cpu);
    // SAFETY: a thread's pthread_t stays valid until it is joined or
    // detached, and the borrowed JoinHandle, which alone can do either, is
    // alive for the call; the kernel reads `set` (a live local) up to the
    // size passed, its own.
    let err = unsafe {
        libc::pthread_setaffinity_np(handle.as_pthread_t(), size_of::<libc::cpu_set_t>(), &set)
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Pins the calling thread to `cpu` (one of `allowed_cpus`); the threads
/// it starts from then on inherit the mask.
pub fn pin_current(cpu: usize) -> io::Result<()> {
    let set = only(cpu);
    // SAFETY: pid 0 is the calling thread; the kernel reads `set` (a live
    // local) up to the size passed, its own.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The set of `cpu` alone.
fn only(cpu: usize) -> libc::cpu_set_t {
    let mut set = empty_set();
    // SAFETY: CPU_SET writes only inside the set: its array index is
    // bounds-checked, so a `cpu` past CPU_SETSIZE panics.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

fn empty_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is an array of integers, for which all zeros is a
    // valid value: the empty set.
    unsafe { std::mem::zeroed() }
}
