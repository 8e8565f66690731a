//! What the proxy tells about the traffic it carries: the data-path
//! metrics that `route` and `proxy` count into and `admin` exports.
//! Everything here is bounded and off the request path's critical
//! section (atomics only on the hot path).

pub mod metrics;
