//! Loads Sidetrack's eBPF programs, attaches them to a cgroup v2, and reads
//! their maps.
//!
//! Attach order matters: `sk_msg` is attached to the SOCKHASH before
//! `sockops` can put any socket in it, because a socket inserted before the
//! verdict program exists never runs it; `connect4` and `connect6` come
//! last, after their maps are filled, and interception is switched on by
//! writing the config slot at the very end. Links are owned by the `Ebpf` object, so when the
//! process exits (or the [`EbpfDataPath`] is dropped) the programs detach by
//! themselves: interception fails open, and new connections go straight to
//! their original destinations.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap, MapData, PerCpuArray, SockHash,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps},
};
use proxy_common::{
    COUNTER_SLOTS, Counter, FLAG_ALL_PORTS, FLAG_ENABLED, FLAG_NO_NEW, InterceptConfig, MAP_CIDRS,
    MAP_CONFIG, MAP_COUNTERS, MAP_ORIG_DST, MAP_PORTS, MAP_SOCKHASH, OrigDst, PROG_CONNECT4,
    PROG_CONNECT6, PROG_SK_MSG, PROG_SOCKOPS, PortPolicy, SockKey,
};

use super::{bpf_log::LogForwarder, cgroup};

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

/// The loaded and attached programs. Dropping it detaches them.
pub struct EbpfDataPath {
    // Dropped first: stop forwarding logs before the maps go away.
    _logs: Option<LogForwarder>,
    sockhash: SockHash<MapData, SockKey>,
    counters: PerCpuArray<MapData, u64>,
    /// The slot the programs read; [`FLAG_NO_NEW`] in it stops new
    /// interception while sockets already steered keep their shortcut.
    config: Mutex<Array<MapData, InterceptConfig>>,
    orig_dst: Option<OrigDstMap>,
    ebpf: Ebpf,
    cgroup: PathBuf,
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
        cgroup::check_v2_dir(&opts.cgroup).map_err(InterceptError::Cgroup)?;
        let cgroup_dir = File::open(&opts.cgroup).map_err(|source| InterceptError::OpenCgroup {
            path: opts.cgroup.clone(),
            source,
        })?;

        let level = ebpf_log_level();
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(OBJECT)?;
        let logs = if opts.forward_logs {
            match LogForwarder::start(&mut ebpf) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, "eBPF log lines will not be forwarded");
                    None
                }
            }
        } else {
            None
        };

        let sockhash: SockHash<MapData, SockKey> = take_map(&mut ebpf, MAP_SOCKHASH)?;
        let counters: PerCpuArray<MapData, u64> = take_map(&mut ebpf, MAP_COUNTERS)?;

        let sk_msg: &mut SkMsg = program(&mut ebpf, PROG_SK_MSG)?;
        sk_msg.load().map_err(prog_err(PROG_SK_MSG))?;
        sk_msg
            .attach(sockhash.fd())
            .map_err(prog_err(PROG_SK_MSG))?;

        // Maps the programs read are filled before the programs run.
        let mut config: Array<MapData, InterceptConfig> = take_map(&mut ebpf, MAP_CONFIG)?;
        let orig_dst = match &opts.intercept {
            Some(spec) => {
                fill_policy(&mut ebpf, spec)?;
                Some(OrigDstMap(take_map(&mut ebpf, MAP_ORIG_DST)?))
            }
            None => None,
        };

        let sockops: &mut SockOps = program(&mut ebpf, PROG_SOCKOPS)?;
        sockops.load().map_err(prog_err(PROG_SOCKOPS))?;
        // On kernels with bpf links (5.7+) aya attaches through a link, which
        // always coexists with other programs on the cgroup (a CNI's, say);
        // the kernel then rejects any mode flag, so "Single" (no flag) it is.
        sockops
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(prog_err(PROG_SOCKOPS))?;

        if let Some(spec) = &opts.intercept {
            let connect4: &mut CgroupSockAddr = program(&mut ebpf, PROG_CONNECT4)?;
            connect4.load().map_err(prog_err(PROG_CONNECT4))?;
            connect4
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(prog_err(PROG_CONNECT4))?;
            let connect6: &mut CgroupSockAddr = program(&mut ebpf, PROG_CONNECT6)?;
            connect6.load().map_err(prog_err(PROG_CONNECT6))?;
            connect6
                .attach(&cgroup_dir, CgroupAttachMode::Single)
                .map_err(prog_err(PROG_CONNECT6))?;
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
            };
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
                "eBPF interception on: connect4, connect6, sockops and sk_msg attached"
            );
        } else {
            tracing::info!(cgroup = %opts.cgroup.display(), "eBPF sockops and sk_msg attached");
        }
        Ok(Self {
            _logs: logs,
            sockhash,
            counters,
            config: Mutex::new(config),
            orig_dst,
            ebpf,
            cgroup: opts.cgroup.clone(),
        })
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

    /// The loaded object, for the programs and maps later layers add.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
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

/// Writes the CIDRs and port policies `connect4` consults. The maps are
/// borrowed, not taken: a map taken out of `ebpf` and dropped closes its
/// descriptor before the programs that use it are loaded.
fn fill_policy(ebpf: &mut Ebpf, spec: &InterceptSpec) -> Result<(), InterceptError> {
    let map_err = |name| move |source| InterceptError::Map { name, source };
    let mut cidrs: LpmTrie<&mut MapData, u32, u32> = LpmTrie::try_from(
        ebpf.map_mut(MAP_CIDRS)
            .ok_or(InterceptError::Missing(MAP_CIDRS))?,
    )
    .map_err(map_err(MAP_CIDRS))?;
    for (ip, len) in &spec.cidrs {
        let key = Key::new(u32::from(*len), u32::from_ne_bytes(ip.octets()));
        cidrs.insert(&key, 1, 0).map_err(map_err(MAP_CIDRS))?;
    }
    let mut ports: HashMap<&mut MapData, u32, u32> = HashMap::try_from(
        ebpf.map_mut(MAP_PORTS)
            .ok_or(InterceptError::Missing(MAP_PORTS))?,
    )
    .map_err(map_err(MAP_PORTS))?;
    let policies = spec
        .ports
        .iter()
        .map(|p| (p, PortPolicy::Intercept))
        .chain(spec.exclude_ports.iter().map(|p| (p, PortPolicy::Exclude)));
    for (port, policy) in policies {
        ports
            .insert(u32::from(*port), policy as u32, 0)
            .map_err(map_err(MAP_PORTS))?;
    }
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, InterceptError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(InterceptError::Missing(name))?;
    T::try_from(map).map_err(|source| InterceptError::Map { name, source })
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
