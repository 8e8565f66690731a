//! Which Service owns a ClusterIP, for requests without a usable Host: an
//! intercepted connection's original destination (a ClusterIP and a port)
//! then names the Service, as its Host would have.
//!
//! One watch of every namespace's Services (the namer's others are per
//! namespace, started by lookups: a ClusterIP can be any namespace's).
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

/// The table the data path reads.
#[derive(Default)]
pub struct ClusterIps {
    table: ArcSwap<HashMap<Ipv4Addr, ServiceName>>,
}

impl ClusterIps {
    /// The Service whose ClusterIP is `ip`.
    pub fn service_at(&self, ip: Ipv4Addr) -> Option<ServiceName> {
        self.table.load().get(&ip).cloned()
    }

    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publish(&self, known: &Known) {
        self.table.store(Arc::new(known.table()));
    }
}

/// What the watch has seen: each Service's ClusterIPs (IPv4 ones), by
/// namespace and name. Pure, for the tests.
#[derive(Default)]
pub struct Known {
    services: HashMap<ServiceName, Vec<Ipv4Addr>>,
    /// A relist in progress, applied whole at its end.
    relist: Option<HashMap<ServiceName, Vec<Ipv4Addr>>>,
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
                if let (Some(relist), Some((name, ips))) = (&mut self.relist, entry(&s)) {
                    relist.insert(name, ips);
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
                Some((name, ips)) => self.services.insert(name, ips.clone()) != Some(ips),
                None => false,
            },
            watcher::Event::Delete(s) => match entry(&s) {
                Some((name, _)) => self.services.remove(&name).is_some(),
                None => false,
            },
        }
    }

    /// ClusterIP to Service.
    pub fn table(&self) -> HashMap<Ipv4Addr, ServiceName> {
        self.services
            .iter()
            .flat_map(|(name, ips)| ips.iter().map(move |ip| (*ip, name.clone())))
            .collect()
    }
}

/// A Service's name and IPv4 ClusterIPs (none for a headless one).
fn entry(s: &Service) -> Option<(ServiceName, Vec<Ipv4Addr>)> {
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
    Some(((ns.into(), name.into()), ips))
}

/// Keeps `table` current from a watch of every namespace's Services,
/// with kube's default back-off after errors; never returns.
pub async fn watch(client: Client, table: Arc<ClusterIps>) {
    let api: Api<Service> = Api::all(client);
    let mut known = Known::default();
    loop {
        let mut events = pin!(watcher(api.clone(), watcher::Config::default()).default_backoff());
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    if known.apply(event) {
                        table.publish(&known);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "k8s: the ClusterIP watch failed; keeping what is known");
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
            .map(|(ns, name)| format!("{ns}/{name}"))
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
}
