//! Moving bytes between sockets with splice(2), through a pipe, so that body
//! bytes never enter userspace.
//!
//! The sockets are tokio's (non-blocking, edge-triggered); every splice is
//! done inside `try_io`, so that an EAGAIN clears the cached readiness and the
//! next wait for readiness is for the kernel to say so again.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::{io::Interest, net::TcpStream};

use super::stream;

/// How much one splice call asks for, and the pipe's size.
const PIPE_SIZE: usize = 1 << 20;

/// A pipe kept per connection for splicing; it may hold bytes between calls
/// only inside [`Pipe::transfer`].
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

/// Which end of a transfer failed: reading `from` or writing `to`.
#[derive(Debug)]
pub enum Broken {
    From(io::Error),
    To(io::Error),
}

impl From<Broken> for io::Error {
    fn from(b: Broken) -> io::Error {
        match b {
            Broken::From(e) | Broken::To(e) => e,
        }
    }
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe means fewer round trips; the default (64 KiB) is kept
        // when the system limit refuses.
        // SAFETY: fcntl on a descriptor we own.
        let got = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let capacity = if got > 0 { got as usize } else { 64 * 1024 };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Moves exactly `len` bytes from `from` to `to`, or until `from` ends
    /// when `len` is `None`. Returns the bytes moved; an early end of a known
    /// length is an `UnexpectedEof` error.
    pub async fn transfer(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        len: Option<u64>,
        progress: &impl Fn(usize),
    ) -> Result<u64, Broken> {
        let mut moved = 0u64;
        loop {
            let want = match len {
                Some(n) if moved >= n => return Ok(moved),
                Some(n) => (n - moved).min(self.capacity as u64) as usize,
                None => self.capacity,
            };
            stream::read_ready(from).await.map_err(Broken::From)?;
            let got = match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), self.write.as_raw_fd(), want)
            }) {
                Ok(0) => {
                    return match len {
                        None => Ok(moved),
                        Some(n) => Err(Broken::From(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("peer closed with {} of {n} bytes to go", n - moved),
                        ))),
                    };
                }
                Ok(got) => {
                    progress(got);
                    got
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Broken::From(e)),
            };
            let mut left = got;
            while left > 0 {
                stream::write_ready(to).await.map_err(Broken::To)?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(self.read.as_raw_fd(), to.as_raw_fd(), left)
                }) {
                    Ok(0) => return Err(Broken::To(io::ErrorKind::WriteZero.into())),
                    Ok(n) => left -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(Broken::To(e)),
                }
            }
            moved += got as u64;
        }
    }
}

fn splice(from: libc::c_int, to: libc::c_int, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (sockets and pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A blocking std end (driven from a thread) and a runtime end.
    fn pair() -> (std::net::TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        s.set_nonblocking(true).unwrap();
        (c, TcpStream::from_std(s).unwrap())
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn moves_an_exact_length_and_leaves_the_rest() {
        run(async {
            let (mut src_w, src_r) = pair();
            let (mut dst_r, dst_w) = pair();
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let want = data.clone();
            let writer = std::thread::spawn(move || {
                src_w.write_all(&data).unwrap();
                src_w.write_all(b"NEXT").unwrap();
                src_w
            });
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                dst_r.read_to_end(&mut got).unwrap();
                got
            });
            let mut pipe = Pipe::new().unwrap();
            let n = pipe
                .transfer(&src_r, &dst_w, Some(want.len() as u64), &|_| {})
                .await
                .unwrap();
            assert_eq!(n, want.len() as u64);
            drop(dst_w);
            assert!(reader.join().unwrap() == want, "spliced bytes differ");
            // The bytes after the body are still in the source socket.
            let mut next = [0u8; 4];
            let mut at = 0;
            while at < 4 {
                at += stream::read(&src_r, &mut next[at..]).await.unwrap();
            }
            assert_eq!(&next, b"NEXT");
            drop(writer.join().unwrap());
        });
    }

    #[test]
    fn an_early_end_is_an_error() {
        run(async {
            let (mut src_w, src_r) = pair();
            let (_dst_r, dst_w) = pair();
            src_w.write_all(b"short").unwrap();
            drop(src_w);
            let err = Pipe::new()
                .unwrap()
                .transfer(&src_r, &dst_w, Some(100), &|_| {})
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Broken::From(e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "{err:?}"
            );
        });
    }

    #[test]
    fn until_eof_moves_everything() {
        run(async {
            let (mut src_w, src_r) = pair();
            let (mut dst_r, dst_w) = pair();
            let writer = std::thread::spawn(move || src_w.write_all(&[7u8; 200_000]).unwrap());
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                dst_r.read_to_end(&mut got).unwrap();
                got
            });
            let n = Pipe::new()
                .unwrap()
                .transfer(&src_r, &dst_w, None, &|_| {})
                .await
                .unwrap();
            assert_eq!(n, 200_000);
            drop(dst_w);
            assert_eq!(reader.join().unwrap().len(), 200_000);
            writer.join().unwrap();
        });
    }
}
