//! Namers and balancing: where bound names get their addresses, and how one
//! address is picked per request.
//!
//! `/$/inet` is built into the dtab engine; `fs` is the file namer
//! (`io.l5d.fs`); `k8s` the Kubernetes namer (`io.l5d.k8s`, EndpointSlices
//! and Services watched through the API server); `balancer` keeps
//! per-backend state and picks with power of two choices over peak-EWMA
//! latency.

pub mod balancer;
pub mod fs;
pub mod k8s;
