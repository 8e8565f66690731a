//! Sidetrack's eBPF programs.
//!
//! * `sidetrack_connect4` (cgroup/connect4): a TCP connect to an intercepted
//!   destination (CIDRs and ports userspace put in `CIDRS` and `PORTS`) is
//!   rewritten to the proxy's listener, and the original destination is
//!   kept under the socket's cookie. Loopback, excluded ports and the
//!   proxy's own sockets (marked with SO_MARK) are left alone.
//! * `sidetrack_connect6` (cgroup/connect6): the same for a dual-stack
//!   (AF_INET6) socket connecting to a v4-mapped address (`::ffff:a.b.c.d`,
//!   what a JVM does for an IPv4 destination): the connection is IPv4 on
//!   the wire, so it is steered and keyed exactly as if it came from an
//!   AF_INET socket. Native IPv6 destinations are left alone.
//! * `sidetrack_sockops` (sockops, attached to a cgroup v2): when an IPv4 TCP
//!   connection (an AF_INET socket's, or a dual-stack socket's to a
//!   v4-mapped address) reaches ESTABLISHED, file it in the SOCKHASH under
//!   its own 4-tuple (with interception on: only sockets with the proxy's address at
//!   one end, that is app-to-proxy and proxy-to-pod connections). An
//!   intercepted connect's original destination moves from its cookie to
//!   its 4-tuple, where the proxy takes it out when it accepts the
//!   connection (not at the client's close, which may come first).
//! * `sidetrack_sk_msg` (sk_msg, attached to the SOCKHASH): when a socket in
//!   the map sends, look for the peer socket (the same 4-tuple seen from the
//!   other end); if it is in the map, put the bytes straight into the peer's
//!   receive queue, skipping the TCP/IP stack; otherwise let them go the
//!   normal way. A redirect never blocks the sender, so the peer's queue is
//!   checked first: while it holds its bound (`QueueBound`) messages go the
//!   normal way, where TCP's window holds the sender back, and they go on
//!   doing so until the peer has read them all (a redirect must not
//!   overtake them). A check that finds order intact and the queue short
//!   of the bound leaves the sender a credit (`SENDERS`, socket storage):
//!   the bytes it may redirect before the next check, no more than the
//!   room left under the bound, so most messages skip the check.
//!
//! The kernel side owns only these fast decisions; userspace owns policy.
//! Counters are per-CPU so that no increment needs an atomic (the BPF target
//! has no 64-bit fetch-add); userspace sums them.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_F_NO_PREALLOC, BPF_SK_STORAGE_GET_F_CREATE,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, bpf_sock,
        sk_action::SK_PASS,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_get_socket_cookie, bpf_probe_read_kernel,
        generated::{bpf_get_netns_cookie, bpf_sk_storage_get, bpf_skc_to_tcp_sock},
    },
    macros::{btf_map, cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{Array, HashMap, LruHashMap, LpmTrie, PerCpuArray, SockHash, lpm_trie::Key},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use proxy_common::{
    AF_INET, AF_INET6, CIDRS_CAPACITY, COUNTER_SLOTS, Counter, FLAG_ALL_PORTS, FLAG_ENABLED,
    FLAG_NO_NEW, InterceptConfig, ORIG_DST_CAPACITY, OrigDst, PORTS_CAPACITY, PortPolicy,
    QueueBound, SKIP_CAPACITY, SOCKHASH_CAPACITY, SockKey,
};

const IPPROTO_TCP: u32 = 6;

#[map(name = "SOCKHASH")]
static SOCKHASH: SockHash<SockKey> = SockHash::with_max_entries(SOCKHASH_CAPACITY, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<InterceptConfig> = Array::with_max_entries(1, 0);

#[map(name = "CIDRS")]
static CIDRS: LpmTrie<u32, u32> = LpmTrie::with_max_entries(CIDRS_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "PORTS")]
static PORTS: HashMap<u32, u32> = HashMap::with_max_entries(PORTS_CAPACITY, 0);

#[map(name = "SKIP")]
static SKIP: HashMap<OrigDst, u32> = HashMap::with_max_entries(SKIP_CAPACITY, 0);

#[map(name = "COOKIE_DST")]
static COOKIE_DST: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(ORIG_DST_CAPACITY, 0);

#[map(name = "ORIG_DST")]
static ORIG_DST: LruHashMap<SockKey, OrigDst> = LruHashMap::with_max_entries(ORIG_DST_CAPACITY, 0);

/// The kernel address of each socket filed in `SOCKHASH`, by the same key,
/// for sk_msg to read its peer's queue: a SOCKHASH lookup from sk_msg
/// takes a reference that an sk_msg program cannot give back
/// (`bpf_sk_release` is not among its helpers). Written when the socket is
/// filed, so an entry whose key is in `SOCKHASH` names that socket;
/// removed when the socket closes (its state callback, asked for when it
/// is filed), so that the map holds the open sockets only.
#[map(name = "SOCKETS")]
static SOCKETS: LruHashMap<SockKey, u64> = LruHashMap::with_max_entries(SOCKHASH_CAPACITY, 0);

/// What a sending socket may still redirect without a check: see
/// [`sidetrack_sk_msg`]. Socket storage, so it lives and dies with the
/// socket and costs no hash lookup; the socket is locked while its verdict
/// runs, so one program run at a time reads and writes it. Not handed over
/// on a restart: a socket runs the program it was filed with, and that
/// program's own map, for life; a socket with no entry starts at no
/// credit, which only means a check.
#[btf_map(name = "SENDERS")]
static SENDERS: SkStorage<Credit> = SkStorage::new();

/// A sender's credit: `bytes` it may redirect before the next check, given
/// by a check made under `min_bytes` ([`QueueBound::min_bytes`] then; a
/// credit from another bound is void).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Credit {
    pub bytes: u32,
    pub min_bytes: u32,
}

#[inline(always)]
fn config() -> Option<&'static InterceptConfig> {
    CONFIG.get(0).filter(|c| c.flags & FLAG_ENABLED != 0)
}

#[cgroup_sock_addr(connect4)]
pub fn sidetrack_connect4(ctx: SockAddrContext) -> i32 {
    // Returning 1 lets the connect go on (rewritten or not).
    // SAFETY: `ctx.sock_addr` is the live bpf_sock_addr the kernel passed in.
    let addr = unsafe { &mut *ctx.sock_addr };
    if addr.protocol != IPPROTO_TCP {
        return 1;
    }
    if let Some((ip, port)) = steer(&ctx, addr.user_ip4, addr.user_port) {
        addr.user_ip4 = ip;
        addr.user_port = port;
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn sidetrack_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: `ctx.sock_addr` is the live bpf_sock_addr the kernel passed in.
    let addr = unsafe { &mut *ctx.sock_addr };
    if addr.protocol != IPPROTO_TCP {
        return 1;
    }
    let Some(ip) = mapped_ip4(ld6(&addr.user_ip6)) else {
        return 1;
    };
    if let Some((ip, port)) = steer(&ctx, ip, ld(&addr.user_port)) {
        // Still v4-mapped: only the IPv4 part changes.
        // SAFETY: stores to writable fields of the live context.
        unsafe {
            core::ptr::write_volatile(&mut addr.user_ip6[3], ip);
            core::ptr::write_volatile(&mut addr.user_port, port);
        }
    }
    1
}

/// One context field, loaded as such: the verifier refuses a load through
/// a context pointer the compiler has moved (which it may do when branches
/// share an address), and a volatile load keeps each one a plain
/// `ctx + offset` load.
#[inline(always)]
fn ld(field: &u32) -> u32 {
    // SAFETY: a reference to a field of the live context.
    unsafe { core::ptr::read_volatile(field) }
}

/// An IPv6 address field of the context, word by word (see [`ld`]).
#[inline(always)]
fn ld6(field: &[u32; 4]) -> [u32; 4] {
    [ld(&field[0]), ld(&field[1]), ld(&field[2]), ld(&field[3])]
}

/// The IPv4 address inside a v4-mapped IPv6 one (`::ffff:a.b.c.d`), words
/// in network byte order as the kernel hands them out.
#[inline(always)]
fn mapped_ip4(ip6: [u32; 4]) -> Option<u32> {
    (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffff_u32.to_be()).then_some(ip6[3])
}

/// Where a TCP connect to `ip` (network order) and `user_port` (network
/// order in the low 16 bits) goes instead, if it is intercepted: the
/// proxy's address and port in the same orders, with the original
/// destination filed under the socket's cookie. `None` leaves it alone.
#[inline(always)]
fn steer(ctx: &SockAddrContext, ip: u32, user_port: u32) -> Option<(u32, u32)> {
    let cfg = config()?;
    if cfg.flags & FLAG_NO_NEW != 0 {
        return None;
    }
    // SAFETY: in connect4/6 `sk` is always a valid socket pointer.
    let mark = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).mark };
    if mark == cfg.mark && cfg.mark != 0 {
        count(Counter::ConnectOwn, 1);
        return None;
    }
    // The node's own network namespace: a host-network pod (or a node
    // process in the attach cgroup) goes its own way, as on a node
    // without the proxy.
    if cfg.host_netns != 0 {
        // SAFETY: a socket address context has a network namespace.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        if netns == cfg.host_netns {
            count(Counter::ConnectHostNetwork, 1);
            return None;
        }
    }
    // The first octet of a network-order address is its lowest byte here.
    if ip & 0xff == 127 {
        return None;
    }
    let port = u32::from(u16::from_be(user_port as u16));
    match PORTS.get_ptr(port).map(|p| unsafe { *p }) {
        Some(p) if p == PortPolicy::Exclude as u32 => return None,
        Some(p) if p == PortPolicy::Intercept as u32 => {}
        _ if cfg.flags & FLAG_ALL_PORTS != 0 => {}
        _ => return None,
    }
    CIDRS.get(Key::new(32, ip))?;
    // A destination marked never to intercept (a Service port).
    // SAFETY: the value is only tested for presence.
    if unsafe { SKIP.get(&OrigDst { ip4: ip, port }) }.is_some() {
        count(Counter::ConnectSkipped, 1);
        return None;
    }
    // SAFETY: the context is a socket address context, which has a cookie.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let dst = OrigDst { ip4: ip, port };
    if COOKIE_DST.insert(&cookie, &dst, BPF_ANY as u64).is_err() {
        return None;
    }
    count(Counter::ConnectIntercepted, 1);
    debug!(ctx, "connect to {:i}:{} sent to the proxy", u32::from_be(ip), port);
    Some((cfg.proxy_ip4, u32::from((cfg.proxy_port as u16).to_be())))
}

#[inline(always)]
fn count(counter: Counter, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and BPF programs do not migrate mid-run.
        unsafe { *slot += by };
    }
}

/// The kernel hands the remote port in network byte order in the upper half
/// of a u32 (on little-endian) and the local port in host byte order.
#[inline(always)]
fn remote_port_host(raw: u32) -> u32 {
    u32::from_be(raw)
}

/// `TCP_CLOSE` in the kernel's `enum tcp_state` (include/net/tcp_states.h).
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn sidetrack_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let (src_ip4, dst_ip4) = match ctx.family() {
        AF_INET => (ctx.local_ip4(), ctx.remote_ip4()),
        // A dual-stack socket's IPv4 connection: keyed by its IPv4 ends,
        // as its peer (an AF_INET socket, the proxy's say) sees them.
        // SAFETY: `ctx.ops` is the live bpf_sock_ops the kernel passed in.
        AF_INET6 => match unsafe {
            (mapped_ip4(ld6(&(*ctx.ops).local_ip6)), mapped_ip4(ld6(&(*ctx.ops).remote_ip6)))
        } {
            (Some(local), Some(remote)) => (local, remote),
            _ => return 0,
        },
        _ => return 0,
    };
    let key = SockKey {
        src_ip4,
        dst_ip4,
        src_port: ctx.local_port(),
        dst_port: remote_port_host(ctx.remote_port()),
    };
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(&ctx, key, true),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx, key, false),
        // The kernel drops a closed socket from SOCKHASH itself; its
        // address goes from SOCKETS here.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            let _ = SOCKETS.remove(&key);
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn established(ctx: &SockOpsContext, mut key: SockKey, active: bool) {
    count(
        if active { Counter::EstablishedActive } else { Counter::EstablishedPassive },
        1,
    );
    if let Some(cfg) = config() {
        if key.src_ip4 != cfg.proxy_ip4 && key.dst_ip4 != cfg.proxy_ip4 {
            return;
        }
        if active {
            // SAFETY: the context is a sock_ops context, which has a cookie.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if let Some(dst) = COOKIE_DST.get_ptr(&cookie) {
                // SAFETY: a value pointer from a map lookup, read at once.
                let dst = unsafe { *dst };
                if ORIG_DST.insert(&key, &dst, BPF_ANY as u64).is_ok() {
                    count(Counter::OrigDstFiled, 1);
                }
                let _ = COOKIE_DST.remove(&cookie);
            }
        }
    }
    // SAFETY: `ctx.ops` is the live bpf_sock_ops the kernel passed in.
    match SOCKHASH.update(&mut key, unsafe { &mut *ctx.ops }, BPF_ANY as u64) {
        Ok(()) => {
            count(Counter::SockhashAdded, 1);
            // SAFETY: `sk` of a live bpf_sock_ops; at ESTABLISHED it is the
            // full socket (null would only make the entry useless).
            let sk = unsafe { core::ptr::read_volatile(&(*ctx.ops).__bindgen_anon_2.sk) };
            if SOCKETS.insert(&key, &(sk as u64), BPF_ANY as u64).is_ok() {
                // Told when it closes, to remove the entry.
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            }
            debug!(
                ctx,
                "sockhash add {:i}:{} -> {:i}:{} active={}",
                u32::from_be(key.src_ip4),
                key.src_port,
                u32::from_be(key.dst_ip4),
                key.dst_port,
                active as u8
            );
        }
        Err(_) => count(Counter::SockhashAddFailed, 1),
    }
}

#[sk_msg]
pub fn sidetrack_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: `ctx.msg` is the live sk_msg_md the kernel passed in.
    let md = unsafe { &*ctx.msg };
    let size = md.size as u64;
    let ends = match ld(&md.family) {
        AF_INET => Some((ld(&md.local_ip4), ld(&md.remote_ip4))),
        AF_INET6 => match (mapped_ip4(ld6(&md.local_ip6)), mapped_ip4(ld6(&md.remote_ip6))) {
            (Some(local), Some(remote)) => Some((local, remote)),
            _ => None,
        },
        _ => None,
    };
    let Some((local_ip4, remote_ip4)) = ends else {
        return pass(size, core::ptr::null_mut());
    };
    // The peer's key is this socket's 4-tuple seen from the other end.
    let mut peer = SockKey {
        src_ip4: remote_ip4,
        dst_ip4: local_ip4,
        src_port: remote_port_host(md.remote_port),
        dst_port: md.local_port,
    };
    // SAFETY: `sk` of a live sk_msg_md is the sending socket.
    let sender = unsafe { core::ptr::read_volatile(&md.__bindgen_anon_3.sk) };
    let bound = CONFIG.get(0).map(|c| &c.queue).filter(|b| b.min_bytes != 0);
    // Null with the bound off (nothing is created then), or when the
    // kernel could not allocate the entry: every message is checked.
    // SAFETY: the map is ours; `sender` is a full socket (the helper takes
    // any socket pointer the verifier knows as one).
    let credit = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&SENDERS).cast_mut().cast(),
            sender.cast(),
            core::ptr::null_mut(),
            if bound.is_some() { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 },
        )
    }
    .cast::<Credit>();
    if let Some(bound) = bound {
        // SAFETY: a storage pointer from the helper, this socket's own; the
        // socket is locked while its verdict runs.
        let left = match unsafe { credit.as_mut() } {
            Some(c) if c.min_bytes == bound.min_bytes => c.bytes,
            _ => 0,
        };
        if size <= u64::from(left) {
            // Checked before: no byte has passed since (a pass voids the
            // credit) and the receiver's queue has room for these.
            // SAFETY: as above; non-null, since `left` is not zero or
            // `size` is (then nothing changes).
            if let Some(c) = unsafe { credit.as_mut() } {
                c.bytes = left - size as u32;
            }
        } else {
            match hold(sender, &peer, bound, size) {
                Ok(room) => {
                    // SAFETY: as above.
                    if let Some(c) = unsafe { credit.as_mut() } {
                        *c = Credit { bytes: room, min_bytes: bound.min_bytes };
                    }
                }
                Err(why) => {
                    if why != Counter::MsgPassed {
                        count(why, 1);
                    }
                    return pass(size, credit);
                }
            }
        }
    }
    // On a miss the helper returns SK_DROP and sets no redirect; answering
    // SK_PASS then sends the bytes the normal way instead of dropping them.
    if SOCKHASH.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        count(Counter::MsgRedirected, 1);
        count(Counter::BytesRedirected, size);
        SK_PASS
    } else {
        pass(size, credit)
    }
}

/// Counts a message that goes the normal way, and lets it. The sender's
/// credit (when it has one) is void from here: until a check finds these
/// bytes read, a redirect could overtake them.
#[inline(always)]
fn pass(size: u64, credit: *mut Credit) -> u32 {
    // SAFETY: null or the sender's storage, as the caller got it.
    if let Some(c) = unsafe { credit.as_mut() } {
        c.bytes = 0;
    }
    count(Counter::MsgPassed, 1);
    count(Counter::BytesPassed, size);
    SK_PASS
}

/// Why a message of `size` bytes from `sender` to the socket filed under
/// `peer` must go the normal way, if it must (see `QueueBound`): bytes
/// `sender` sent that way are not all read yet, or the peer's ingress
/// queue holds the larger of its `sk_rcvbuf` and `bound.min_bytes`. A peer
/// whose address is not known cannot be checked, and the message passes
/// (`Counter::MsgPassed` alone counts it).
///
/// Else the message may go, and the answer is the sender's credit: the
/// bytes it may redirect after this message without a check, the room the
/// queue has under `bound.min_bytes` once this message is on it. The
/// queue only shrinks meanwhile (the receiver reads, and this sender is
/// its only writer), so the credit keeps it under the bound; `sk_rcvbuf`
/// only raises the bound above `min_bytes`, so its changes cannot void it.
///
/// The offsets are this kernel's (from its BTF). Addresses are only read
/// through bpf_probe_read_kernel, which fails (as zero) rather than fault:
/// a socket freed since it was filed gives a wrong answer, never a crash.
#[inline(always)]
fn hold(
    sender: *mut bpf_sock,
    peer: &SockKey,
    bound: &QueueBound,
    size: u64,
) -> Result<u32, Counter> {
    // SAFETY: a value pointer from a map lookup, read at once.
    let Some(sock) = SOCKETS.get_ptr(peer).map(|p| unsafe { *p }) else {
        return Err(Counter::MsgPassed);
    };
    // SAFETY: the sending socket, a full TCP socket in sk_msg.
    let own = unsafe { bpf_skc_to_tcp_sock(sender.cast()) } as u64;
    if own == 0 {
        return Err(Counter::MsgPassed);
    }
    let written = read_kernel::<u32>(own + u64::from(bound.tcp_write_seq));
    if read_kernel::<u32>(sock + u64::from(bound.tcp_copied_seq)) != written {
        return Err(Counter::PassedInOrder);
    }
    // The psock, with flag bits in the low three (SK_USER_DATA_*).
    let psock = read_kernel::<u64>(sock + u64::from(bound.sk_user_data)) & !7;
    if psock == 0 {
        // Not a socket in the map (the redirect will miss): no credit.
        return Ok(0);
    }
    let queued = read_kernel::<u32>(psock + u64::from(bound.psock_msg_tot_len));
    if queued < bound.min_bytes {
        let after = u64::from(queued) + size;
        return Ok(u64::from(bound.min_bytes).saturating_sub(after) as u32);
    }
    let rcvbuf = read_kernel::<i32>(sock + u64::from(bound.sk_rcvbuf));
    if queued >= rcvbuf.max(0) as u32 {
        return Err(Counter::PassedQueueFull);
    }
    Ok(0)
}

/// A kernel value at address `at`, zero when it cannot be read.
#[inline(always)]
fn read_kernel<T: Default>(at: u64) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address itself.
    unsafe { bpf_probe_read_kernel(at as *const T) }.unwrap_or_default()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
