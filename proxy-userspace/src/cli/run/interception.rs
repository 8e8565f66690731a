//! The `--intercept` mode's set-up, and the handle that keeps it in place
//! while the proxy runs.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    sync::Arc,
};

use crate::{
    config::{InterceptMode, Settings, parse_cidr},
    handover::{EbpfMeta, Predecessor},
    intercept::{
        EbpfDataPath, EbpfOptions, InterceptSpec, OrigDst, cgroup, ebpf::Handed, nft::NftRules,
    },
    observe::metrics::{ExtraCounters, Metrics},
    proxy::ProxyConfig,
};

/// Descriptors to hand over, each with the name the successor asks for.
pub(super) type NamedFds = Vec<(String, OwnedFd)>;

/// What keeps interception in place while the proxy runs: dropping it
/// detaches the eBPF programs or deletes the nftables rules.
pub(super) enum Interception {
    None,
    Ebpf(Arc<EbpfDataPath>),
    Nft(NftRules),
}

impl Interception {
    /// What interception takes, for `/ready` and the log: the mode, the
    /// cgroup the programs attach to, the destinations and ports.
    pub(super) fn describe(&self, s: &Settings) -> String {
        let i = &s.interception;
        let ports = if i.ports.is_empty() {
            "every port".to_owned()
        } else {
            format!("{:?}", i.ports)
        };
        let mut out = match self {
            Interception::None => return "intercept: none\n".into(),
            Interception::Ebpf(datapath) => format!(
                "intercept: ebpf\ncgroup: {}\nhost network: {}\n",
                datapath.cgroup().display(),
                if i.skip_host_network {
                    "left alone"
                } else {
                    "intercepted"
                }
            ),
            Interception::Nft(_) => "intercept: iptables (nftables)\n".into(),
        };
        out.push_str(&format!(
            "cidrs: {:?}\nports: {ports}, except {:?}\nopaque ports: {:?}\nprotocol detection: {} ms\n",
            i.cidrs, i.exclude_ports, i.opaque_ports, i.detect_timeout_ms
        ));
        out
    }

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

    /// Lets go without undoing anything: a successor holds the programs or
    /// has put its own rules in place.
    pub(super) fn release(self) {
        match self {
            Interception::None => {}
            Interception::Ebpf(datapath) => datapath.release(),
            Interception::Nft(rules) => rules.release(),
        }
    }

    /// What a successor is offered: the eBPF data path's description and
    /// descriptors (duplicates, the successor's to keep).
    pub(super) fn offer(&self) -> std::io::Result<(Option<EbpfMeta>, NamedFds)> {
        let Interception::Ebpf(datapath) = self else {
            return Ok((None, Vec::new()));
        };
        let fds = datapath
            .handover_fds()
            .into_iter()
            .map(|(name, fd)| Ok((name, fd.try_clone_to_owned()?)))
            .collect::<std::io::Result<_>>()?;
        let meta = EbpfMeta {
            abi: proxy_common::ABI,
            programs: datapath.programs(),
            cgroup: datapath.cgroup().to_owned(),
            mark: datapath.mark(),
        };
        Ok((Some(meta), fds))
    }
}

/// Sets up the `--intercept` mode: the eBPF programs or the nftables rules,
/// the proxy's own-socket mark and source address, and where original
/// destinations are looked up.
/// With a `predecessor` (a restart), its data path is taken over rather
/// than set up afresh.
pub(super) fn start_interception(
    s: &Settings,
    cfg: &mut ProxyConfig,
    metrics: &Arc<Metrics>,
    predecessor: Option<&mut Predecessor>,
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
                redirect_queue_min_bytes: i.redirect_queue_min_bytes,
                skip_host_network: i.skip_host_network,
            };
            let opts = EbpfOptions {
                cgroup,
                forward_logs: true,
                intercept: Some(spec),
            };
            let mut datapath = match predecessor {
                None => EbpfDataPath::load(&opts),
                Some(p) => EbpfDataPath::adopt(&opts, handed(p, &opts)?),
            }
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
            // On a restart too: the predecessor's table is replaced in one
            // transaction, and it leaves ours in place when it goes.
            let rules = NftRules::install(proxy, &cidrs, &i.ports, &i.exclude_ports, i.mark)?;
            Ok((Some(OrigDst::Conntrack), Interception::Nft(rules)))
        }
        InterceptMode::None => unreachable!("handled above"),
    }
}

/// The predecessor's eBPF data path, if it fits ours: the same map
/// contract, cgroup and mark (the mark is how the programs tell the
/// proxy's sockets, the predecessor's among them while it drains).
fn handed(p: &mut Predecessor, opts: &EbpfOptions) -> Result<Handed, String> {
    let Some(meta) = p.meta.ebpf.clone() else {
        return Err("the running proxy handed over no eBPF data path".into());
    };
    let refuse = |what: String| {
        Err(format!(
            "the running proxy's eBPF data path does not fit: {what}; \
             stop it first (a restart with a gap)"
        ))
    };
    if meta.abi != proxy_common::ABI {
        return refuse(format!(
            "map contract {}, ours is {}",
            meta.abi,
            proxy_common::ABI
        ));
    }
    let same_cgroup = match (meta.cgroup.canonicalize(), opts.cgroup.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => meta.cgroup == opts.cgroup,
    };
    if !same_cgroup {
        return refuse(format!(
            "attached to {}, ours is {}",
            meta.cgroup.display(),
            opts.cgroup.display()
        ));
    }
    let mark = opts.intercept.as_ref().map_or(0, |s| s.mark);
    if meta.mark != mark {
        return refuse(format!("mark {:#x}, ours is {mark:#x}", meta.mark));
    }
    let names: Vec<String> = p
        .meta
        .fds
        .iter()
        .filter(|n| n.starts_with("map:") || n.starts_with("link:"))
        .cloned()
        .collect();
    let fds = names
        .into_iter()
        .filter_map(|name| p.take(&name).map(|fd| (name, fd)))
        .collect();
    Ok(Handed {
        programs: meta.programs,
        fds,
    })
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
