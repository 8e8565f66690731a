//! The namespace of the pod that sent a request, from its address: the
//! namespace of a short name (`Host: world`) is the calling pod's, as
//! cluster DNS's search path makes it.
//!
//! One watch of the pods on this node (`spec.nodeName`, the downward
//! API's `NODE_NAME`): the proxy only ever sees its own node's pods.
//! Host-network pods share the node's address and name no namespace. The
//! data path reads the table without a lock.

use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, runtime::watcher};

use super::cluster_ips::keep_current;

/// What is known of a pod on this node: its namespace and labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: Arc<str>,
    /// Sorted by name.
    pub labels: Vec<(String, String)>,
}

impl PodInfo {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }
}

/// Pod address to what is known of the pod.
#[derive(Default)]
pub struct PodNamespaces {
    table: ArcSwap<HashMap<Ipv4Addr, Arc<PodInfo>>>,
}

impl PodNamespaces {
    pub fn namespace_of(&self, ip: Ipv4Addr) -> Option<Arc<str>> {
        self.table.load().get(&ip).map(|p| p.namespace.clone())
    }

    pub fn pod_at(&self, ip: Ipv4Addr) -> Option<Arc<PodInfo>> {
        self.table.load().get(&ip).cloned()
    }
}

/// What the watch has seen: each pod's addresses and namespace, by
/// namespace and name. Pure, for the tests.
#[derive(Default)]
pub struct Known {
    pods: Addresses,
    relist: Option<Addresses>,
}

/// A pod by namespace and name.
type PodKey = (Arc<str>, Arc<str>);
/// A pod's addresses, and what is known of it.
type Seen = (Vec<Ipv4Addr>, Arc<PodInfo>);
/// Every pod's.
type Addresses = HashMap<PodKey, Seen>;

impl Known {
    /// Applies one event; whether the table changed.
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(p) => {
                if let (Some(relist), Some((key, ips))) = (&mut self.relist, entry(&p)) {
                    relist.insert(key, ips);
                }
                false
            }
            watcher::Event::InitDone => match self.relist.take() {
                Some(all) if all != self.pods => {
                    self.pods = all;
                    true
                }
                _ => false,
            },
            watcher::Event::Apply(p) => match entry(&p) {
                Some((key, ips)) => self.pods.insert(key, ips.clone()) != Some(ips),
                None => false,
            },
            watcher::Event::Delete(p) => match entry(&p) {
                Some((key, _)) => self.pods.remove(&key).is_some(),
                None => false,
            },
        }
    }

    pub fn table(&self) -> HashMap<Ipv4Addr, Arc<PodInfo>> {
        self.pods
            .values()
            .flat_map(|(ips, info)| ips.iter().map(move |ip| (*ip, info.clone())))
            .collect()
    }
}

/// A pod's key, IPv4 addresses (none for a host-network pod), namespace
/// and labels.
fn entry(p: &Pod) -> Option<(PodKey, Seen)> {
    let ns = p.metadata.namespace.as_deref()?;
    let name = p.metadata.name.as_deref()?;
    let host_network = p
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let ips = match (&p.status, host_network) {
        (Some(status), false) => status
            .pod_ips
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .fold(Vec::new(), |mut v, ip| {
                if !v.contains(&ip) {
                    v.push(ip);
                }
                v
            }),
        _ => Vec::new(),
    };
    let mut labels: Vec<(String, String)> = p
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.sort();
    let info = Arc::new(PodInfo {
        namespace: ns.into(),
        labels,
    });
    Some(((ns.into(), name.into()), (ips, info)))
}

/// Keeps `table` current from a watch of the pods on `node`; never
/// returns.
pub async fn watch(client: Client, node: String, table: Arc<PodNamespaces>) {
    let mut known = Known::default();
    keep_current(
        Api::<Pod>::all(client),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        "node's pods",
        |event| known.apply(event).then(|| known.table()),
        |t| table.table.store(Arc::new(t)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: Option<&str>, host_network: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": "cart", "tier": "web"}},
            "spec": {"hostNetwork": host_network, "containers": []},
            "status": {"podIP": ip, "podIPs": ip.map(|ip| vec![serde_json::json!({"ip": ip})])},
        }))
        .unwrap()
    }

    #[test]
    fn pods_name_their_namespace_host_network_ones_do_not() {
        let mut k = Known::default();
        k.apply(watcher::Event::Init);
        k.apply(watcher::Event::InitApply(pod(
            "shop",
            "cart-1",
            Some("10.244.1.5"),
            false,
        )));
        k.apply(watcher::Event::InitApply(pod(
            "kube-system",
            "proxy",
            Some("10.0.0.5"),
            true,
        )));
        // Not scheduled an address yet.
        k.apply(watcher::Event::InitApply(pod(
            "shop", "cart-2", None, false,
        )));
        assert!(k.apply(watcher::Event::InitDone));
        let t = k.table();
        let ns = |t: &HashMap<Ipv4Addr, Arc<PodInfo>>, ip: &str| {
            t.get(&ip.parse().unwrap()).map(|p| p.namespace.to_string())
        };
        assert_eq!(ns(&t, "10.244.1.5").as_deref(), Some("shop"));
        assert_eq!(t[&"10.244.1.5".parse().unwrap()].label("app"), Some("cart"));
        assert_eq!(t.get(&"10.0.0.5".parse().unwrap()), None);
        assert_eq!(t.len(), 1);
        // A new pod, an address reused by another namespace's pod.
        assert!(k.apply(watcher::Event::Delete(pod("shop", "cart-1", None, false))));
        assert!(k.apply(watcher::Event::Apply(pod(
            "blog",
            "web-1",
            Some("10.244.1.5"),
            false
        ))));
        assert_eq!(ns(&k.table(), "10.244.1.5").as_deref(), Some("blog"));
    }
}
