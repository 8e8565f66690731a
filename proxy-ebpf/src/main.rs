//! Sidetrack's eBPF programs.
//!
//! * `sidetrack_sockops` (sockops, attached to a cgroup v2): when an IPv4 TCP
//!   socket of the cgroup reaches ESTABLISHED, file it in the SOCKHASH under
//!   its own 4-tuple.
//! * `sidetrack_sk_msg` (sk_msg, attached to the SOCKHASH): when a socket in
//!   the map sends, look for the peer socket (the same 4-tuple seen from the
//!   other end); if it is in the map, put the bytes straight into the peer's
//!   receive queue, skipping the TCP/IP stack; otherwise let them go the
//!   normal way.
//!
//! The kernel side owns only these fast decisions; userspace owns policy.
//! Counters are per-CPU so that no increment needs an atomic (the BPF target
//! has no 64-bit fetch-add); userspace sums them.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, sk_action::SK_PASS,
    },
    macros::{map, sk_msg, sock_ops},
    maps::{PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use proxy_common::{AF_INET, COUNTER_SLOTS, Counter, SOCKHASH_CAPACITY, SockKey};

#[map(name = "SOCKHASH")]
static SOCKHASH: SockHash<SockKey> = SockHash::with_max_entries(SOCKHASH_CAPACITY, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

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

#[sock_ops]
pub fn sidetrack_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let active = match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => true,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => false,
        _ => return 0,
    };
    if ctx.family() != AF_INET {
        return 0;
    }
    count(
        if active { Counter::EstablishedActive } else { Counter::EstablishedPassive },
        1,
    );
    let mut key = SockKey {
        src_ip4: ctx.local_ip4(),
        dst_ip4: ctx.remote_ip4(),
        src_port: ctx.local_port(),
        dst_port: remote_port_host(ctx.remote_port()),
    };
    // SAFETY: `ctx.ops` is the live bpf_sock_ops the kernel passed in.
    match SOCKHASH.update(&mut key, unsafe { &mut *ctx.ops }, BPF_ANY as u64) {
        Ok(()) => {
            count(Counter::SockhashAdded, 1);
            debug!(
                &ctx,
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
    0
}

#[sk_msg]
pub fn sidetrack_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: `ctx.msg` is the live sk_msg_md the kernel passed in.
    let md = unsafe { &*ctx.msg };
    let size = md.size as u64;
    if md.family != AF_INET {
        count(Counter::MsgPassed, 1);
        count(Counter::BytesPassed, size);
        return SK_PASS;
    }
    // The peer's key is this socket's 4-tuple seen from the other end.
    let mut peer = SockKey {
        src_ip4: md.remote_ip4,
        dst_ip4: md.local_ip4,
        src_port: remote_port_host(md.remote_port),
        dst_port: md.local_port,
    };
    // On a miss the helper returns SK_DROP and sets no redirect; answering
    // SK_PASS then sends the bytes the normal way instead of dropping them.
    if SOCKHASH.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        count(Counter::MsgRedirected, 1);
        count(Counter::BytesRedirected, size);
    } else {
        count(Counter::MsgPassed, 1);
        count(Counter::BytesPassed, size);
    }
    SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
