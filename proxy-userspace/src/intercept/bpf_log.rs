//! Forwards the eBPF programs' aya-log records to `tracing`.
//!
//! aya-log hands records to the `log` facade; the subscriber installed by
//! `logging::init` bridges `log` into `tracing`. A small thread waits on the
//! ring buffer's fd, so the data path never polls for logs.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// Owns the forwarding thread; dropping it stops the thread.
pub struct LogForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogForwarder {
    /// Takes the programs' log ring buffer out of `ebpf` and starts forwarding.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, aya_log::Error> {
        let mut logger = EbpfLogger::init(ebpf)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ebpf-log".into())
                .spawn(move || {
                    let mut pfd = libc::pollfd {
                        fd: logger.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    while !stop.load(Ordering::Relaxed) {
                        // SAFETY: `pfd` is one live pollfd (the count
                        // passed), which poll writes `revents` of; its
                        // descriptor is `logger`'s, open while it lives.
                        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
                        if ready > 0 {
                            logger.flush();
                        }
                    }
                    logger.flush();
                })
                .expect("spawn the ebpf-log thread")
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
