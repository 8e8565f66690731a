//! The `--intercept` mode's set-up, and the handle that keeps it in place
//! while the proxy runs.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    config::{InterceptMode, Settings, parse_cidr},
    intercept::{EbpfDataPath, EbpfOptions, InterceptSpec, OrigDst, cgroup, nft::NftRules},
    observe::metrics::{ExtraCounters, Metrics},
    proxy::ProxyConfig,
};

/// What keeps interception in place while the proxy runs: dropping it
/// detaches the eBPF programs or deletes the nftables rules.
pub(super) enum Interception {
    None,
    Ebpf(Arc<EbpfDataPath>),
    Nft(NftRules),
}

impl Interception {
    /// Stops steering new connections to the proxy; those already steered
    /// keep working (the sockmap shortcut stays, conntrack keeps its NAT)
    /// until this is dropped.
    pub(super) fn stop(&self) {
        let stopped = match self {
            Interception::None => return,
            Interception::Ebpf(datapath) => datapath.stop_intercepting().map_err(|e| e.to_string()),
            Interception::Nft(rules) => rules.stop_intercepting(),
        };
        match stopped {
            Ok(()) => tracing::info!("interception off: new connections go to their destinations"),
            Err(e) => tracing::warn!("could not switch interception off before draining: {e}"),
        }
    }
}

/// Sets up the `--intercept` mode: the eBPF programs or the nftables rules,
/// the proxy's own-socket mark and source address, and where original
/// destinations are looked up.
pub(super) fn start_interception(
    s: &Settings,
    cfg: &mut ProxyConfig,
    metrics: &Arc<Metrics>,
) -> Result<(Option<OrigDst>, Interception), String> {
    if s.intercept == InterceptMode::None {
        return Ok((None, Interception::None));
    }
    let proxy = match s.listen {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => a,
        other => {
            return Err(format!(
                "--intercept {:?} needs --listen with the node's own IPv4 address (not {other}): \
                 intercepted connections are sent there",
                s.intercept
            ));
        }
    };
    let i = &s.interception;
    let cidrs = i
        .cidrs
        .iter()
        .map(|c| parse_cidr(c))
        .collect::<Result<Vec<_>, _>>()?;
    cfg.pool.mark = Some(i.mark);
    match s.intercept {
        InterceptMode::Ebpf => {
            let cgroup = match &i.cgroup {
                Some(c) => c.clone(),
                None => cgroup::default_attach_point().map_err(|e| format!("cgroup v2: {e}"))?,
            };
            let spec = InterceptSpec {
                proxy,
                cidrs,
                ports: i.ports.clone(),
                exclude_ports: i.exclude_ports.clone(),
                mark: i.mark,
            };
            let mut datapath = EbpfDataPath::load(&EbpfOptions {
                cgroup,
                forward_logs: true,
                intercept: Some(spec),
            })
            .map_err(|e| format!("eBPF interception: {e}"))?;
            // Loading parsed the kernel's BTF and the object (megabytes,
            // freed again), and glibc keeps freed heap pages: hand them
            // back, about 2 MB of the idle proxy's RSS.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim has no preconditions: it takes the
            // allocator's locks itself and gives back only free pages.
            unsafe {
                libc::malloc_trim(0)
            };
            let map = datapath
                .take_orig_dst()
                .ok_or("the eBPF object has no original-destination map")?;
            let datapath = Arc::new(datapath);
            metrics.add_extra(Arc::new(EbpfCounters(datapath.clone())));
            // Backend sockets come from the node address, so sockops files
            // proxy-to-pod connections; their bytes arrive through the
            // SOCKHASH, which splice(2) cannot read.
            cfg.pool.source = Some(IpAddr::V4(*proxy.ip()));
            cfg.splice_threshold = u64::MAX;
            Ok((Some(OrigDst::Ebpf(map)), Interception::Ebpf(datapath)))
        }
        InterceptMode::Iptables => {
            let rules = NftRules::install(proxy, &cidrs, &i.ports, &i.exclude_ports, i.mark)?;
            Ok((Some(OrigDst::Conntrack), Interception::Nft(rules)))
        }
        InterceptMode::None => unreachable!("handled above"),
    }
}

struct EbpfCounters(Arc<EbpfDataPath>);

impl ExtraCounters for EbpfCounters {
    fn counters(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        if let Ok(counters) = self.0.counters() {
            for (counter, value) in counters.iter() {
                out.push((
                    counter.metric_name(),
                    "eBPF data path counter (summed over CPUs)",
                    value,
                ));
            }
        }
    }
}
