//! What the machine charges for the two things every userspace hop does:
//! a system call and a context switch, measured on the pinned phase's CPU
//! at the start of a run. They give the floor under any proxy that runs as a
//! process: in the pinned phase client, proxy and server share one CPU, so a
//! request through a proxy costs two more context switches than a direct one
//! (client → proxy → server → proxy → client instead of client → server →
//! client), plus the proxy's own system calls and work.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::FromRawFd,
    thread,
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::loadgen::set_affinity;

/// Nanoseconds, each the least of a few repetitions (interference only adds).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Costs {
    /// One trivial system call (`getppid`).
    pub syscall_ns: f64,
    /// One context switch between two threads on one CPU.
    pub switch_ns: f64,
}

const REPEATS: usize = 5;
const ROUNDS: u32 = 20_000;

/// Measures on `cpu`, from a thread of its own (the caller's CPU affinity,
/// which the processes it starts inherit, stays as it is).
pub fn measure(cpu: usize) -> Result<Costs> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                set_affinity(0, Some(cpu))?;
                let syscall_ns = least(syscall_once);
                let pair_ns = least(|| pipe_pair_once().unwrap_or(f64::INFINITY));
                let round_trip_ns = least(|| ping_pong_once(cpu).unwrap_or(f64::INFINITY));
                ensure!(
                    pair_ns.is_finite() && round_trip_ns.is_finite(),
                    "the pipe measurements failed"
                );
                // A round trip is two switches plus, on each side, one write
                // and one read; `pair_ns` is a write and a read with nobody
                // to switch to.
                Ok(Costs {
                    syscall_ns,
                    switch_ns: ((round_trip_ns - 2.0 * pair_ns) / 2.0).max(0.0),
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
    })
}

fn least(mut f: impl FnMut() -> f64) -> f64 {
    (0..REPEATS).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn per_round(started: Instant) -> f64 {
    started.elapsed().as_nanos() as f64 / f64::from(ROUNDS)
}

fn syscall_once() -> f64 {
    let started = Instant::now();
    for _ in 0..ROUNDS {
        // SAFETY: getppid has no preconditions; the raw call keeps libc from
        // answering out of a cache.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    per_round(started)
}

fn pipe() -> Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// A one-byte write and read on one pipe, one thread: no switch.
fn pipe_pair_once() -> Result<f64> {
    let (mut r, mut w) = pipe()?;
    let mut b = [0u8; 1];
    let started = Instant::now();
    for _ in 0..ROUNDS {
        w.write_all(&b)?;
        r.read_exact(&mut b)?;
    }
    Ok(per_round(started))
}

/// Two threads on `cpu` passing one byte back and forth over two pipes:
/// each round trip is two context switches.
fn ping_pong_once(cpu: usize) -> Result<f64> {
    let (mut to_r, mut to_w) = pipe()?;
    let (mut back_r, mut back_w) = pipe()?;
    let echo = thread::spawn(move || -> Result<()> {
        set_affinity(0, Some(cpu))?;
        let mut b = [0u8; 1];
        for _ in 0..ROUNDS {
            to_r.read_exact(&mut b)?;
            back_w.write_all(&b)?;
        }
        Ok(())
    });
    let mut b = [0u8; 1];
    let started = Instant::now();
    let mut run = || -> Result<()> {
        for _ in 0..ROUNDS {
            to_w.write_all(&b)?;
            back_r.read_exact(&mut b)?;
        }
        Ok(())
    };
    let ran = run();
    let took = per_round(started);
    // On a failure here the echo thread sees its pipe close and ends.
    drop(to_w);
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?;
    ran?;
    echoed?;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::super::loadgen::allowed_cpus;
    use super::*;

    #[test]
    fn costs_are_positive_and_ordered() {
        let before = allowed_cpus();
        let c = measure(0).unwrap();
        // The caller's own affinity is untouched.
        assert_eq!(allowed_cpus(), before);
        assert!(c.syscall_ns > 1.0 && c.syscall_ns < 100_000.0, "{c:?}");
        // A switch goes through the scheduler: dearer than a bare syscall.
        assert!(c.switch_ns > c.syscall_ns, "{c:?}");
    }
}
