//! The start-up sequence's part in a restart without a gap (see
//! `crate::handover`): checking what a running proxy offers and taking its
//! listeners, and, once running, offering ours to a successor.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::OwnedFd,
    sync::Arc,
    time::Duration,
};

use crate::{
    config::{InterceptMode, Settings},
    handover::{self, EbpfMeta, OfferMeta, Predecessor},
};

use super::listen::bind_workers;

/// The name of the interception mode, as offers carry it.
pub(super) fn mode_name(mode: InterceptMode) -> &'static str {
    match mode {
        InterceptMode::None => "none",
        InterceptMode::Ebpf => "ebpf",
        InterceptMode::Iptables => "iptables",
    }
}

/// Refuses a predecessor this proxy cannot stand in for: another listen
/// address or interception mode means another proxy, not a new version of
/// the same one.
pub(super) fn check(settings: &Settings, meta: &OfferMeta) -> Result<(), String> {
    if meta.listen != settings.listen {
        return Err(format!(
            "the running proxy (pid {}) listens on {}, this one on {}: stop it first",
            meta.pid, meta.listen, settings.listen
        ));
    }
    let mode = mode_name(settings.intercept);
    if meta.intercept != mode {
        return Err(format!(
            "the running proxy (pid {}) intercepts with {}, this one with {mode}: stop it first",
            meta.pid, meta.intercept
        ));
    }
    Ok(())
}

/// The predecessor's listeners, the same sockets with the same accept
/// queues, and more of our own on the same address when we run more
/// workers. With fewer workers we still serve every listener we take (one
/// worker each): a listener in the SO_REUSEPORT group that nobody accepted
/// on would hold the connections the kernel gives it.
pub(super) fn take_listeners(
    p: &mut Predecessor,
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<TcpListener>, String> {
    let mut listeners: Vec<TcpListener> = p
        .take_all("listener")
        .into_iter()
        .map(TcpListener::from)
        .collect();
    for l in &listeners {
        let local = l.local_addr().map_err(|e| e.to_string())?;
        if local != addr {
            return Err(format!("a handed-over listener is on {local}, not {addr}"));
        }
    }
    if listeners.len() < workers {
        let more = bind_workers(addr, workers - listeners.len())
            .map_err(|e| format!("listening on {addr}: {e}"))?;
        listeners.extend(more);
    }
    if listeners.is_empty() {
        return Err("the running proxy handed over no listener".into());
    }
    Ok(listeners)
}

/// What the handover socket's thread tells the main sequence.
pub(super) enum Event {
    /// A successor said hello: a stop signal now waits for the outcome.
    Started,
    /// It went away or was refused; we serve on.
    Aborted(String),
    /// It said ready and was told done: it serves, we drain.
    Committed(u32),
}

/// What a running proxy offers: the descriptors it duplicates for a
/// successor. A stopping proxy empties it before its workers close their
/// listeners, so that no copy keeps a listening socket open after them (a
/// connection queued on it then would be reset, not served).
pub(super) type Offered = Arc<std::sync::Mutex<Vec<(String, OwnedFd)>>>;

/// Closes what is offered: nothing more is handed over.
pub(super) fn withdraw(fds: &Offered) {
    fds.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Offers `fds` (duplicated for each successor that asks) on `listener`
/// until one takes over, on a thread of its own; reports on `events`.
pub(super) fn offer_to_successors(
    listener: Arc<handover::Listener>,
    settings: &Settings,
    ebpf: Option<EbpfMeta>,
    fds: Offered,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    let meta = OfferMeta {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        listen: settings.listen,
        admin: settings.admin,
        intercept: mode_name(settings.intercept).into(),
        ebpf,
        fds: fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, _)| name.clone())
            .collect(),
    };
    let timeout = Duration::from_millis(settings.handover.timeout_ms);
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            loop {
                let offer = || {
                    let dups = fds
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .filter_map(|(_, fd)| fd.try_clone().ok())
                        .collect::<Vec<_>>();
                    (meta.clone(), dups)
                };
                let started = |pid| {
                    tracing::info!(successor = pid, "a successor asks to take over");
                    let _ = events.send(Event::Started);
                };
                match listener.serve_one(timeout, started, offer) {
                    Ok(Ok(pid)) => {
                        let _ = events.send(Event::Committed(pid));
                        return;
                    }
                    Ok(Err(e)) => {
                        let _ = events.send(Event::Aborted(e));
                    }
                    // Closed: this proxy is stopping.
                    Err(_) => return,
                }
            }
        })?;
    Ok(())
}
