//! Non-blocking TCP sockets on the worker's [`Runtime`](super::Runtime).
//!
//! Every operation goes through the socket's cached readiness: `try_*`
//! answers `WouldBlock` without a system call while the reactor has not
//! said the socket is ready, and a `WouldBlock` from the kernel clears the
//! bit so that the next wait is for a fresh edge. Methods take `&self`: a
//! connection's two directions are driven from one task.
//!
//! Only a `WouldBlock` clears readiness. A read that returns less than it
//! asked for does not mean the socket is empty here: in eBPF mode a
//! socket's first bytes can land in its TCP receive queue (sent before the
//! proxy's end joined the SOCKHASH, while the handshake's last ACK was
//! still on its way through the veth) and the rest in the sk_msg ingress
//! queue, and one read takes from one queue only. Taking a short read for
//! an empty socket would wait for an edge that never comes (tokio does
//! take it so; a test here caught the hang on an opaque tunnel). Sockets
//! the proxy connects are no exception: letting their short reads clear
//! readiness (which would spare the pool's quiet check a read per request)
//! hung a 200 kB echo through an opaque tunnel in eBPF mode.

use std::{
    future::poll_fn,
    io,
    mem::MaybeUninit,
    net::{Shutdown, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd},
    sync::Arc,
};

use super::{IoState, READABLE, WRITABLE};

/// Which readiness an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Readable,
    Writable,
}

impl Interest {
    fn bit(self) -> u8 {
        match self {
            Interest::Readable => READABLE,
            Interest::Writable => WRITABLE,
        }
    }
}

/// A connected socket registered with this thread's runtime.
#[derive(Debug)]
pub struct TcpStream {
    inner: std::net::TcpStream,
    pub(super) io: Arc<IoState>,
}

impl std::fmt::Debug for IoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoState")
            .field("ready", &self.ready)
            .field("key", &self.key)
            .finish()
    }
}

impl TcpStream {
    /// Registers a connected std stream (made non-blocking here) with this
    /// thread's runtime.
    pub fn from_std(inner: std::net::TcpStream) -> io::Result<TcpStream> {
        inner.set_nonblocking(true)?;
        let io = super::register(inner.as_raw_fd())?;
        Ok(TcpStream { inner, io })
    }

    /// Connects to `addr` (no options, no timeout: see [`TcpSocket`]).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        TcpSocket::new(addr)?.connect(addr).await
    }

    /// Waits until the socket may be readable (the next read may still
    /// find nothing: readiness is a hint).
    pub async fn readable(&self) -> io::Result<()> {
        self.ready(Interest::Readable).await
    }

    /// Waits until the socket may be writable.
    pub async fn writable(&self) -> io::Result<()> {
        self.ready(Interest::Writable).await
    }

    pub async fn ready(&self, interest: Interest) -> io::Result<()> {
        let bit = interest.bit();
        poll_fn(|cx| self.io.poll_ready(bit, cx)).await;
        Ok(())
    }

    /// Runs `f` (a system call on this socket) if the socket is ready for
    /// `interest`; a `WouldBlock` from it clears that readiness.
    pub fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        let bit = interest.bit();
        if !self.io.is_ready(bit) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let out = f();
        if let Err(e) = &out
            && e.kind() == io::ErrorKind::WouldBlock
        {
            self.io.clear(bit);
            if bit == READABLE {
                self.io.drained();
            }
        }
        out
    }

    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.inner.as_raw_fd();
        let asked = buf.len();
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = self.try_io(Interest::Readable, || unsafe {
            super::sys::recv(fd, buf.as_mut_ptr(), asked)
        })?;
        self.after_read(n, asked);
        Ok(n)
    }

    /// Notes a short read (not an end) as one that found the socket empty.
    fn after_read(&self, n: usize, asked: usize) {
        if n > 0 && n < asked {
            self.io.drained();
        }
    }

    /// Nothing has arrived since a read found the socket empty, as far as
    /// the reactor knows: the loop has looked at its events since the last
    /// `WouldBlock` or short read, and none was for this socket. Answers
    /// without a system call; bytes or an end that came in since the
    /// loop's last look are not seen. (A short read here is taken for
    /// "empty", which in eBPF mode it is not always: bytes can wait in the
    /// other of a socket's two queues, see the module doc. Fit for a
    /// connection whose last exchange read everything it was owed, as the
    /// pool's are, where anything left would be bytes nobody asked for.)
    pub fn quiet(&self) -> bool {
        self.io.quiet()
    }

    /// Reads into `buf`'s spare capacity (not zeroed first) and extends it.
    pub fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            buf.reserve(64);
        }
        let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
        let asked = spare.len();
        let fd = self.inner.as_raw_fd();
        // SAFETY: recv writes at most `spare.len()` bytes into memory we
        // own; the bytes it reports are initialised by it.
        let n = self.try_io(Interest::Readable, || unsafe {
            super::sys::recv(fd, spare.as_mut_ptr().cast(), asked)
        })?;
        // SAFETY: recv initialised the first `n` spare bytes.
        unsafe { buf.set_len(buf.len() + n) };
        self.after_read(n, asked);
        Ok(n)
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.inner.as_raw_fd();
        // SAFETY: send reads at most `buf.len()` bytes from `buf`.
        self.try_io(Interest::Writable, || unsafe {
            super::sys::send(fd, buf.as_ptr(), buf.len())
        })
    }

    /// Reads what is there, waiting for something (0: the peer closed).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.readable().await?;
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Reads into `buf`'s spare capacity, waiting for something.
    pub async fn read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            self.readable().await?;
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Writes all of `data`, waiting for room as needed.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => data = &data[k..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Shuts the write side (the peer reads an end); errors (the socket
    /// already closed) are of no use to the caller and are dropped.
    pub fn shutdown_write(&self) {
        let _ = self.inner.shutdown(Shutdown::Write);
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.set_nodelay(on)
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        // The descriptor closes right after (leaving the epoll set).
        self.io.release();
    }
}

/// A listening socket registered with this thread's runtime.
#[derive(Debug)]
pub struct TcpListener {
    inner: Option<std::net::TcpListener>,
    io: Arc<IoState>,
}

impl TcpListener {
    pub fn from_std(inner: std::net::TcpListener) -> io::Result<TcpListener> {
        inner.set_nonblocking(true)?;
        let io = super::register(inner.as_raw_fd())?;
        Ok(TcpListener {
            inner: Some(inner),
            io,
        })
    }

    fn fd(&self) -> RawFd {
        self.inner.as_ref().expect("listener present").as_raw_fd()
    }

    /// Takes a connection (non-blocking, registered here), waiting for one.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            poll_fn(|cx| self.io.poll_ready(READABLE, cx)).await;
            let fd = self.fd();
            let got = self.io_try(|| {
                // SAFETY: accept4 into storage big enough for any address.
                let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                let conn = unsafe {
                    libc::accept4(
                        fd,
                        (&mut addr as *mut libc::sockaddr_storage).cast(),
                        &mut len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if conn < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh descriptor we own.
                let stream = unsafe { std::net::TcpStream::from_raw_fd(conn) };
                let peer = sockaddr_to_std(&addr)
                    .ok_or_else(|| io::Error::other("accepted a non-IP address"))?;
                Ok((stream, peer))
            });
            match got {
                Ok((stream, peer)) => {
                    let io = super::register(stream.as_raw_fd())?;
                    return Ok((TcpStream { inner: stream, io }, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn io_try<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let out = f();
        if let Err(e) = &out
            && e.kind() == io::ErrorKind::WouldBlock
        {
            self.io.clear(READABLE);
        }
        out
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.as_ref().expect("listener present").local_addr()
    }

    /// Hands the listener back as a std one, out of the runtime (blocking
    /// mode untouched: still non-blocking).
    pub fn into_std(mut self) -> std::net::TcpListener {
        let inner = self.inner.take().expect("listener present");
        super::deregister(inner.as_raw_fd(), &self.io);
        inner
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.io.release();
    }
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A socket not yet connected: options are set on it, then [`connect`](TcpSocket::connect).
#[derive(Debug)]
pub struct TcpSocket {
    inner: socket2::Socket,
}

impl TcpSocket {
    /// A non-blocking TCP socket of `addr`'s family.
    pub fn new(addr: SocketAddr) -> io::Result<TcpSocket> {
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: a plain system call; the descriptor is checked and owned.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpSocket {
            inner: unsafe { socket2::Socket::from_raw_fd(fd) },
        })
    }

    pub fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        self.inner.bind(&addr.into())
    }

    /// Connects, waiting for the handshake; the stream is registered here.
    pub async fn connect(self, addr: SocketAddr) -> io::Result<TcpStream> {
        match self.inner.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        // SAFETY: the descriptor moves from the socket to the stream.
        let inner = unsafe { std::net::TcpStream::from_raw_fd(self.inner.into_raw_fd()) };
        let io = super::register(inner.as_raw_fd())?;
        let stream = TcpStream { inner, io };
        stream.writable().await?;
        if let Some(e) = stream.inner.take_error()? {
            return Err(e);
        }
        // Writable with no error can also be a reset seen as a hang-up:
        // only a peer address means connected.
        stream.inner.peer_addr()?;
        Ok(stream)
    }
}

impl AsRawFd for TcpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}
