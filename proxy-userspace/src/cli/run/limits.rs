//! Resource limits the proxy raises at start.

/// Raises the soft limit on open descriptors to the hard limit (the soft
/// one is often 1024, and each proxied connection takes two), and says so
/// when even the hard limit is short of `max_connections` clients with a
/// backend connection each.
pub(super) fn raise_fd_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: RLIMIT_NOFILE is a valid resource, and `lim` a live rlimit
    // that getrlimit writes and setrlimit reads, within its size.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if !raised {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not raise the open-file limit");
        return;
    }
    let want = 2 * max_connections as u64 + 64;
    if lim.rlim_max != libc::RLIM_INFINITY && lim.rlim_max < want {
        tracing::warn!(
            limit = lim.rlim_max,
            want,
            "the open-file limit is below what limits.max_connections needs (two per connection); \
             raise it (LimitNOFILE, ulimit -Hn) or lower max_connections"
        );
    }
}
