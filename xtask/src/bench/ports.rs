//! The proxies' listening ports, kept free for the length of a run.
//!
//! Every proxy listens on the node's address in the root network
//! namespace, and makes its server connections from there too. When the
//! root namespace's ephemeral range covers the listening ports (these VMs
//! have had `ip_local_port_range` at `1024 65535`), an outgoing connection
//! can take one of them as its local port: the server-close and new
//! connection phases make tens of thousands, each then sits in TIME_WAIT
//! for a minute, and the next proxy that wants to listen there fails
//! (`cannot bind socket (Address already in use)` from haproxy on :4142
//! in round 1 of a full run, after nginx's server-close phases: a socket
//! bound by `connect` does not have SO_REUSEADDR, so a listener's
//! SO_REUSEADDR does not help). So the bench adds its ports to
//! `net.ipv4.ip_local_reserved_ports` (which the kernel skips when it
//! picks a local port) for the run and puts the old value back at the end,
//! also on Ctrl-C; and before a proxy starts, [`wait_free`] waits, bounded,
//! until its addresses can be bound, and says who holds one if not.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::scenarios::{
    HAPROXY_PORT, NGINX_PORT, PINGORA_PORT, RELAY_PORT, SIDETRACK_ADMIN_PORT, SIDETRACK_PORT,
};
use crate::cmd;

const PARAM: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The value to put back, while the bench's is in force.
static SAVED: Mutex<Option<String>> = Mutex::new(None);

/// The ports the proxies listen on (in the root namespace).
fn ports() -> Vec<u16> {
    vec![
        SIDETRACK_PORT,
        NGINX_PORT,
        HAPROXY_PORT,
        RELAY_PORT,
        PINGORA_PORT,
        SIDETRACK_ADMIN_PORT,
    ]
}

/// Restores the old reserved ports on drop.
pub struct Guard;

/// Reserves the proxies' ports for the run (added to what is reserved
/// already). Best effort: a refusal is noted, and [`wait_free`] still
/// guards each start.
pub fn reserve() -> Guard {
    let Ok(before) = fs::read_to_string(PARAM) else {
        cmd::note(format!(
            "cannot read {PARAM}: the listening ports are not reserved"
        ));
        return Guard;
    };
    let before = before.trim().to_owned();
    let ours = ports()
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let value = if before.is_empty() {
        ours.clone()
    } else {
        format!("{before},{ours}")
    };
    match fs::write(PARAM, &value) {
        Ok(()) => {
            *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(before.clone());
            crate::testbed::at_signal(restore);
            cmd::note(format!(
                "ip_local_reserved_ports {value} for the run (was {:?}; restored after): \
                 no outgoing connection takes a proxy's port",
                before
            ));
        }
        Err(e) => cmd::note(format!(
            "could not reserve the listening ports ({PARAM}): {e}"
        )),
    }
    Guard
}

/// Puts the saved value back (once).
pub fn restore() {
    if let Some(old) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // An empty write is refused; a newline clears the list.
        let v = if old.is_empty() { "\n".to_owned() } else { old };
        if let Err(e) = fs::write(PARAM, &v) {
            eprintln!("could not restore {PARAM} to {v:?}: {e}");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Waits until every address can be bound as a listener binds it (std's
/// `TcpListener::bind` sets SO_REUSEADDR, as nginx, haproxy, Pingora and
/// Sidetrack do: a previous listener's TIME_WAIT sockets do not count),
/// for at most `limit`. A previous instance may still be closing its
/// listener; anything else holding the port is an error that names it.
pub fn wait_free(addrs: &[SocketAddr], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    for addr in addrs {
        loop {
            match TcpListener::bind(addr) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if Instant::now() > deadline {
                        let ss = cmd::output(Command::new("ss").args([
                            "-tanp",
                            "state",
                            "all",
                            &format!("( sport = :{} )", addr.port()),
                        ]))
                        .unwrap_or_default();
                        let lines: Vec<&str> = ss.lines().take(12).collect();
                        bail!(
                            "{addr} is still in use {} s after the previous proxy stopped; \
                             its sockets (ss):\n{}",
                            limit.as_secs(),
                            lines.join("\n")
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Anything else (the address is not up yet, say) is the
                // proxy's own start to report.
                Err(_) => break,
            }
        }
    }
    Ok(())
}
