//! `pingora-peer LISTEN UPSTREAM CONF`: the smallest reverse proxy Pingora
//! makes, for `cargo xtask bench`. Every request goes to the one upstream
//! address over HTTP/1.1 (no TLS), on connections taken from Pingora's
//! keep-alive pool; no filter, no logging, no header change. `CONF` is a
//! Pingora server YAML file (threads, pool size, grace periods), written
//! by the bench: docs/bench.md shows it.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::{
    Result, server::Server, server::configuration::ServerConf, upstreams::peer::HttpPeer,
};
use pingora_proxy::{ProxyHttp, Session};

/// Sends everything to `upstream`.
struct Forward {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        // Plain HTTP, no SNI: the pool keys connections by address.
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, conf] = args.as_slice() else {
        eprintln!("usage: pingora-peer LISTEN UPSTREAM CONF");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is ip:port");
    let text = std::fs::read_to_string(conf).expect("read CONF");
    let conf = ServerConf::from_yaml(&text).expect("CONF is a Pingora server file");
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Forward { upstream });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
