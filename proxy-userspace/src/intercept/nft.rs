//! iptables mode: nftables rules that DNAT intercepted connections to the
//! proxy, and SO_ORIGINAL_DST to learn where they were going.
//!
//! Pods' packets enter the node through their veths (the `prerouting`
//! hook); processes of the node itself go through `output`. Both chains
//! skip packets of sockets carrying the proxy's mark, so the proxy's own
//! connects are never sent back to it. DNAT rather than REDIRECT: REDIRECT
//! sends to the address of the interface a packet came in on, and a pod's
//! host-side veth has none.
//!
//! The rules live in a table of their own (named for the proxy's address),
//! made on start and deleted when
//! the [`NftRules`] guard is dropped. A proxy killed with SIGKILL leaves
//! them behind: unlike eBPF mode, iptables mode fails closed.

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd,
    process::{Command, Stdio},
};

/// The installed rules; dropping deletes them.
pub struct NftRules {
    table: String,
}

impl NftRules {
    /// Installs DNAT rules for `cidrs` (and `ports`, all when empty, minus
    /// `exclude_ports`) to `proxy`.
    pub fn install(
        proxy: SocketAddrV4,
        cidrs: &[(Ipv4Addr, u8)],
        ports: &[u16],
        exclude_ports: &[u16],
        mark: u32,
    ) -> Result<NftRules, String> {
        if !super::is_root() {
            return Err("iptables interception needs root (CAP_NET_ADMIN)".into());
        }
        if cidrs.is_empty() {
            return Err("no CIDRs to intercept (interception.cidrs is empty)".into());
        }
        let table = format!(
            "sidetrack_{}_{}",
            proxy.ip().to_string().replace('.', "_"),
            proxy.port()
        );
        let set = |items: Vec<String>| format!("{{ {} }}", items.join(", "));
        let daddr = set(cidrs
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect());
        let mut matches = format!("ip daddr {daddr} meta l4proto tcp");
        if !ports.is_empty() {
            matches.push_str(&format!(
                " tcp dport {}",
                set(ports.iter().map(u16::to_string).collect())
            ));
        }
        if !exclude_ports.is_empty() {
            matches.push_str(&format!(
                " tcp dport != {}",
                set(exclude_ports.iter().map(u16::to_string).collect())
            ));
        }
        // One transaction: a table left by an earlier proxy on the same
        // port (the one a restart takes over from, or a killed one's) is
        // replaced at once, so no connect finds no rule in between (the
        // empty `table` line makes the delete valid when there is none).
        let script = format!(
            "table ip {table} {{}}\ndelete table ip {table}\n\
             table ip {table} {{\n\
             \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tmeta mark {mark:#x} return\n\t\t{matches} dnat to {proxy}\n\t}}\n\
             \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
             \t\tmeta mark {mark:#x} return\n\t\t{matches} dnat to {proxy}\n\t}}\n}}\n"
        );
        nft_script(&script).map_err(|e| format!("{e}\n{script}"))?;
        tracing::info!(table, %proxy, "nftables interception rules installed");
        Ok(NftRules { table })
    }

    /// Lets go of the rules without deleting them: a successor installed
    /// its own in their place.
    pub fn release(self) {
        std::mem::forget(self);
    }

    /// Stops sending new connections to the proxy: a `return` goes at the
    /// head of each chain (a NAT chain sees only a connection's first
    /// packet, so nothing new is DNATed). The DNAT rules stay behind it
    /// until the drop, and that matters: they are what holds conntrack on
    /// in the node's namespace. With the last of them gone, the kernel
    /// stops tracking there, NAT stops for the connections already sent
    /// to the proxy, and their next packets go to the pods as strays.
    pub fn stop_intercepting(&self) -> Result<(), String> {
        let t = &self.table;
        nft_script(&format!(
            "insert rule ip {t} prerouting return\ninsert rule ip {t} output return\n"
        ))
    }
}

/// Runs `nft -f -` on `script`.
fn nft_script(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft (is nftables installed?): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "nft refused: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl Drop for NftRules {
    fn drop(&mut self) {
        let ok = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            tracing::info!(table = self.table, "nftables interception rules removed");
        } else {
            tracing::warn!(
                table = self.table,
                "could not remove the nftables rules; remove them with `nft delete table ip {}`",
                self.table
            );
        }
    }
}

/// The destination a DNATed connection was addressed to, from conntrack.
pub fn so_original_dst(socket: &impl AsFd) -> Option<SocketAddrV4> {
    socket2::SockRef::from(socket)
        .original_dst_v4()
        .ok()?
        .as_socket_ipv4()
}
