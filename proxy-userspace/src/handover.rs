//! Restarts without a gap: a new `sidetrack run` takes over the running
//! one's listening sockets and eBPF data path through a Unix socket, and
//! the old one drains what it holds.
//!
//! The running proxy listens on a `SOCK_SEQPACKET` socket (one message a
//! datagram, so no framing). A successor that finds it there says hello;
//! the predecessor answers with an [`Offer`]: what it runs (listen and
//! admin addresses, interception mode, eBPF ABI and program digest) and,
//! attached with SCM_RIGHTS, duplicates of the descriptors that make it a
//! proxy (each worker's listener, the admin listener, the eBPF maps and
//! links). The successor checks the offer, prepares itself on those very
//! objects (nothing is closed or detached, the predecessor keeps serving
//! meanwhile), and says ready; the predecessor answers done and stops
//! accepting. A successor that fails before it says ready just goes: its
//! duplicates close, and the predecessor never stopped.
//!
//! The listening sockets are the same kernel objects on both sides, so a
//! connection queued while the two change places waits in the one accept
//! queue and is accepted by whichever process accepts next: nothing is
//! reset. This module knows descriptors by name only; `cli::run` decides
//! what they are.

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

/// Bumped when the messages change meaning; a successor speaking another
/// version is refused (a cold restart then).
pub const PROTOCOL: u32 = 1;
/// The kernel's limit on descriptors in one SCM_RIGHTS message
/// (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;
/// The largest message either side sends.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the predecessor runs, sent with its descriptors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OfferMeta {
    pub pid: u32,
    /// The predecessor's `CARGO_PKG_VERSION`, for the log.
    pub version: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// `none`, `ebpf` or `iptables`.
    pub intercept: String,
    pub ebpf: Option<EbpfMeta>,
    /// The names of the descriptors attached, in order.
    pub fds: Vec<String>,
}

/// The eBPF data path a predecessor hands over.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EbpfMeta {
    /// The maps' layout version (`proxy_common::ABI`).
    pub abi: u32,
    /// A digest of the programs as loaded (object and patched globals):
    /// equal means the successor keeps them running as they are.
    pub programs: u64,
    /// The cgroup the programs are attached to.
    pub cgroup: PathBuf,
    /// The SO_MARK the programs leave alone.
    pub mark: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Hello { protocol: u32, pid: u32 },
    Offer(OfferMeta),
    Refused { reason: String },
    Ready,
    Done,
}

// ---------------------------------------------------------------- successor

/// A running proxy found at the handover socket, and what it offered. The
/// descriptors are the successor's to take; those it leaves are closed.
pub struct Predecessor {
    socket: Socket,
    pub meta: OfferMeta,
    fds: Vec<(String, Option<OwnedFd>)>,
}

/// Looks for a running proxy at `path` and asks for its descriptors.
/// `Ok(None)` when nobody listens there (no socket, or a stale one left by
/// a proxy that was killed).
pub fn connect(path: &Path, timeout: Duration) -> Result<Option<Predecessor>, String> {
    let err = |what: &str, e: io::Error| format!("handover socket {}: {what}: {e}", path.display());
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(|e| err("socket", e))?;
    let addr = SockAddr::unix(path).map_err(|e| err("address", e))?;
    match socket.connect(&addr) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(err("connect", e)),
    }
    socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
        .map_err(|e| err("timeout", e))?;
    send(
        &socket,
        &Message::Hello {
            protocol: PROTOCOL,
            pid: std::process::id(),
        },
        &[],
    )
    .map_err(|e| err("hello", e))?;
    let (message, fds) = recv(&socket).map_err(|e| err("waiting for the offer", e))?;
    let meta = match message {
        Message::Offer(meta) => meta,
        Message::Refused { reason } => return Err(format!("the running proxy refused: {reason}")),
        other => {
            return Err(format!(
                "the running proxy answered {other:?}, not an offer"
            ));
        }
    };
    if fds.len() != meta.fds.len() {
        return Err(format!(
            "the offer names {} descriptors and carries {}",
            meta.fds.len(),
            fds.len()
        ));
    }
    let fds = meta
        .fds
        .iter()
        .cloned()
        .zip(fds.into_iter().map(Some))
        .collect();
    Ok(Some(Predecessor { socket, meta, fds }))
}

impl Predecessor {
    /// Takes the descriptor named `name`, if offered (and not taken yet).
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds
            .iter_mut()
            .find(|(n, fd)| n == name && fd.is_some())
            .and_then(|(_, fd)| fd.take())
    }

    /// Takes every descriptor named `name`, in the order offered.
    pub fn take_all(&mut self, name: &str) -> Vec<OwnedFd> {
        self.fds
            .iter_mut()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, fd)| fd.take())
            .collect()
    }

    /// Says ready and waits for the predecessor's done: from then on it
    /// accepts nothing more, and the successor serves. An error means the
    /// predecessor did not confirm; it may still be serving.
    pub fn commit(self) -> Result<(), String> {
        send(&self.socket, &Message::Ready, &[]).map_err(|e| format!("saying ready: {e}"))?;
        match recv(&self.socket) {
            Ok((Message::Done, _)) => Ok(()),
            Ok((other, _)) => Err(format!("the running proxy answered {other:?}, not done")),
            Err(e) => Err(format!("waiting for the running proxy's done: {e}")),
        }
    }
}

// -------------------------------------------------------------- predecessor

/// The running proxy's handover socket.
pub struct Listener {
    socket: Socket,
    path: PathBuf,
    /// The socket file's identity, so that only our own file is removed.
    file: (u64, u64),
}

impl Listener {
    /// Binds a handover socket at `path`: first under a name of its own,
    /// then renamed over `path` (which may still be the predecessor's) in
    /// one step, so that a successor always finds one of the two.
    /// [`Listener::publish`] does the rename; until then nobody finds it.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let staged = staged_path(path);
        let _ = std::fs::remove_file(&staged);
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        socket.bind(&SockAddr::unix(&staged)?)?;
        socket.listen(4)?;
        let meta = std::fs::metadata(&staged)?;
        Ok(Listener {
            socket,
            path: path.to_owned(),
            file: (meta.dev(), meta.ino()),
        })
    }

    /// Puts the socket at its path, replacing the predecessor's.
    pub fn publish(&self) -> io::Result<()> {
        std::fs::rename(staged_path(&self.path), &self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops offering: a successor that looks now finds nobody (and starts
    /// afresh), and a [`Listener::serve_one`] waiting returns an error.
    pub fn close(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.remove_own_file();
    }

    fn remove_own_file(&self) {
        // Our file only: after a handover the path is the successor's.
        for path in [self.path.clone(), staged_path(&self.path)] {
            if std::fs::metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == self.file) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Waits for a successor and offers it `meta` and `fds` (which must
    /// match `meta.fds`). Returns once it said ready and was told done
    /// (`Ok(pid)`) or the attempt failed (`Err`, the successor gone or
    /// refused; the caller serves on and waits for the next). `started` is
    /// called when a successor said hello, before the offer is made.
    pub fn serve_one(
        &self,
        timeout: Duration,
        started: impl FnOnce(u32),
        offer: impl FnOnce() -> (OfferMeta, Vec<OwnedFd>),
    ) -> io::Result<Result<u32, String>> {
        let (conn, _) = self.socket.accept()?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        let pid = match recv(&conn) {
            Ok((Message::Hello { protocol, pid }, _)) if protocol == PROTOCOL => pid,
            Ok((Message::Hello { protocol, pid }, _)) => {
                let reason = format!("handover protocol {protocol}, ours is {PROTOCOL}");
                let _ = send(
                    &conn,
                    &Message::Refused {
                        reason: reason.clone(),
                    },
                    &[],
                );
                return Ok(Err(format!("successor {pid}: {reason}")));
            }
            Ok((other, _)) => return Ok(Err(format!("a successor said {other:?}, not hello"))),
            Err(e) => return Ok(Err(format!("reading a successor's hello: {e}"))),
        };
        started(pid);
        let (meta, fds) = offer();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
        if let Err(e) = send(&conn, &Message::Offer(meta), &borrowed) {
            return Ok(Err(format!("offering to successor {pid}: {e}")));
        }
        drop(borrowed);
        drop(fds);
        match recv(&conn) {
            Ok((Message::Ready, _)) => {}
            Ok((other, _)) => return Ok(Err(format!("successor {pid} said {other:?}"))),
            Err(e) => {
                return Ok(Err(format!(
                    "successor {pid} did not say ready (it failed to start?): {e}"
                )));
            }
        }
        match send(&conn, &Message::Done, &[]) {
            Ok(()) => Ok(Ok(pid)),
            Err(e) => Ok(Err(format!("telling successor {pid} done: {e}"))),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_own_file();
    }
}

/// Where a handover socket is bound before it is renamed into place.
fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}", std::process::id()));
    PathBuf::from(name)
}

// --------------------------------------------------------------------- wire

/// Sends one message, with `fds` attached (SCM_RIGHTS) when there are any.
fn send(socket: &Socket, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors, more than one message carries ({MAX_FDS})",
            fds.len()
        )));
    }
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u8; if raw.is_empty() { 0 } else { space }];
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut libc::c_void,
        iov_len: body.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: `control` is CMSG_SPACE(payload) bytes, room for one
        // header and `payload` bytes of data; CMSG_FIRSTHDR of a msghdr
        // whose control buffer is that large is non-null and points into
        // it, and CMSG_DATA of it has `payload` bytes before the end.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload as usize,
            );
        }
    }
    // SAFETY: `msg` points at `iov` (over `body`) and `control`, all alive
    // for the call; the descriptors in the control message are open
    // (borrowed by the caller).
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message and the descriptors attached to it (close-on-exec).
fn recv(socket: &Socket) -> io::Result<(Message, Vec<OwnedFd>)> {
    let mut body = vec![0u8; MAX_MESSAGE];
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![MaybeUninit::<u8>::zeroed(); space];
    let mut iov = libc::iovec {
        iov_base: body.as_mut_ptr().cast(),
        iov_len: body.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: `msg` points at `iov` (over `body`) and `control`, writable
    // and alive for the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control buffer and set its length;
    // CMSG_FIRSTHDR/NXTHDR walk only within it. An SCM_RIGHTS message's
    // data is an array of descriptors the kernel just installed in this
    // process, each ours to own (read unaligned: CMSG_DATA need not be
    // aligned for an i32).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other side closed",
        ));
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::other("message truncated"));
    }
    let message = serde_json::from_slice(&body[..n as usize]).map_err(io::Error::other)?;
    Ok((message, fds))
}

#[cfg(test)]
mod tests {
    use std::{io::Read, io::Write, os::unix::net::UnixStream};

    use super::*;

    fn meta(fds: Vec<String>) -> OfferMeta {
        OfferMeta {
            pid: 1,
            version: "test".into(),
            listen: "127.0.0.1:4140".parse().unwrap(),
            admin: "127.0.0.1:9990".parse().unwrap(),
            intercept: "none".into(),
            ebpf: None,
            fds,
        }
    }

    #[test]
    fn a_successor_gets_working_descriptors_and_commits() {
        let dir = std::env::temp_dir().join(format!("sidetrack-handover-{}", std::process::id()));
        let path = dir.join("h.sock");
        let listener = Listener::bind(&path).unwrap();
        assert!(
            connect(&path, Duration::from_secs(1)).unwrap().is_none(),
            "not published yet"
        );
        listener.publish().unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let theirs = theirs;
            let got = listener.serve_one(
                Duration::from_secs(5),
                |_| {},
                || {
                    let fd = || OwnedFd::from(theirs.try_clone().unwrap());
                    (
                        meta(vec!["stream".into(), "stream".into()]),
                        vec![fd(), fd()],
                    )
                },
            );
            (got.unwrap(), listener)
        });
        let mut p = connect(&path, Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(p.meta.listen.port(), 4140);
        let fds = p.take_all("stream");
        assert_eq!(fds.len(), 2);
        assert!(p.take("stream").is_none(), "taken once");
        // The descriptor is the other end of our pair.
        let mut theirs = UnixStream::from(fds.into_iter().next().unwrap());
        ours.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        theirs.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        p.commit().unwrap();
        let (got, listener) = server.join().unwrap();
        assert_eq!(got, Ok(std::process::id()));
        // Dropping removes the socket file, which is still its own.
        drop(listener);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_successor_that_leaves_before_ready_aborts_the_handover() {
        let dir =
            std::env::temp_dir().join(format!("sidetrack-handover-abort-{}", std::process::id()));
        let path = dir.join("h.sock");
        let listener = Listener::bind(&path).unwrap();
        listener.publish().unwrap();
        let server = std::thread::spawn(move || {
            listener
                .serve_one(Duration::from_secs(5), |_| {}, || (meta(vec![]), vec![]))
                .unwrap()
        });
        let p = connect(&path, Duration::from_secs(5)).unwrap().unwrap();
        drop(p);
        let got = server.join().unwrap();
        assert!(got.unwrap_err().contains("did not say ready"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stale_socket_is_nobody() {
        let dir =
            std::env::temp_dir().join(format!("sidetrack-handover-stale-{}", std::process::id()));
        let path = dir.join("h.sock");
        std::fs::create_dir_all(&dir).unwrap();
        // Bound, then the process "died": the file stays, nobody listens.
        let s = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        s.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        drop(s);
        assert!(connect(&path, Duration::from_secs(1)).unwrap().is_none());
        assert!(
            connect(&dir.join("none.sock"), Duration::from_secs(1))
                .unwrap()
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
