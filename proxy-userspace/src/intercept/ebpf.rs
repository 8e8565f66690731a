//! Loads Sidetrack's eBPF programs, attaches them to a cgroup v2, and reads
//! their maps.
//!
//! Attach order matters: `sk_msg` is attached to the SOCKHASH before
//! `sockops` can put any socket in it, because a socket inserted before the
//! verdict program exists never runs it; `connect4` and `connect6` come
//! last, after their maps are filled, and interception is switched on by
//! writing the config slot at the very end. The cgroup links are descriptors
//! the process holds (not pinned), so when the process exits (or the
//! [`EbpfDataPath`] is dropped) the programs detach by themselves:
//! interception fails open, and new connections go straight to their
//! original destinations.
//!
//! On a restart the running proxy hands the maps and links to its
//! successor ([`EbpfDataPath::handover_fds`]), which takes them
//! ([`EbpfDataPath::adopt`]) instead of loading afresh: the same maps
//! (original destinations filed before the restart, sockets already in the
//! SOCKHASH, counters) and the same links, with the successor's programs
//! swapped in atomically (`BPF_LINK_UPDATE`) when they differ. The old
//! process then lets go without detaching anything ([`EbpfDataPath::release`]).

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap, Map, MapData, PerCpuArray, SockHash,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupSockAddr, SkMsg, SockOps, sk_msg::SkMsgLinkId},
};
use proxy_common::{
    COUNTER_SLOTS, Counter, FLAG_ALL_PORTS, FLAG_ENABLED, FLAG_NO_NEW, InterceptConfig, MAP_CIDRS,
    MAP_CONFIG, MAP_COOKIE_DST, MAP_COUNTERS, MAP_ORIG_DST, MAP_PORTS, MAP_SKIP, MAP_SOCKETS,
    MAP_SOCKHASH, OrigDst, PROG_CONNECT4, PROG_CONNECT6, PROG_SK_MSG, PROG_SOCKOPS, PortPolicy,
    QueueBound, SockKey,
};

use super::{bpf_log::LogForwarder, btf, cgroup};

/// The object built by `cargo xtask build-ebpf`, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SIDETRACK_EBPF_OBJECT"));

/// Why interception could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(
        "eBPF interception needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN); run as root or use --intercept none"
    )]
    NotRoot,
    #[error("cgroup v2: {0}")]
    Cgroup(#[source] std::io::Error),
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "loading the eBPF object: {0} (the kernel must have CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and CONFIG_BPF_STREAM_PARSER)"
    )]
    Load(#[from] aya::EbpfError),
    #[error(
        "eBPF program {name}: {source} (a kernel without sockops, sk_msg or cgroup/connect4/6 support refuses them)"
    )]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the eBPF object has no {0}; rebuild it with `cargo xtask build-ebpf`")]
    Missing(&'static str),
    #[error("the running proxy handed over no {0}")]
    NotHanded(String),
    #[error("the handed-over map {name} does not fit ours: {why}")]
    Incompatible { name: &'static str, why: String },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The maps a successor takes over, with everything in them.
const SHARED_MAPS: [&str; 9] = [
    MAP_SOCKHASH,
    MAP_SOCKETS,
    MAP_COUNTERS,
    MAP_CONFIG,
    MAP_CIDRS,
    MAP_PORTS,
    MAP_SKIP,
    MAP_COOKIE_DST,
    MAP_ORIG_DST,
];

/// The cgroup programs and their attach types (uapi `enum bpf_attach_type`).
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;

/// A running data path's descriptors as a successor receives them, by the
/// names [`EbpfDataPath::handover_fds`] gave them.
pub struct Handed {
    /// The predecessor's [`EbpfDataPath::programs`].
    pub programs: u64,
    pub fds: StdHashMap<String, OwnedFd>,
}

/// Where and how to attach.
#[derive(Clone, Debug)]
pub struct EbpfOptions {
    /// The cgroup v2 directory whose sockets are handled (its whole subtree).
    pub cgroup: PathBuf,
    /// Forward the programs' log lines to `tracing` (needs a thread).
    pub forward_logs: bool,
    /// Rewrite connects to the proxy (`connect4`, and `connect6` for
    /// dual-stack sockets connecting to v4-mapped addresses). Without it
    /// only the sockmap shortcut runs, for every IPv4 connection of the
    /// cgroup.
    pub intercept: Option<InterceptSpec>,
}

/// What to intercept and where to send it.
#[derive(Clone, Debug)]
pub struct InterceptSpec {
    /// The proxy's listener.
    pub proxy: SocketAddrV4,
    /// Destinations to intercept (service CIDRs).
    pub cidrs: Vec<(Ipv4Addr, u8)>,
    /// Ports to intercept; empty means every port not excluded.
    pub ports: Vec<u16>,
    /// Ports never intercepted.
    pub exclude_ports: Vec<u16>,
    /// The SO_MARK the proxy puts on its own sockets.
    pub mark: u32,
    /// What sk_msg may queue on a receiver before messages to it pass, at
    /// least (`QueueBound::min_bytes`); 0: no bound.
    pub redirect_queue_min_bytes: u32,
    /// Leave connects made in the proxy's own network namespace (the
    /// host's) alone: host-network pods.
    pub skip_host_network: bool,
}

impl EbpfOptions {
    /// Attach at the root of the cgroup v2 hierarchy: every socket on the node.
    pub fn at_v2_root() -> Result<Self, InterceptError> {
        Ok(Self {
            cgroup: cgroup::v2_root().map_err(InterceptError::Cgroup)?,
            forward_logs: true,
            intercept: None,
        })
    }
}

/// The loaded and attached programs. Dropping it detaches them (unless a
/// successor holds them too).
pub struct EbpfDataPath {
    // Dropped first: stop forwarding logs before the maps go away.
    _logs: Option<LogForwarder>,
    sockhash: SockHash<MapData, SockKey>,
    counters: PerCpuArray<MapData, u64>,
    /// The slot the programs read; [`FLAG_NO_NEW`] in it stops new
    /// interception while sockets already steered keep their shortcut.
    config: Mutex<Array<MapData, InterceptConfig>>,
    /// Destinations never intercepted (Service ports marked so).
    skip: Mutex<HashMap<MapData, OrigDst, u32>>,
    orig_dst: Option<OrigDstMap>,
    /// The cgroup links (sockops, connect4, connect6), by program name:
    /// descriptors of this process (and of a successor it handed them
    /// to), never pinned, so they detach when the last holder goes.
    links: Vec<(&'static str, OwnedFd)>,
    /// A duplicate of each shared map's descriptor, to hand over.
    maps: Vec<(&'static str, OwnedFd)>,
    /// What identifies the programs running ([`programs_digest`]).
    programs: u64,
    /// sk_msg as this process attached it to the SOCKHASH (none when the
    /// predecessor's programs were kept).
    sk_msg: Option<SkMsgLinkId>,
    /// The loaded object; none when the predecessor's programs were kept.
    ebpf: Option<Ebpf>,
    cgroup: PathBuf,
    /// The mark written in the config slot.
    mark: u32,
    /// Set by [`EbpfDataPath::release`].
    released: std::sync::atomic::AtomicBool,
}

impl Drop for EbpfDataPath {
    fn drop(&mut self) {
        if !self.released.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if let (Some(ebpf), Some(id)) = (&mut self.ebpf, self.sk_msg.take())
            && let Some(prog) = ebpf.program_mut(PROG_SK_MSG)
            && let Ok(prog) = <&mut SkMsg>::try_from(prog)
            && let Ok(link) = prog.take_link(id)
        {
            std::mem::forget(link);
        }
    }
}

/// The original destinations of intercepted connections, by the client
/// socket's 4-tuple. Shared with the connection loop.
///
/// sockops files an entry when the client's connect is established; the
/// proxy takes it out when it accepts the connection ([`OrigDstMap::take`]),
/// so an entry lives only while its connection waits in the accept queue,
/// whatever the client does meanwhile (it may send and close at once) and
/// wherever the proxy runs. Entries of connections the proxy never accepts
/// (a full accept queue whose client gave up) are left to the LRU.
pub struct OrigDstMap(HashMap<MapData, SockKey, OrigDst>);

/// `bpf(2)` commands on map elements, and their attribute block.
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl OrigDstMap {
    /// Where the client `peer` meant to connect, given the proxy's `local`
    /// end of the accepted connection, taken out of the map: one system
    /// call (two on kernels before 5.14, which cannot look up and delete at
    /// once in a hash map).
    pub fn take(&self, peer: SocketAddrV4, local: SocketAddrV4) -> Option<SocketAddrV4> {
        let key = SockKey {
            src_ip4: u32::from_ne_bytes(peer.ip().octets()),
            dst_ip4: u32::from_ne_bytes(local.ip().octets()),
            src_port: u32::from(peer.port()),
            dst_port: u32::from(local.port()),
        };
        let mut dst = OrigDst::default();
        let dst = match self.elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &key, Some(&mut dst)) {
            Ok(()) => dst,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
            Err(_) => {
                let dst = self.0.get(&key, 0).ok()?;
                let _ = self.elem(BPF_MAP_DELETE_ELEM, &key, None);
                dst
            }
        };
        Some(SocketAddrV4::new(
            Ipv4Addr::from(dst.ip4.to_ne_bytes()),
            dst.port as u16,
        ))
    }

    /// One `bpf(cmd)` on the element `key`, its value (if any) read into
    /// `value`.
    fn elem(
        &self,
        cmd: libc::c_long,
        key: &SockKey,
        value: Option<&mut OrigDst>,
    ) -> std::io::Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = self.0.map().fd().as_fd().as_raw_fd();
        let attr = ElemAttr {
            map_fd: fd as u32,
            _pad: 0,
            key: key as *const SockKey as u64,
            value: value.map_or(0, |v| v as *mut OrigDst as u64),
            flags: 0,
        };
        // SAFETY: `attr` is the element commands' bpf_attr, of the size
        // passed; its key points at a live SockKey and its value (0 for a
        // delete) at a live, writable OrigDst, which are this map's key and
        // value types (aya checked their sizes when it opened the map), and
        // neither pointer outlives the call. OrigDst is plain integers, so
        // any bytes the kernel writes into it are a valid value.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl EbpfDataPath {
    /// Loads the programs and attaches them: `sk_msg` to the SOCKHASH first,
    /// then `sockops` to `opts.cgroup`.
    pub fn load(opts: &EbpfOptions) -> Result<Self, InterceptError> {
        if !super::is_root() {
            return Err(InterceptError::NotRoot);
        }
        let cgroup_dir = open_cgroup(&opts.cgroup)?;
        let level = ebpf_log_level();
        let mut ebpf = loader(level).load(OBJECT)?;
        let logs = forward_logs(opts, &mut ebpf);

        let sk_msg = attach_sk_msg(&mut ebpf)?;
        // Maps the programs read are filled before the programs run.
        if let Some(spec) = &opts.intercept {
            let [cidrs, ports] = ebpf.maps_disjoint_mut([MAP_CIDRS, MAP_PORTS]);
            sync_policy(cidrs, ports, spec)?;
        }
        let mut links = Vec::new();
        for (name, attach_type) in linked_programs(opts) {
            let prog = load_program(&mut ebpf, name)?;
            // A bpf link always coexists with other programs on the
            // cgroup (a CNI's, say), and takes no mode flag.
            let link =
                sys::link_create(prog, cgroup_dir.as_fd(), attach_type).map_err(|source| {
                    InterceptError::Sys {
                        what: format!("attaching {name} to {}", opts.cgroup.display()),
                        source,
                    }
                })?;
            links.push((name, link));
        }
        let (kept, maps) = ebpf_maps(&mut ebpf)?;
        let mut datapath = Self::assemble(opts, kept, links, maps, programs_digest(level))?;
        datapath._logs = logs;
        datapath.sk_msg = Some(sk_msg);
        datapath.ebpf = Some(ebpf);
        datapath.switch_on(opts)?;
        Ok(datapath)
    }

    /// Takes over a running data path handed over by the proxy this one
    /// replaces: its maps (what they hold stays: original destinations of
    /// connections waiting to be accepted, sockets in the SOCKHASH,
    /// counters) and its cgroup links. When the programs running are not
    /// ours ([`Handed::programs`] differs), ours are loaded against those
    /// very maps and swapped in, each link atomically (`BPF_LINK_UPDATE`)
    /// and sk_msg by attaching ours in its place; otherwise they are kept
    /// as they run. The policy maps are brought to `opts` and the config
    /// slot written last, as on a fresh load. Interception never stops:
    /// nothing is detached, and the config slot goes from on to on.
    ///
    /// The caller has checked that the predecessor's contract version
    /// (`proxy_common::ABI`), cgroup and mark are ours.
    pub fn adopt(opts: &EbpfOptions, handed: Handed) -> Result<Self, InterceptError> {
        if !super::is_root() {
            return Err(InterceptError::NotRoot);
        }
        let Handed { programs, mut fds } = handed;
        let mut take = |key: String| fds.remove(&key).ok_or(InterceptError::NotHanded(key));
        let mut maps = Vec::new();
        for name in SHARED_MAPS {
            maps.push((name, take(format!("map:{name}"))?));
        }
        let mut links = Vec::new();
        for (name, _) in linked_programs(opts) {
            links.push((name, take(format!("link:{name}"))?));
        }
        let level = ebpf_log_level();
        let ours = programs_digest(level);
        let mut taken: StdHashMap<&'static str, MapData> = StdHashMap::new();
        for (name, fd) in &maps {
            let fd = fd.try_clone().map_err(|source| InterceptError::Sys {
                what: format!("duplicating map {name}"),
                source,
            })?;
            let data =
                MapData::from_fd(fd).map_err(|source| InterceptError::Map { name, source })?;
            taken.insert(name, data);
        }
        let (ebpf, logs, sk_msg) = if programs == ours {
            tracing::info!("eBPF: keeping the running programs (the same as ours)");
            (None, None, None)
        } else {
            let mut ebpf = loader(level).load(OBJECT)?;
            // The programs were relocated against the descriptors of the
            // maps this load made; putting the running maps under those
            // very numbers makes the programs, loaded next, use them.
            for name in SHARED_MAPS {
                let fresh = map_data_mut(ebpf.map_mut(name), name)?;
                let running = &taken[name];
                check_fits(name, fresh, running)?;
                sys::replace_fd(fresh.fd().as_fd(), running.fd().as_fd()).map_err(|source| {
                    InterceptError::Sys {
                        what: format!("putting the running map {name} in place"),
                        source,
                    }
                })?;
            }
            let logs = forward_logs(opts, &mut ebpf);
            // Attaching replaces the program the map has: sockets filed
            // from now on run ours, those already in the map keep theirs.
            let sk_msg = attach_sk_msg(&mut ebpf)?;
            for (name, link) in &links {
                let prog = load_program(&mut ebpf, name)?;
                sys::link_update(link.as_fd(), prog).map_err(|source| InterceptError::Sys {
                    what: format!("swapping in our {name}"),
                    source,
                })?;
            }
            tracing::info!("eBPF: our programs swapped in for the running ones");
            (Some(ebpf), logs, Some(sk_msg))
        };
        if let Some(spec) = &opts.intercept {
            let mut policy = |name: &'static str| {
                Map::from_map_data(taken.remove(name).expect("taken above"))
                    .map_err(|source| InterceptError::Map { name, source })
            };
            let (mut cidrs, mut ports) = (policy(MAP_CIDRS)?, policy(MAP_PORTS)?);
            sync_policy(Some(&mut cidrs), Some(&mut ports), spec)?;
        }
        let mut typed = |name: &'static str| {
            Map::from_map_data(taken.remove(name).expect("taken above"))
                .map_err(|source| InterceptError::Map { name, source })
        };
        let kept = KeptMaps {
            sockhash: typed(MAP_SOCKHASH)?,
            counters: typed(MAP_COUNTERS)?,
            config: typed(MAP_CONFIG)?,
            skip: typed(MAP_SKIP)?,
            orig_dst: typed(MAP_ORIG_DST)?,
        };
        let running = if ebpf.is_some() { ours } else { programs };
        let mut datapath = Self::assemble(opts, kept, links, maps, running)?;
        datapath._logs = logs;
        datapath.sk_msg = sk_msg;
        datapath.ebpf = ebpf;
        datapath.switch_on(opts)?;
        Ok(datapath)
    }

    /// The typed maps this process keeps, and the rest of the struct.
    fn assemble(
        opts: &EbpfOptions,
        kept: KeptMaps,
        links: Vec<(&'static str, OwnedFd)>,
        maps: Vec<(&'static str, OwnedFd)>,
        programs: u64,
    ) -> Result<Self, InterceptError> {
        let typed = |name: &'static str| move |source| InterceptError::Map { name, source };
        let sockhash = SockHash::try_from(kept.sockhash).map_err(typed(MAP_SOCKHASH))?;
        let counters = PerCpuArray::try_from(kept.counters).map_err(typed(MAP_COUNTERS))?;
        let config = Array::try_from(kept.config).map_err(typed(MAP_CONFIG))?;
        let skip = HashMap::try_from(kept.skip).map_err(typed(MAP_SKIP))?;
        let orig_dst = match &opts.intercept {
            Some(_) => Some(OrigDstMap(
                HashMap::try_from(kept.orig_dst).map_err(typed(MAP_ORIG_DST))?,
            )),
            None => None,
        };
        Ok(Self {
            _logs: None,
            sockhash,
            counters,
            config: Mutex::new(config),
            skip: Mutex::new(skip),
            orig_dst,
            links,
            maps,
            programs,
            sk_msg: None,
            ebpf: None,
            cgroup: opts.cgroup.clone(),
            mark: opts.intercept.as_ref().map_or(0, |s| s.mark),
            released: Default::default(),
        })
    }

    /// Brings the destinations never intercepted to `wanted` (addresses
    /// and ports): new ones first, then those no longer wanted go.
    pub fn set_skipped(&self, wanted: &[(Ipv4Addr, u16)]) -> Result<(), InterceptError> {
        let map_err = |source| InterceptError::Map {
            name: MAP_SKIP,
            source,
        };
        let wanted: HashSet<OrigDst> = wanted
            .iter()
            .map(|(ip, port)| OrigDst {
                ip4: u32::from_ne_bytes(ip.octets()),
                port: u32::from(*port),
            })
            .collect();
        let mut skip = self.skip.lock().unwrap_or_else(|e| e.into_inner());
        for key in &wanted {
            skip.insert(key, 1, 0).map_err(map_err)?;
        }
        let stale: Vec<OrigDst> = skip
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            skip.remove(&key).map_err(map_err)?;
        }
        Ok(())
    }

    /// Writes the config slot: interception on (the last step of a start).
    /// (See [`own_netns_cookie`] for the host network check.)
    fn switch_on(&self, opts: &EbpfOptions) -> Result<(), InterceptError> {
        let Some(spec) = &opts.intercept else {
            tracing::info!(cgroup = %opts.cgroup.display(), "eBPF sockops and sk_msg attached");
            return Ok(());
        };
        let flags = FLAG_ENABLED
            | if spec.ports.is_empty() {
                FLAG_ALL_PORTS
            } else {
                0
            };
        let value = InterceptConfig {
            proxy_ip4: u32::from_ne_bytes(spec.proxy.ip().octets()),
            proxy_port: u32::from(spec.proxy.port()),
            mark: spec.mark,
            flags,
            queue: queue_bound(spec.redirect_queue_min_bytes),
            host_netns: if spec.skip_host_network {
                own_netns_cookie()
            } else {
                0
            },
        };
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        config
            .set(0, value, 0)
            .map_err(|source| InterceptError::Map {
                name: MAP_CONFIG,
                source,
            })?;
        tracing::info!(
            cgroup = %opts.cgroup.display(),
            proxy = %spec.proxy,
            cidrs = ?spec.cidrs,
            host_netns = value.host_netns,
            "eBPF interception on: connect4, connect6, sockops and sk_msg attached"
        );
        Ok(())
    }

    /// The descriptors a successor needs to take this data path over
    /// ([`EbpfDataPath::adopt`]): every shared map (`map:NAME`) and cgroup
    /// link (`link:PROGRAM`).
    pub fn handover_fds(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let maps = self
            .maps
            .iter()
            .map(|(name, fd)| (format!("map:{name}"), fd.as_fd()));
        let links = self
            .links
            .iter()
            .map(|(name, fd)| (format!("link:{name}"), fd.as_fd()));
        maps.chain(links).collect()
    }

    /// What identifies the programs running: a successor with the same
    /// keeps them.
    pub fn programs(&self) -> u64 {
        self.programs
    }

    /// Lets go of the data path without detaching anything when this is
    /// dropped: a successor holds it now. The links and maps are the
    /// successor's too, so closing our descriptors changes nothing; only
    /// sk_msg, attached to the map rather than linked, would be detached
    /// by the drop, and is left as it is.
    pub fn release(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops steering new connects to the proxy (`connect4/6` let them go
    /// to their destinations), as the first step of a shutdown: the
    /// proxy's listeners close next, and a connect still sent to them
    /// would be refused. Connections already steered, and the sockmap
    /// shortcut, stay until the programs detach; sockops goes on filing
    /// only the proxy's connections.
    pub fn stop_intercepting(&self) -> Result<(), InterceptError> {
        let map_err = |source| InterceptError::Map {
            name: MAP_CONFIG,
            source,
        };
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let mut value = config.get(&0, 0).map_err(map_err)?;
        value.flags |= FLAG_NO_NEW;
        config.set(0, value, 0).map_err(map_err)
    }

    /// The original-destination table, when interception is on.
    pub fn take_orig_dst(&mut self) -> Option<OrigDstMap> {
        self.orig_dst.take()
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The proxy's SO_MARK the programs leave alone (0 without interception).
    pub fn mark(&self) -> u32 {
        self.mark
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, InterceptError> {
        let mut values = [0u64; COUNTER_SLOTS as usize];
        for counter in Counter::ALL {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| InterceptError::Map {
                        name: MAP_COUNTERS,
                        source,
                    })?;
            values[counter as usize] = per_cpu.iter().sum();
        }
        Ok(Counters(values))
    }

    /// Every socket currently in the SOCKHASH, as (local, remote) addresses.
    pub fn sockets(&self) -> Result<Vec<(SocketAddrV4, SocketAddrV4)>, InterceptError> {
        self.sockhash
            .keys()
            .map(|key| key.map(|k| key_addrs(&k)))
            .collect::<Result<_, _>>()
            .map_err(|source| InterceptError::Map {
                name: MAP_SOCKHASH,
                source,
            })
    }

    /// The loaded object, for the programs and maps later layers add; none
    /// when the predecessor's programs were kept.
    pub fn ebpf_mut(&mut self) -> Option<&mut Ebpf> {
        self.ebpf.as_mut()
    }
}

/// A snapshot of the per-CPU counters, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u64; COUNTER_SLOTS as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Every counter with its name, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|c| (*c, self.get(*c)))
    }
}

/// The addresses a SOCKHASH key names: (the socket's local end, its remote end).
pub fn key_addrs(key: &SockKey) -> (SocketAddrV4, SocketAddrV4) {
    // IPs are in network byte order in memory: their bytes read in order.
    let ip = |raw: u32| Ipv4Addr::from(raw.to_ne_bytes());
    (
        SocketAddrV4::new(ip(key.src_ip4), key.src_port as u16),
        SocketAddrV4::new(ip(key.dst_ip4), key.dst_port as u16),
    )
}

/// The aya-log level the programs are patched with: what `tracing` would print.
fn ebpf_log_level() -> u8 {
    use aya_log::Level;
    let level = match tracing::level_filters::LevelFilter::current() {
        f if f >= tracing::Level::TRACE => Level::Trace,
        f if f >= tracing::Level::DEBUG => Level::Debug,
        f if f >= tracing::Level::INFO => Level::Info,
        f if f >= tracing::Level::WARN => Level::Warn,
        _ => Level::Error,
    };
    level as u8
}

/// Brings the CIDRs and port policies `connect4` consults to `spec`: what
/// is missing is added first, then what is no longer wanted goes, so a
/// restart that keeps a CIDR never has a moment without it.
fn sync_policy(
    cidrs: Option<&mut Map>,
    ports: Option<&mut Map>,
    spec: &InterceptSpec,
) -> Result<(), InterceptError> {
    let map_err = |name| move |source| InterceptError::Map { name, source };
    let cidrs = cidrs.ok_or(InterceptError::Missing(MAP_CIDRS))?;
    let ports = ports.ok_or(InterceptError::Missing(MAP_PORTS))?;
    let mut cidr_map: LpmTrie<&mut MapData, u32, u32> =
        LpmTrie::try_from(cidrs).map_err(map_err(MAP_CIDRS))?;
    let wanted: HashSet<(u32, u32)> = spec
        .cidrs
        .iter()
        .map(|(ip, len)| (u32::from(*len), u32::from_ne_bytes(ip.octets())))
        .collect();
    for (len, ip) in &wanted {
        cidr_map
            .insert(&Key::new(*len, *ip), 1, 0)
            .map_err(map_err(MAP_CIDRS))?;
    }
    let stale: Vec<Key<u32>> = cidr_map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for key in stale {
        cidr_map.remove(&key).map_err(map_err(MAP_CIDRS))?;
    }

    let mut port_map: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(ports).map_err(map_err(MAP_PORTS))?;
    let policies: StdHashMap<u32, u32> = spec
        .ports
        .iter()
        .map(|p| (u32::from(*p), PortPolicy::Intercept as u32))
        .chain(
            spec.exclude_ports
                .iter()
                .map(|p| (u32::from(*p), PortPolicy::Exclude as u32)),
        )
        .collect();
    for (port, policy) in &policies {
        port_map
            .insert(*port, *policy, 0)
            .map_err(map_err(MAP_PORTS))?;
    }
    let stale: Vec<u32> = port_map
        .keys()
        .filter_map(Result::ok)
        .filter(|p| !policies.contains_key(p))
        .collect();
    for port in stale {
        port_map.remove(&port).map_err(map_err(MAP_PORTS))?;
    }
    Ok(())
}

/// The maps this process keeps open, before they are typed.
struct KeptMaps {
    sockhash: Map,
    counters: Map,
    config: Map,
    skip: Map,
    orig_dst: Map,
}

/// Takes the maps this process keeps out of a fresh load, with a
/// duplicate of every shared map's descriptor to hand over.
type SharedFds = Vec<(&'static str, OwnedFd)>;

fn ebpf_maps(ebpf: &mut Ebpf) -> Result<(KeptMaps, SharedFds), InterceptError> {
    // Duplicates first: the maps taken out below are moved.
    let mut dups = Vec::new();
    for name in SHARED_MAPS {
        let data = map_data_mut(ebpf.map_mut(name), name)?;
        let dup = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| InterceptError::Sys {
                what: format!("duplicating map {name}"),
                source,
            })?;
        dups.push((name, dup));
    }
    let mut take = |name| ebpf.take_map(name).ok_or(InterceptError::Missing(name));
    let kept = KeptMaps {
        sockhash: take(MAP_SOCKHASH)?,
        counters: take(MAP_COUNTERS)?,
        config: take(MAP_CONFIG)?,
        skip: take(MAP_SKIP)?,
        orig_dst: take(MAP_ORIG_DST)?,
    };
    Ok((kept, dups))
}

/// sk_msg's bound on what it queues on a receiver, with the offsets of
/// the fields it reads from this kernel's BTF. Off, with a warning, on a
/// kernel that lacks one of them (`msg_tot_len` is recent): redirects are
/// then unbounded, as they were.
fn queue_bound(min_bytes: u32) -> QueueBound {
    if min_bytes == 0 {
        return QueueBound::default();
    }
    let found = btf::Btf::from_file(Path::new(btf::VMLINUX))
        .map_err(|e| format!("{}: {e}", btf::VMLINUX))
        .and_then(|btf| {
            let find = |s: &str, m: &str| {
                btf.member_offset(s, m)
                    .ok_or_else(|| format!("the kernel's struct {s} has no {m}"))
            };
            Ok(QueueBound {
                min_bytes,
                sk_rcvbuf: find("sock", "sk_rcvbuf")?,
                sk_user_data: find("sock", "sk_user_data")?,
                psock_msg_tot_len: find("sk_psock", "msg_tot_len")?,
                tcp_write_seq: find("tcp_sock", "write_seq")?,
                tcp_copied_seq: find("tcp_sock", "copied_seq")?,
            })
        });
    found.unwrap_or_else(|e| {
        tracing::warn!(
            error = %e,
            "sk_msg redirects will not be bounded by their receivers' queues"
        );
        QueueBound::default()
    })
}

/// Opens the attach cgroup, checked to be a cgroup v2 directory.
fn open_cgroup(path: &Path) -> Result<File, InterceptError> {
    cgroup::check_v2_dir(path).map_err(InterceptError::Cgroup)?;
    File::open(path).map_err(|source| InterceptError::OpenCgroup {
        path: path.to_owned(),
        source,
    })
}

/// The object's loader, its log level patched in.
fn loader(level: u8) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &LEVELS[usize::from(level)], true);
    loader
}

/// Every log level as a static, for the loader (which borrows the value).
static LEVELS: [u8; 6] = [0, 1, 2, 3, 4, 5];

fn forward_logs(opts: &EbpfOptions, ebpf: &mut Ebpf) -> Option<LogForwarder> {
    if !opts.forward_logs {
        return None;
    }
    match LogForwarder::start(ebpf) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "eBPF log lines will not be forwarded");
            None
        }
    }
}

/// Loads sk_msg and attaches it to the object's SOCKHASH, replacing the
/// program the map had (a fresh map has none).
fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<SkMsgLinkId, InterceptError> {
    let sockhash: SockHash<&MapData, SockKey> = SockHash::try_from(
        ebpf.map(MAP_SOCKHASH)
            .ok_or(InterceptError::Missing(MAP_SOCKHASH))?,
    )
    .map_err(|source| InterceptError::Map {
        name: MAP_SOCKHASH,
        source,
    })?;
    let fd = sockhash
        .fd()
        .try_clone()
        .map_err(|source| InterceptError::Sys {
            what: "duplicating the SOCKHASH descriptor".into(),
            source,
        })?;
    let sk_msg: &mut SkMsg = program(ebpf, PROG_SK_MSG)?;
    sk_msg.load().map_err(prog_err(PROG_SK_MSG))?;
    sk_msg.attach(&fd).map_err(prog_err(PROG_SK_MSG))
}

/// The programs attached to the cgroup through links, with their attach
/// types: sockops always, connect4 and connect6 when intercepting.
fn linked_programs(opts: &EbpfOptions) -> Vec<(&'static str, u32)> {
    let mut programs = vec![(PROG_SOCKOPS, BPF_CGROUP_SOCK_OPS)];
    if opts.intercept.is_some() {
        programs.push((PROG_CONNECT4, BPF_CGROUP_INET4_CONNECT));
        programs.push((PROG_CONNECT6, BPF_CGROUP_INET6_CONNECT));
    }
    programs
}

/// Loads one of the cgroup programs into the kernel; its descriptor.
fn load_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<BorrowedFd<'a>, InterceptError> {
    if name == PROG_SOCKOPS {
        let prog: &mut SockOps = program(ebpf, name)?;
        prog.load().map_err(prog_err(name))?;
        Ok(prog.fd().map_err(prog_err(name))?.as_fd())
    } else {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load().map_err(prog_err(name))?;
        Ok(prog.fd().map_err(prog_err(name))?.as_fd())
    }
}

/// The map data behind one of our maps (they are of these kinds only).
fn map_data_mut<'a>(
    map: Option<&'a mut Map>,
    name: &'static str,
) -> Result<&'a mut MapData, InterceptError> {
    match map.ok_or(InterceptError::Missing(name))? {
        Map::SockHash(m)
        | Map::PerCpuArray(m)
        | Map::Array(m)
        | Map::LpmTrie(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m) => Ok(m),
        _ => Err(InterceptError::Incompatible {
            name,
            why: "an unexpected map type".into(),
        }),
    }
}

/// Whether a running map can stand in for the one our object declares:
/// same type, key and value sizes, and capacity.
fn check_fits(name: &'static str, ours: &MapData, running: &MapData) -> Result<(), InterceptError> {
    let info = |m: &MapData| {
        m.info()
            .map_err(|source| InterceptError::Map { name, source })
    };
    let (a, b) = (info(ours)?, info(running)?);
    let shape = |i: &aya::maps::MapInfo| {
        (
            i.map_type().ok().map(|t| t as u32),
            i.key_size(),
            i.value_size(),
            i.max_entries(),
        )
    };
    if shape(&a) != shape(&b) {
        return Err(InterceptError::Incompatible {
            name,
            why: format!(
                "(type, key, value, capacity) {:?} here, {:?} running",
                shape(&a),
                shape(&b)
            ),
        });
    }
    Ok(())
}

/// What identifies the programs a process runs: the object it embeds and
/// the log level patched into it (FNV-1a, stable across builds).
fn programs_digest(level: u8) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in OBJECT.iter().chain(std::iter::once(&level)) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `bpf(2)` and descriptor calls aya does not make for us.
mod sys {
    use std::{
        io,
        os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    };

    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_LINK_UPDATE: libc::c_long = 29;

    /// `bpf_attr` for BPF_LINK_CREATE, as far as a cgroup link uses it
    /// (the kernel takes the rest as zero).
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
    }

    /// `bpf_attr` for BPF_LINK_UPDATE.
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is the `bpf_attr` layout of `cmd` (the types
        // above), of the size passed, holding descriptors and integers
        // only, and alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *const T,
                std::mem::size_of::<T>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret)
    }

    /// Attaches `prog` to the cgroup `target` through a new bpf link.
    pub(super) fn link_create(
        prog: BorrowedFd<'_>,
        target: BorrowedFd<'_>,
        attach_type: u32,
    ) -> io::Result<OwnedFd> {
        let fd = bpf(
            BPF_LINK_CREATE,
            &LinkCreate {
                prog_fd: prog.as_raw_fd() as u32,
                target_fd: target.as_raw_fd() as u32,
                attach_type,
                flags: 0,
            },
        )?;
        // SAFETY: BPF_LINK_CREATE returned a new descriptor, ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Puts `prog` in place of the program `link` runs, atomically: every
    /// event runs one or the other.
    pub(super) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        bpf(
            BPF_LINK_UPDATE,
            &LinkUpdate {
                link_fd: link.as_raw_fd() as u32,
                new_prog_fd: prog.as_raw_fd() as u32,
                flags: 0,
                old_prog_fd: 0,
            },
        )
        .map(drop)
    }

    /// Makes the descriptor `target` refer to what `source` refers to
    /// (`dup3`): `target`'s number stays valid and keeps its owner.
    pub(super) fn replace_fd(target: BorrowedFd<'_>, source: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: both descriptors are open for the call; dup3 closes
        // what `target` referred to and installs `source`'s file under the
        // same number atomically, so `target`'s owner still owns an open
        // descriptor (now of the running map, which the caller checked is
        // of the same shape).
        let ret = unsafe { libc::dup3(source.as_raw_fd(), target.as_raw_fd(), libc::O_CLOEXEC) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, InterceptError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(InterceptError::Missing(name))?;
    prog.try_into().map_err(prog_err(name))
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> InterceptError {
    move |source| InterceptError::Program { name, source }
}

/// The cookie of the network namespace this process runs in (the host's,
/// for a node proxy: hostNetwork), or 0 when the kernel cannot say
/// (SO_NETNS_COOKIE is Linux 5.14): connects from it are then checked like
/// any other.
fn own_netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let Ok(socket) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return 0;
    };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a live socket, and a buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 { cookie } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_addrs_reads_network_order_ips_and_host_order_ports() {
        let key = SockKey {
            src_ip4: u32::from_ne_bytes([198, 18, 0, 1]),
            dst_ip4: u32::from_ne_bytes([127, 0, 0, 1]),
            src_port: 40000,
            dst_port: 8080,
        };
        let (local, remote) = key_addrs(&key);
        assert_eq!(local, "198.18.0.1:40000".parse().unwrap());
        assert_eq!(remote, "127.0.0.1:8080".parse().unwrap());
    }
}
