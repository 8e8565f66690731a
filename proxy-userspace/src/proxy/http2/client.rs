//! A worker's connections to backends for requests that came in as
//! HTTP/2: a few multiplexed HTTP/2 connections per backend address
//! (`http2.connections_per_endpoint`, streams spread over them round
//! robin, each within the backend's SETTINGS_MAX_CONCURRENT_STREAMS, which
//! hyper honours by queueing), and idle HTTP/1.1 connections for the
//! requests translated to HTTP/1.1.
//!
//! Bounded as the HTTP/1 pool is (an override can name any address):
//! at most `pool.max_idle_total` addresses keep HTTP/2 connections (past
//! it the least recently used address's are let go: they close when
//! their last stream ends), and HTTP/1.1 senders are kept up to
//! `pool.max_idle_per_backend` an address and `pool.max_idle_total` in all.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
};

use hyper::client::conn::{http1, http2};
use tokio::net::TcpStream;

use super::{LocalExec, body::Body, io::Io};
use crate::{
    config::Http2,
    proxy::{
        pool::{self, ConnectError, PoolConfig},
        watchdog::Watchdog,
    },
};

pub type H2Sender = http2::SendRequest<Body>;
pub type H1Sender = http1::SendRequest<Body>;

#[derive(Default)]
pub struct Upstreams {
    h2: RefCell<HashMap<SocketAddr, H2Conns>>,
    h1: RefCell<HashMap<SocketAddr, Vec<H1Sender>>>,
    h1_idle: Cell<usize>,
    /// A clock of uses, for the least recently used address.
    uses: Cell<u64>,
}

struct H2Conns {
    senders: Vec<H2Sender>,
    next: usize,
    used: u64,
}

/// Why no backend connection could be had.
#[derive(Debug)]
pub enum Failed {
    Connect(ConnectError),
    Handshake(hyper::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Connect(e) => e.fmt(f),
            Failed::Handshake(e) => write!(f, "HTTP handshake: {e}"),
        }
    }
}

impl Upstreams {
    /// An HTTP/2 connection to `addr`: one of those open once there are
    /// `http2.connections_per_endpoint` of them (in turn), else a new one.
    pub async fn h2(
        &self,
        addr: SocketAddr,
        cfg: &Http2,
        pool_cfg: &PoolConfig,
        watchdog: &Watchdog,
    ) -> Result<(H2Sender, bool), Failed> {
        let now = self.uses.get() + 1;
        self.uses.set(now);
        if let Some(conns) = self.h2.borrow_mut().get_mut(&addr) {
            conns.senders.retain(|s| !s.is_closed());
            conns.used = now;
            if conns.senders.len() >= cfg.connections_per_endpoint {
                conns.next = (conns.next + 1) % conns.senders.len();
                return Ok((conns.senders[conns.next].clone(), true));
            }
        }
        let tcp = pool::connect(addr, pool_cfg, watchdog)
            .await
            .map_err(Failed::Connect)?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .initial_stream_window_size(cfg.initial_stream_window_bytes)
            .initial_connection_window_size(cfg.initial_connection_window_bytes)
            .max_frame_size(cfg.max_frame_size)
            .max_send_buf_size(cfg.max_send_buf_bytes)
            .max_header_list_size(cfg.max_header_list_size)
            .handshake::<_, Body>(Io::new(tcp, Vec::new()))
            .await
            .map_err(Failed::Handshake)?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "HTTP/2 backend connection ended");
            }
        });
        let mut map = self.h2.borrow_mut();
        if !map.contains_key(&addr) && map.len() >= pool_cfg.max_idle_total.max(1) {
            // The least recently used address lets its connections go.
            if let Some(oldest) = map.iter().min_by_key(|(_, c)| c.used).map(|(a, _)| *a) {
                map.remove(&oldest);
            }
        }
        let conns = map.entry(addr).or_insert_with(|| H2Conns {
            senders: Vec::new(),
            next: 0,
            used: now,
        });
        if conns.senders.len() < cfg.connections_per_endpoint {
            conns.senders.push(sender.clone());
        }
        Ok((sender, false))
    }

    /// An HTTP/1.1 connection to `addr`: an idle one, or a new one.
    pub async fn h1(
        &self,
        addr: SocketAddr,
        pool_cfg: &PoolConfig,
        watchdog: &Watchdog,
    ) -> Result<(H1Sender, bool), Failed> {
        loop {
            let popped = {
                let mut map = self.h1.borrow_mut();
                let Some(idle) = map.get_mut(&addr) else {
                    break;
                };
                let sender = idle.pop();
                if idle.is_empty() {
                    map.remove(&addr);
                }
                sender
            };
            let Some(sender) = popped else { break };
            self.h1_idle.set(self.h1_idle.get() - 1);
            if !sender.is_closed() {
                return Ok((sender, true));
            }
        }
        let tcp: TcpStream = pool::connect(addr, pool_cfg, watchdog)
            .await
            .map_err(Failed::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, Body>(Io::new(tcp, Vec::new()))
            .await
            .map_err(Failed::Handshake)?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "HTTP/1.1 backend connection ended");
            }
        });
        Ok((sender, false))
    }

    /// An HTTP/1.1 connection whose exchange ended whole, kept for the next.
    pub fn put_h1(&self, addr: SocketAddr, sender: H1Sender, pool_cfg: &PoolConfig) {
        if sender.is_closed() || self.h1_idle.get() >= pool_cfg.max_idle_total {
            return;
        }
        let mut map = self.h1.borrow_mut();
        let idle = map.entry(addr).or_default();
        if idle.len() < pool_cfg.max_idle_per_backend {
            idle.push(sender);
            self.h1_idle.set(self.h1_idle.get() + 1);
        }
    }
}
