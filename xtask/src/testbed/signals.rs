//! Ctrl-C for programs that run the bed (`cargo xtask demo`, `bench`):
//! SIGINT, SIGTERM or SIGHUP tears down every live node, then exits.

use std::sync::{Mutex, Once};

use anyhow::{Result, bail};

use super::node;

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and starts a
/// thread that waits for them with `sigwait`; on one, it tears down every
/// live node of the process and exits with 128 + the signal number.
///
/// Call it first thing in `main`, before any other thread starts: threads
/// inherit the blocked mask, and a thread that does not block the signals
/// would take the default action (die without a teardown). Children started
/// with `Command` get an empty mask again (std resets it). Calling it again
/// does nothing.
/// Cleanups to run on a signal before the bed is torn down (a bench's
/// system tunables, say).
static AT_SIGNAL: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Runs `f` when a signal stops the program (see [`teardown_on_signal`]).
/// Programs restore on their normal paths themselves; this is for Ctrl-C.
pub fn at_signal(f: fn()) {
    AT_SIGNAL.lock().unwrap_or_else(|e| e.into_inner()).push(f);
}

pub fn teardown_on_signal() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = install());
    result
}

fn install() -> Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the
    // calls get valid pointers.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("testbed-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: valid pointers to a set and an int.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                sig = libc::SIGTERM;
            }
            eprintln!("signal {sig}: tearing down the test bed");
            let hooks = AT_SIGNAL.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for f in hooks {
                f();
            }
            node::teardown_all();
            std::process::exit(128 + sig);
        })?;
    Ok(())
}
