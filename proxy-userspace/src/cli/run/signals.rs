//! What ends the main sequence's wait: a stop signal, or a worker's end.

/// Tells the main thread, when dropped, that worker `.0` has ended (on
/// return and on panic alike).
pub(super) struct WorkerExit(
    pub(super) usize,
    pub(super) tokio::sync::mpsc::UnboundedSender<usize>,
);

impl Drop for WorkerExit {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made (inside a
/// runtime); each `recv` waits for the next.
pub(super) struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(super) fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub(super) async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
