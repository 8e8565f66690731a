//! What the proxy tells about the traffic it carries: the data-path
//! metrics that `route` and `proxy` count into and `admin` exports, and
//! the bound on per-request log lines.
//! Everything here is bounded and off the request path's critical
//! section (atomics only on the hot path).

pub mod access_log;
pub mod capture;
pub mod dashboard;
pub mod exchange;
pub mod log_limit;
pub mod metrics;
pub mod trace;
