//! The system calls a request makes, made directly.
//!
//! glibc's `recv`, `send` and `epoll_wait` are cancellation points: each
//! call switches the thread's asynchronous cancellation on and off around
//! the system call (about 45 instructions a call, five or six calls a
//! proxied request). Sidetrack never cancels a thread, so the loop makes
//! these calls through `syscall(2)`, which does only the call.

use std::{io, os::fd::RawFd};

/// The result of a raw system call: the count, or the error in `errno`.
fn result(ret: libc::c_long) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `recv(fd, buf, len, 0)`.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub(super) unsafe fn recv(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller vouches for the buffer; the address arguments are
    // null (recvfrom with no address is recv).
    result(unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf,
            len,
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    })
}

/// `send(fd, buf, len, MSG_NOSIGNAL)`: a peer that has gone is an `EPIPE`
/// error, not a SIGPIPE.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub(super) unsafe fn send(fd: RawFd, buf: *const u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller vouches for the buffer; no address (sendto with
    // none is send).
    result(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf,
            len,
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    })
}

/// `epoll_wait(epfd, events, max, timeout_ms)` (as `epoll_pwait` with no
/// signal mask, which every architecture has).
///
/// # Safety
/// `events` must be valid for writes of `max` entries.
pub(super) unsafe fn epoll_wait(
    epfd: RawFd,
    events: *mut libc::epoll_event,
    max: usize,
    timeout_ms: i32,
) -> io::Result<usize> {
    // SAFETY: the caller vouches for the buffer; a null mask leaves the
    // thread's signal mask as it is.
    result(unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait,
            epfd,
            events,
            max as libc::c_int,
            timeout_ms,
            std::ptr::null::<libc::sigset_t>(),
            8usize,
        )
    })
}

/// `sched_yield()`: lets another task ready on this CPU run first. It
/// cannot fail on Linux.
pub(super) fn sched_yield() {
    // SAFETY: no arguments, no memory touched.
    unsafe { libc::syscall(libc::SYS_sched_yield) };
}
