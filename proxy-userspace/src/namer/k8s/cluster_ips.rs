//! Which Service owns a ClusterIP, for requests without a usable Host: an
//! intercepted connection's original destination (a ClusterIP and a port)
//! then names the Service, as its Host would have.
//!
//! One watch of every namespace's Services (the namer's others are per
//! namespace, started by lookups: a ClusterIP can be any namespace's).
//! The same watch reads each Service's [`OPAQUE_PORTS`] annotation: its
//! ports whose connections are tunnelled, never parsed.
//! The data path reads the table without a lock: each change publishes a
//! new one through an `ArcSwap`.

use std::{collections::HashMap, net::Ipv4Addr, pin::pin, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

/// A Service: its namespace and name.
pub type ServiceName = (Arc<str>, Arc<str>);

/// The annotation that lists a Service's opaque ports (its own ports,
/// comma-separated): connections to them are tunnelled to their
/// destination and never parsed, like `interception.opaque_ports` for one
/// Service.
pub const OPAQUE_PORTS: &str = "sidetrack.io/opaque-ports";

/// The annotation that lists a Service's ports never intercepted: connects
/// to them go straight to the ClusterIP, as if no proxy ran (eBPF mode),
/// like `interception.exclude_ports` for one Service.
pub const SKIP_PORTS: &str = "sidetrack.io/skip-ports";

/// Told the destinations never intercepted whenever they change.
pub type SkipHook = Box<dyn Fn(&[Destination]) + Send + Sync>;

/// A ClusterIP and a port.
pub type Destination = (Ipv4Addr, u16);

/// A ClusterIP's Service and its opaque ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub service: ServiceName,
    pub opaque_ports: Vec<u16>,
}

/// The table the data path reads.
#[derive(Default)]
pub struct ClusterIps {
    table: ArcSwap<HashMap<Ipv4Addr, Owner>>,
    /// The destinations never intercepted, and who keeps the eBPF map of
    /// them (set once interception is on).
    skipped: std::sync::Mutex<(Vec<Destination>, Option<SkipHook>)>,
}

impl ClusterIps {
    /// The Service whose ClusterIP is `ip`.
    pub fn service_at(&self, ip: Ipv4Addr) -> Option<ServiceName> {
        self.table.load().get(&ip).map(|o| o.service.clone())
    }

    /// Whether the Service at `ip` marks `port` opaque.
    pub fn is_opaque(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.table
            .load()
            .get(&ip)
            .is_some_and(|o| o.opaque_ports.contains(&port))
    }

    /// Keeps `hook` told of the destinations never intercepted: now, and
    /// at each change.
    pub fn on_skipped(&self, hook: SkipHook) {
        let mut skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        hook(&skipped.0);
        skipped.1 = Some(hook);
    }

    fn set_skipped(&self, list: Vec<(Ipv4Addr, u16)>) {
        let mut skipped = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        if skipped.0 != list {
            if let Some(hook) = &skipped.1 {
                hook(&list);
            }
            skipped.0 = list;
        }
    }

    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn publish(&self, known: &Known) {
        self.table.store(Arc::new(known.table()));
    }
}

/// What the watch has seen: each Service's ClusterIPs (IPv4 ones), by
/// namespace and name. Pure, for the tests.
#[derive(Default)]
pub struct Known {
    services: HashMap<ServiceName, Entry>,
    /// A relist in progress, applied whole at its end.
    relist: Option<HashMap<ServiceName, Entry>>,
}

/// What the table keeps of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    ips: Vec<Ipv4Addr>,
    opaque_ports: Vec<u16>,
    skip_ports: Vec<u16>,
}

impl Known {
    /// Applies one event; whether the table changed.
    pub fn apply(&mut self, event: watcher::Event<Service>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(s) => {
                if let (Some(relist), Some((name, e))) = (&mut self.relist, entry(&s)) {
                    relist.insert(name, e);
                }
                false
            }
            watcher::Event::InitDone => match self.relist.take() {
                Some(all) if all != self.services => {
                    self.services = all;
                    true
                }
                _ => false,
            },
            watcher::Event::Apply(s) => match entry(&s) {
                Some((name, e)) => self.services.insert(name, e.clone()) != Some(e),
                None => false,
            },
            watcher::Event::Delete(s) => match entry(&s) {
                Some((name, _)) => self.services.remove(&name).is_some(),
                None => false,
            },
        }
    }

    /// Every ClusterIP and port a Service says is never intercepted,
    /// sorted.
    pub fn skipped(&self) -> Vec<(Ipv4Addr, u16)> {
        let mut out: Vec<(Ipv4Addr, u16)> = self
            .services
            .values()
            .flat_map(|e| {
                e.ips
                    .iter()
                    .flat_map(|ip| e.skip_ports.iter().map(move |p| (*ip, *p)))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// ClusterIP to Service.
    pub fn table(&self) -> HashMap<Ipv4Addr, Owner> {
        self.services
            .iter()
            .flat_map(|(name, e)| {
                e.ips.iter().map(move |ip| {
                    (
                        *ip,
                        Owner {
                            service: name.clone(),
                            opaque_ports: e.opaque_ports.clone(),
                        },
                    )
                })
            })
            .collect()
    }
}

/// A Service's name, IPv4 ClusterIPs (none for a headless one) and opaque
/// ports (what of the annotation is a port number; the rest is ignored).
fn entry(s: &Service) -> Option<(ServiceName, Entry)> {
    let ns = s.metadata.namespace.as_deref()?;
    let name = s.metadata.name.as_deref()?;
    let spec = s.spec.as_ref()?;
    let ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .fold(Vec::new(), |mut v, ip| {
            if !v.contains(&ip) {
                v.push(ip);
            }
            v
        });
    let ports = |key: &str| -> Vec<u16> {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    Some((
        (ns.into(), name.into()),
        Entry {
            ips,
            opaque_ports: ports(OPAQUE_PORTS),
            skip_ports: ports(SKIP_PORTS),
        },
    ))
}

/// Keeps `table` current from a watch of every namespace's Services;
/// never returns.
pub async fn watch(client: Client, table: Arc<ClusterIps>) {
    let mut known = Known::default();
    keep_current(
        Api::<Service>::all(client),
        watcher::Config::default(),
        "ClusterIP",
        |event| known.apply(event).then(|| (known.table(), known.skipped())),
        |(t, skipped)| {
            table.table.store(Arc::new(t));
            table.set_skipped(skipped);
        },
    )
    .await
}

/// Runs a watch forever (kube's default back-off after errors, what is
/// known kept meanwhile): each event goes to `apply`, and a table it
/// returns (the event changed something) to `publish`.
pub async fn keep_current<K, T>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    mut apply: impl FnMut(watcher::Event<K>) -> Option<T>,
    mut publish: impl FnMut(T),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    loop {
        let mut events = pin!(watcher(api.clone(), config.clone()).default_backoff());
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    if let Some(t) = apply(event) {
                        publish(t);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "k8s: the {what} watch failed; keeping what is known");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, ips: &[&str]) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ips.first(), "clusterIPs": ips},
        }))
        .unwrap()
    }

    fn at(k: &Known, ip: &str) -> Option<String> {
        k.table()
            .get(&ip.parse().unwrap())
            .map(|o| format!("{}/{}", o.service.0, o.service.1))
    }

    #[test]
    fn a_services_opaque_ports_come_from_its_annotation() {
        let mut k = Known::default();
        let mut s = service("db", "mysql", &["10.96.0.30"]);
        s.metadata.annotations = Some(
            [(OPAQUE_PORTS.to_string(), "3306, 33060,x".to_string())]
                .into_iter()
                .collect(),
        );
        assert!(k.apply(watcher::Event::Apply(s)));
        let t = ClusterIps::default();
        t.publish(&k);
        let ip = "10.96.0.30".parse().unwrap();
        assert!(t.is_opaque(ip, 3306) && t.is_opaque(ip, 33060));
        assert!(!t.is_opaque(ip, 80));
        assert!(!t.is_opaque("10.96.0.31".parse().unwrap(), 3306));
        assert_eq!(
            t.service_at(ip).map(|s| s.1.to_string()).as_deref(),
            Some("mysql")
        );
    }

    #[test]
    fn services_by_cluster_ip_through_lists_and_changes() {
        let mut k = Known::default();
        assert!(!k.apply(watcher::Event::Init));
        assert!(!k.apply(watcher::Event::InitApply(service(
            "default",
            "world",
            &["10.96.0.10"]
        ))));
        assert!(!k.apply(watcher::Event::InitApply(service(
            "shop",
            "cart",
            &["10.96.0.20", "fd00::20"]
        ))));
        // A headless Service has no ClusterIP to name it by.
        assert!(!k.apply(watcher::Event::InitApply(service("shop", "db", &["None"]))));
        // Nothing is known until the list is whole.
        assert_eq!(at(&k, "10.96.0.10"), None);
        assert!(k.apply(watcher::Event::InitDone));
        assert_eq!(at(&k, "10.96.0.10").as_deref(), Some("default/world"));
        assert_eq!(at(&k, "10.96.0.20").as_deref(), Some("shop/cart"));
        assert_eq!(k.table().len(), 2);
        // Changes.
        assert!(k.apply(watcher::Event::Apply(service(
            "default",
            "world",
            &["10.96.0.11"]
        ))));
        assert_eq!(at(&k, "10.96.0.10"), None);
        assert_eq!(at(&k, "10.96.0.11").as_deref(), Some("default/world"));
        assert!(!k.apply(watcher::Event::Apply(service(
            "default",
            "world",
            &["10.96.0.11"]
        ))));
        assert!(k.apply(watcher::Event::Delete(service("shop", "cart", &[]))));
        assert_eq!(at(&k, "10.96.0.20"), None);
        // A relist that finds the same is no change; one that differs is.
        k.apply(watcher::Event::Init);
        k.apply(watcher::Event::InitApply(service(
            "default",
            "world",
            &["10.96.0.11"],
        )));
        k.apply(watcher::Event::InitApply(service("shop", "db", &["None"])));
        assert!(!k.apply(watcher::Event::InitDone));
        k.apply(watcher::Event::Init);
        assert!(k.apply(watcher::Event::InitDone));
        assert!(k.table().is_empty());
    }

    #[test]
    fn skipped_ports_of_every_cluster_ip_reach_the_hook_when_they_change() {
        let mut k = Known::default();
        let mut s = service("db", "pg", &["10.96.0.40", "10.96.0.41"]);
        s.metadata.annotations = Some(
            [(SKIP_PORTS.to_string(), "5432".to_string())]
                .into_iter()
                .collect(),
        );
        k.apply(watcher::Event::Apply(s));
        k.apply(watcher::Event::Apply(service(
            "default",
            "world",
            &["10.96.0.10"],
        )));
        let want = vec![
            ("10.96.0.40".parse().unwrap(), 5432),
            ("10.96.0.41".parse().unwrap(), 5432),
        ];
        assert_eq!(k.skipped(), want);
        let t = ClusterIps::default();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        t.on_skipped(Box::new(move |l| log.lock().unwrap().push(l.to_vec())));
        t.set_skipped(k.skipped());
        t.set_skipped(k.skipped());
        t.set_skipped(Vec::new());
        assert_eq!(*seen.lock().unwrap(), [Vec::new(), want, Vec::new()]);
    }
}
