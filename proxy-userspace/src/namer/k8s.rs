//! The Kubernetes namer, `io.l5d.k8s`: `/#/io.l5d.k8s/<namespace>/<port>/<service>`
//! binds to the service's endpoints, as Linkerd 1's namer of that name did
//! (the rules are in [`state`]).
//!
//! Lookups run on the request path and must not wait, so they only read a
//! snapshot; watches keep it current. The first lookup of a namespace
//! starts its two watches (EndpointSlices with a `kubernetes.io/service-name`
//! label, and Services), shared by every route and request from then on.
//! Until both have listed once, a lookup there answers a *pending* error,
//! not neg: neg would let an earlier dentry take over a name that exists.
//!
//! The watches are `kube::runtime::watcher`s on the namer's own thread and
//! current-thread runtime (the proxy's workers never run them). A watch
//! that ends normally is resumed by the watcher; one that fails (API
//! server down or restarted, `410 Gone`, 403, 5xx) starts over with a list
//! after a back-off. The snapshot is kept meanwhile, and a list replaces
//! it only once complete. Every change bumps the shared routing
//! generation, so cached routes bind again.

pub mod cluster_ips;
pub mod pods;
pub mod state;

#[cfg(test)]
mod fixtures;

use std::{
    collections::HashMap,
    future::Future,
    pin::pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, Client, runtime::watcher};

use crate::dtab::{Endpoint, Endpoints, NameTree, Namer, NamerBound, NamerError, Path};
use state::{Namespace, PortRef, SERVICE_NAME_LABEL};

/// The namer's kind, as dtabs name it: `/#/io.l5d.k8s/...`.
pub const KIND: &str = "io.l5d.k8s";

/// Labels of a path the namer consumes: namespace, port, service.
const CONSUMED: usize = 3;

/// How the namer watches.
#[derive(Clone, Debug)]
pub struct Options {
    /// The first wait after a watch fails; it doubles up to `backoff_max`
    /// (each wait drawn between half and all of it) and starts again after
    /// a complete list.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Namespaces watched at most. Paths come from requests' own dtabs
    /// too, so a client must not be able to open watches without bound;
    /// a lookup past it is an error.
    pub max_namespaces: usize,
    /// Watch every namespace's Services for their ClusterIPs (what names
    /// a request without a usable Host). The namer's own tests, which
    /// answer each request by hand, leave it out.
    pub cluster_ips: bool,
    /// This node's name: its pods are watched for their namespaces.
    pub node_name: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        // kube's own default back-off: 0.8 s doubling to 30 s.
        Options {
            backoff_initial: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            max_namespaces: 256,
            cluster_ips: true,
            node_name: None,
        }
    }
}

pub struct K8sNamer {
    shared: Arc<Shared>,
    /// Which Service owns a ClusterIP (every namespace's, one watch).
    cluster_ips: Arc<cluster_ips::ClusterIps>,
    /// The namespace of each pod on this node, by address.
    pods: Arc<pods::PodNamespaces>,
    client: Client,
    runtime: tokio::runtime::Handle,
    options: Options,
    /// Dropped with the namer: the namer's thread ends, and its watches.
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Shared {
    namespaces: RwLock<HashMap<String, Arc<RwLock<Slot>>>>,
    generation: Arc<AtomicU64>,
    restarts: AtomicU64,
}

/// One namespace: what its watches said, and how they are doing.
#[derive(Default)]
struct Slot {
    state: Namespace,
    /// Each watch's last error, until its next complete list (shown in
    /// pending answers).
    last_error: [Option<String>; 2],
    /// Since when each watch (Services, EndpointSlices) has not been known
    /// current: not listed yet, relisting, or failed with no success since.
    stale_since: [Option<Instant>; 2],
}

/// What `/metrics` shows of the namer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Errors after which a watch started again with a list (after a
    /// back-off): the API server down or restarted, `410 Gone`, 403, 5xx.
    pub restarts: u64,
    pub namespaces: usize,
    pub services: usize,
    /// Endpoints in all the slices known, ready or not.
    pub endpoints: usize,
    /// How long the least current watch has not been known current: since
    /// it started, or failed, without a complete list since (zero when
    /// every watch has listed and had no error since).
    pub sync_age: Duration,
}

impl K8sNamer {
    /// Starts the namer's thread and runtime, where `connect` makes the
    /// client (it runs there, so a client built on a mock service spawns
    /// its tasks on that runtime). Fails when `connect` does.
    pub fn start<F, Fut>(
        connect: F,
        generation: Arc<AtomicU64>,
        options: Options,
    ) -> Result<Arc<K8sNamer>, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Client, String>>,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("k8s-namer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("k8s namer runtime: {e}")));
                        return;
                    }
                };
                match runtime.block_on(connect()) {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok((client, runtime.handle().clone())));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                // Runs the watches until the namer is dropped.
                let _ = runtime.block_on(stop_rx);
            })
            .map_err(|e| format!("spawning the k8s namer thread: {e}"))?;
        let (client, runtime) = ready_rx
            .recv()
            .map_err(|_| "the k8s namer thread ended".to_string())??;
        let cluster_ips = Arc::new(cluster_ips::ClusterIps::default());
        if options.cluster_ips {
            runtime.spawn(cluster_ips::watch(client.clone(), cluster_ips.clone()));
        }
        let pods = Arc::new(pods::PodNamespaces::default());
        if let Some(node) = options.node_name.clone() {
            runtime.spawn(pods::watch(client.clone(), node, pods.clone()));
        }
        Ok(Arc::new(K8sNamer {
            cluster_ips,
            pods,
            shared: Arc::new(Shared {
                namespaces: RwLock::default(),
                generation,
                restarts: AtomicU64::new(0),
            }),
            client,
            runtime,
            options,
            _stop: stop_tx,
        }))
    }

    /// The slot of `ns`, its watches started if this is its first lookup.
    fn slot(&self, ns: &str) -> Result<Arc<RwLock<Slot>>, NamerError> {
        if let Some(slot) = self
            .shared
            .namespaces
            .read()
            .expect("k8s namer lock")
            .get(ns)
        {
            return Ok(slot.clone());
        }
        let mut namespaces = self.shared.namespaces.write().expect("k8s namer lock");
        if let Some(slot) = namespaces.get(ns) {
            return Ok(slot.clone());
        }
        if namespaces.len() >= self.options.max_namespaces {
            return Err(NamerError::new(format!(
                "{KIND}: namespace {ns} not watched: {} namespaces are, the most the namer watches",
                namespaces.len()
            )));
        }
        let now = Instant::now();
        let slot = Arc::new(RwLock::new(Slot {
            stale_since: [Some(now); 2],
            ..Slot::default()
        }));
        namespaces.insert(ns.to_owned(), slot.clone());
        tracing::info!(namespace = ns, "k8s namer: watching a namespace");
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        self.runtime.spawn(watch(
            services,
            watcher::Config::default(),
            Watch {
                kind: Kind::Services,
                namespace: ns.to_owned(),
                slot: slot.clone(),
                shared: self.shared.clone(),
                options: self.options.clone(),
            },
        ));
        self.runtime.spawn(watch(
            slices,
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            Watch {
                kind: Kind::Slices,
                namespace: ns.to_owned(),
                slot: slot.clone(),
                shared: self.shared.clone(),
                options: self.options.clone(),
            },
        ));
        Ok(slot)
    }

    /// The Service whose ClusterIP is `ip` (namespace, name), for a
    /// request whose original destination must name it. Lock-free.
    pub fn service_at(&self, ip: std::net::Ipv4Addr) -> Option<cluster_ips::ServiceName> {
        self.cluster_ips.service_at(ip)
    }

    /// Keeps `hook` told of the ClusterIPs and ports whose Services say
    /// never to intercept them (`sidetrack.io/skip-ports`).
    pub fn on_skipped(&self, hook: cluster_ips::SkipHook) {
        self.cluster_ips.on_skipped(hook);
    }

    /// The namespace of the pod on this node whose address is `ip`.
    /// Lock-free.
    pub fn namespace_of(&self, ip: std::net::Ipv4Addr) -> Option<Arc<str>> {
        self.pods.namespace_of(ip)
    }

    /// What is known of the pod on this node whose address is `ip`: its
    /// namespace and labels. Lock-free.
    pub fn pod_at(&self, ip: std::net::Ipv4Addr) -> Option<Arc<pods::PodInfo>> {
        self.pods.pod_at(ip)
    }

    /// Whether the Service at ClusterIP `ip` marks `port` opaque (the
    /// `sidetrack.io/opaque-ports` annotation). Lock-free.
    pub fn is_opaque(&self, ip: std::net::Ipv4Addr, port: u16) -> bool {
        self.cluster_ips.is_opaque(ip, port)
    }

    /// Starts watching `ns` now, before any request names it (the
    /// namespace of short names, at start), so the first request there
    /// does not wait for the first list.
    pub fn watch_namespace(&self, ns: &str) {
        if let Err(e) = self.slot(ns) {
            tracing::warn!(namespace = ns, error = %e, "k8s namer: not watching");
        }
    }

    pub fn stats(&self) -> Stats {
        let namespaces = self.shared.namespaces.read().expect("k8s namer lock");
        let now = Instant::now();
        let mut stats = Stats {
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            namespaces: namespaces.len(),
            ..Stats::default()
        };
        for slot in namespaces.values() {
            let slot = slot.read().expect("k8s namer lock");
            stats.services += slot.state.services.len();
            stats.endpoints += slot.state.endpoint_count();
            for since in slot.stale_since.iter().flatten() {
                stats.sync_age = stats.sync_age.max(now.saturating_duration_since(*since));
            }
        }
        stats
    }
}

impl Namer for K8sNamer {
    fn lookup(&self, path: &Path) -> Result<NameTree<NamerBound>, NamerError> {
        let label = |i| path.get(i).and_then(|l| std::str::from_utf8(l).ok());
        let (Some(ns), Some(port), Some(service)) = (label(0), label(1), label(2)) else {
            return Ok(NameTree::Neg);
        };
        // Names no namespace can have open no watch.
        if !is_dns_label(ns) {
            return Ok(NameTree::Neg);
        }
        let Some(port) = PortRef::parse(port) else {
            return Ok(NameTree::Neg);
        };
        let slot = self.slot(ns)?;
        let slot = slot.read().expect("k8s namer lock");
        if !slot.state.synced() {
            let why: String = slot
                .last_error
                .iter()
                .flatten()
                .map(|e| format!("; last error: {e}"))
                .collect();
            return Err(NamerError::pending(format!(
                "{KIND}: namespace {ns} is not synced yet (waiting for the API server's first list of its Services and EndpointSlices{why})"
            )));
        }
        Ok(match slot.state.lookup(port, service) {
            None => NameTree::Neg,
            Some(addrs) => NameTree::Leaf(NamerBound {
                consumed: CONSUMED,
                endpoints: Endpoints::Set(addrs.into_iter().map(Endpoint::new).collect()),
            }),
        })
    }
}

/// An RFC 1123 label, as namespace names are.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Services = 0,
    Slices = 1,
}

/// One watch: which, and where its events go.
struct Watch {
    kind: Kind,
    namespace: String,
    slot: Arc<RwLock<Slot>>,
    shared: Arc<Shared>,
    options: Options,
}

/// Applies one kind's events to the namespace (true: lookups see a change).
trait Apply: Sized {
    fn apply(ns: &mut Namespace, event: watcher::Event<Self>) -> bool;
}

impl Apply for Service {
    fn apply(ns: &mut Namespace, event: watcher::Event<Service>) -> bool {
        state::convert(event, state::service_entry).is_some_and(|e| ns.services.apply(e))
    }
}

impl Apply for EndpointSlice {
    fn apply(ns: &mut Namespace, event: watcher::Event<EndpointSlice>) -> bool {
        state::convert(event, state::slice_entry).is_some_and(|e| ns.slices.apply(e))
    }
}

/// Runs one watch for as long as the namer's runtime runs.
///
/// After an error the watch starts over with a list, after a back-off:
/// kube's watcher would resume from the last resourceVersion, but a
/// resumed watch says nothing until something changes, so the namer could
/// not tell when it is current again. A list ends in `InitDone`, which
/// does (and a `410 Gone` needs the list anyway). The snapshot is kept
/// meanwhile, and replaced only once the list is complete.
async fn watch<K>(api: Api<K>, config: watcher::Config, w: Watch)
where
    K: Apply
        + kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let mut backoff = Backoff::new(w.options.backoff_initial, w.options.backoff_max);
    let i = w.kind as usize;
    loop {
        let mut events = pin!(watcher(api.clone(), config.clone()));
        while let Some(item) = events.next().await {
            let mut slot = w.slot.write().expect("k8s namer lock");
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    w.shared.restarts.fetch_add(1, Ordering::Relaxed);
                    slot.stale_since[i].get_or_insert_with(Instant::now);
                    tracing::warn!(namespace = %w.namespace, kind = ?w.kind, error = %e, "k8s namer: watch failed; keeping what is known and listing again after a back-off");
                    slot.last_error[i] = Some(e.to_string());
                    break;
                }
            };
            let done = matches!(event, watcher::Event::InitDone);
            if K::apply(&mut slot.state, event) {
                w.shared.generation.fetch_add(1, Ordering::Release);
            }
            if done {
                slot.stale_since[i] = None;
                slot.last_error[i] = None;
                backoff.reset();
                tracing::debug!(namespace = %w.namespace, kind = ?w.kind, "k8s namer: listed");
            }
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Exponential back-off with jitter: each wait between half and all of a
/// step that doubles from `initial` to `max`; `reset` (after a complete
/// list) starts again.
struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            step: initial,
        }
    }

    fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }

    fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// The client of `sidetrack run`. An `https://` `api_server` (or none)
/// takes credentials and the CA from the pod's service account, else the
/// kubeconfig, as `kube::Config::infer` finds them; an `http://` one is
/// used as it is, with no credentials (`kubectl proxy`, a test server: a
/// token must not travel in clear).
pub async fn connect(api_server: Option<String>) -> Result<Client, String> {
    let url = api_server
        .as_deref()
        .map(|s| {
            s.parse::<http::Uri>()
                .map_err(|e| format!("k8s.api_server {s:?}: {e}"))
        })
        .transpose()?;
    let config = match url {
        Some(url) if url.scheme_str() == Some("http") => kube::Config::new(url),
        url => {
            let mut config = kube::Config::infer().await.map_err(|e| {
                format!(
                    "k8s namer: no API server credentials ({e}); in a pod they come from its service account"
                )
            })?;
            if let Some(url) = url {
                config.cluster_url = url;
            }
            config
        }
    };
    tracing::info!(api_server = %config.cluster_url, "k8s namer: API server");
    Client::try_from(config).map_err(|e| format!("k8s namer client: {e}"))
}

#[cfg(test)]
mod tests;
