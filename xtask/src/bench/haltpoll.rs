//! Guest halt polling for the length of a bench run.
//!
//! On a KVM guest with the `haltpoll` cpuidle driver, an idle vCPU halts
//! at once when `guest_halt_poll_ns` is 0 (these VMs boot with
//! `haltpoll.guest_halt_poll_ns=0`), and waking a halted vCPU goes through
//! the hypervisor: on this machine a closed-loop request between two pods
//! then takes ~120 µs at p50 instead of ~14 µs, and every unpinned number
//! measures the hypervisor rather than the hop. So the bench lets idle
//! vCPUs poll for [`POLL_NS`] before halting, as a busy node's would be
//! busy anyway, and puts the old value back when it ends (also on Ctrl-C).
//! The pinned phase does not depend on it.

use std::{fs, path::Path, sync::Mutex};

const PARAM: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";
/// How long an idle vCPU polls before it halts, during the bench.
pub const POLL_NS: u64 = 200_000;

/// The value to put back, while the bench's is in force.
static SAVED: Mutex<Option<String>> = Mutex::new(None);

/// What the run did, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HaltPoll {
    /// The value before the run (ns); `None` without the haltpoll driver.
    pub before_ns: Option<u64>,
    /// The value during the run (ns).
    pub during_ns: Option<u64>,
}

/// Restores the saved value on drop.
pub struct Guard {
    pub state: HaltPoll,
}

/// Sets the poll time for the run when the machine has the knob and it is
/// shorter than [`POLL_NS`]; otherwise leaves things as they are.
pub fn enable() -> Guard {
    let path = Path::new(PARAM);
    let before = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let mut state = HaltPoll {
        before_ns: before,
        during_ns: before,
    };
    if let Some(b) = before
        && b < POLL_NS
        && fs::write(path, POLL_NS.to_string()).is_ok()
    {
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.to_string());
        crate::testbed::at_signal(restore);
        state.during_ns = Some(POLL_NS);
    }
    Guard { state }
}

/// Puts the saved value back (once).
pub fn restore() {
    if let Some(old) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take()
        && let Err(e) = fs::write(PARAM, &old)
    {
        eprintln!("could not restore {PARAM} to {old}: {e}");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}
