//! The Kubernetes namer's pure core: what the watches have said about one
//! namespace, reduced to what routing needs, and what a path binds to.
//!
//! No I/O and no async: the watchers feed [`Namespace`] kube's
//! `watcher::Event`s converted by [`service_entry`] and [`slice_entry`],
//! and the namer asks it [`Namespace::lookup`]. So every rule below (port
//! mapping, readiness, relists) is tested without a client.
//!
//! The rules, Linkerd 1's where it had them:
//! - `<port>` is a port name or a number. A name is looked up among the
//!   EndpointSlices' ports (they carry the Service port's name and the
//!   resolved target port). A number is the Service's `port`, mapped to its
//!   `targetPort`: a number is used as it is, a name (a named container
//!   port) resolves through each slice's port of that Service port's name,
//!   so pods whose containers number it differently each get their own.
//! - Only TCP ports: the proxy speaks HTTP.
//! - Endpoints whose `ready` condition holds; when no endpoint of the
//!   service is ready, those that are `serving` (terminating ones included),
//!   so a service in the middle of a rollout or a scale-down still answers.
//!   Conditions left out mean ready and serving, as the API defines them.
//! - An unknown service, or a port it does not have: `None` (neg), so an
//!   earlier dentry takes over. A known port with no endpoints is an empty
//!   set (503), not neg: the name exists.
//! - A relist (the watcher's `Init` .. `InitApply` .. `InitDone`, after a
//!   `410 Gone` or a restart) is buffered and replaces what was known only
//!   at `InitDone`: until then lookups see the endpoints known before.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::runtime::watcher::Event;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service's TCP ports.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    /// The port's name; "" for the one unnamed port a Service may have.
    pub name: String,
    pub port: u16,
    pub target: Target,
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Number(u16),
    /// A named container port: its number is per pod, in the slices.
    Name(String),
}

/// An EndpointSlice: its TCP ports and its endpoints' first addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceInfo {
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SlicePort {
    /// The Service port's name; "" when it has none.
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
}

/// A Service as the namer keeps it, under its name; `None` for one without
/// a name (the API never sends one).
pub fn service_entry(svc: &Service) -> Option<(String, ServiceInfo)> {
    let name = svc.metadata.name.clone()?;
    let ports = svc
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target = match &p.target_port {
                None => Target::Number(port),
                Some(IntOrString::Int(n)) => Target::Number(u16::try_from(*n).ok()?),
                // The API accepts "8080" as a name-or-number; it is a number.
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => Target::Number(n),
                    Err(_) => Target::Name(s.clone()),
                },
            };
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port,
                target,
            })
        })
        .collect();
    Some((name, ServiceInfo { ports }))
}

/// An EndpointSlice as the namer keeps it, under (its Service, its own
/// name); `None` for one that names no Service (not routable) or no name.
/// FQDN slices (deprecated, and nothing the proxy can connect to without
/// DNS) keep no endpoints; addresses that do not parse are skipped.
pub fn slice_entry(slice: &EndpointSlice) -> Option<(SliceKey, SliceInfo)> {
    let name = slice.metadata.name.clone()?;
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .filter_map(|p| {
            Some(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port?).ok()?,
            })
        })
        .collect();
    let ip_slice = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .filter(|_| ip_slice)
        .filter_map(|e| {
            // The controller writes one address; no meaning is defined for
            // more, and kube-proxy reads only the first.
            let ip: IpAddr = e.addresses.first()?.parse().ok()?;
            let c = e.conditions.as_ref();
            Some(SliceEndpoint {
                ip,
                ready: c.and_then(|c| c.ready).unwrap_or(true),
                serving: c.and_then(|c| c.serving).unwrap_or(true),
            })
        })
        .collect();
    Some((SliceKey { service, name }, SliceInfo { ports, endpoints }))
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// Where a slice is kept: by Service first, so a lookup reads one range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SliceKey {
    pub service: String,
    pub name: String,
}

/// What a watch's objects are known by: a key, and the object's own name
/// within the namespace (a slice whose Service label changed keeps its
/// name under a new key).
pub trait Key: Ord + Clone {
    fn object_name(&self) -> &str;
}

impl Key for String {
    fn object_name(&self) -> &str {
        self
    }
}

impl Key for SliceKey {
    fn object_name(&self) -> &str {
        &self.name
    }
}

/// The objects of one watch (one kind in one namespace).
#[derive(Debug)]
pub struct Watched<K, T> {
    items: BTreeMap<K, T>,
    /// A list in progress: what `InitApply` gave since `Init`.
    relist: Option<BTreeMap<K, T>>,
    synced: bool,
}

impl<K, T> Default for Watched<K, T> {
    fn default() -> Self {
        Watched {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: Key, T: PartialEq> Watched<K, T> {
    /// Applies one event; true when what lookups see has changed (the
    /// first completed list always counts: it ends "not synced").
    pub fn apply(&mut self, event: Event<(K, T)>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply((k, t)) => {
                self.relist.get_or_insert_default().insert(k, t);
                false
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let changed = !self.synced || listed != self.items;
                self.items = listed;
                self.synced = true;
                changed
            }
            Event::Apply((k, t)) => {
                let mut changed = false;
                if !self.items.contains_key(&k) {
                    // A new key: drop the object's entry under any old one.
                    let before = self.items.len();
                    self.items
                        .retain(|old, _| old.object_name() != k.object_name());
                    changed = self.items.len() != before;
                }
                if self.items.get(&k) == Some(&t) {
                    return changed;
                }
                self.items.insert(k, t);
                true
            }
            Event::Delete((k, _)) => self.items.remove(&k).is_some(),
        }
    }

    /// Whether a list has completed since the watch began.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Turns a watcher's event on API objects into one on the namer's entries
/// (an object that converts to nothing: `None`).
pub fn convert<O, K, T>(
    event: Event<O>,
    f: impl Fn(&O) -> Option<(K, T)>,
) -> Option<Event<(K, T)>> {
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(f(&o)?),
        Event::Apply(o) => Event::Apply(f(&o)?),
        Event::Delete(o) => Event::Delete(f(&o)?),
    })
}

/// What the namer knows of one namespace.
#[derive(Debug, Default)]
pub struct Namespace {
    pub services: Watched<String, ServiceInfo>,
    pub slices: Watched<SliceKey, SliceInfo>,
}

/// The port part of a path: `http`, or `8080`. A Kubernetes port name
/// holds at least one letter, so digits alone are a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PortRef<'a> {
    Name(&'a str),
    Number(u16),
}

impl<'a> PortRef<'a> {
    /// `None` for digits out of a port's range.
    pub fn parse(label: &'a str) -> Option<PortRef<'a>> {
        if !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()) {
            label.parse().ok().map(PortRef::Number)
        } else {
            Some(PortRef::Name(label))
        }
    }
}

impl Namespace {
    /// Both watches have listed once: lookups answer from here on.
    pub fn synced(&self) -> bool {
        self.services.synced() && self.slices.synced()
    }

    /// The addresses `port` of `service` binds to, sorted and without
    /// duplicates (a slice split in two may list an endpoint twice for a
    /// moment); `None` (neg) for a service or port not known.
    pub fn lookup(&self, port: PortRef<'_>, service: &str) -> Option<Vec<SocketAddr>> {
        let svc = self.services.items.get(service);
        let slices = self.slices_of(service);
        // How the slices number the port asked for.
        let at = match port {
            PortRef::Number(n) => {
                let sp = svc?.ports.iter().find(|p| p.port == n)?;
                match &sp.target {
                    Target::Number(t) => At::Number(*t),
                    Target::Name(_) => At::SlicePort(&sp.name),
                }
            }
            PortRef::Name(name) => {
                match svc {
                    Some(svc) if !svc.ports.iter().any(|p| p.name == name) => return None,
                    Some(_) => {}
                    // Slices without their Service (it was deleted, or was
                    // never there): the slices alone say which ports exist.
                    None if !slices.clone().any(|s| slice_port(s, name).is_some()) => {
                        return None;
                    }
                    None => {}
                }
                At::SlicePort(name)
            }
        };
        let candidates = slices.flat_map(|s| {
            let port = match at {
                At::Number(n) => Some(n),
                At::SlicePort(name) => slice_port(s, name),
            };
            s.endpoints
                .iter()
                .filter_map(move |e| port.map(|p| (SocketAddr::new(e.ip, p), *e)))
        });
        let mut ready = Vec::new();
        let mut serving = Vec::new();
        for (addr, e) in candidates {
            if e.ready {
                ready.push(addr);
            } else if e.serving {
                serving.push(addr);
            }
        }
        let mut chosen = if ready.is_empty() { serving } else { ready };
        chosen.sort_unstable();
        chosen.dedup();
        Some(chosen)
    }

    fn slices_of<'s>(&'s self, service: &'s str) -> impl Iterator<Item = &'s SliceInfo> + Clone {
        let from = SliceKey {
            service: service.to_owned(),
            name: String::new(),
        };
        self.slices
            .items
            .range(from..)
            .take_while(move |(k, _)| k.service == service)
            .map(|(_, s)| s)
    }

    /// Endpoints known in all, ready or not (a gauge).
    pub fn endpoint_count(&self) -> usize {
        self.slices.items.values().map(|s| s.endpoints.len()).sum()
    }
}

/// Where a lookup's endpoints listen: one number, or each slice's port of
/// that name (none when a slice has no such port).
#[derive(Clone, Copy)]
enum At<'a> {
    Number(u16),
    SlicePort(&'a str),
}

fn slice_port(s: &SliceInfo, name: &str) -> Option<u16> {
    s.ports.iter().find(|p| p.name == name).map(|p| p.port)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{self, Ep, ready, terminating, unready};
    use super::*;

    fn svc(name: &str, ports: &[(&str, u16, &str)]) -> (String, ServiceInfo) {
        let svc: Service = serde_json::from_value(fixtures::service(name, 1, ports)).unwrap();
        service_entry(&svc).unwrap()
    }

    fn slice(
        name: &str,
        service: &str,
        eps: &[Ep],
        ports: &[(&str, u16)],
    ) -> (SliceKey, SliceInfo) {
        let s: EndpointSlice =
            serde_json::from_value(fixtures::slice(name, service, 1, eps, ports)).unwrap();
        slice_entry(&s).unwrap()
    }

    /// A namespace listed with these objects.
    fn listed(
        services: Vec<(String, ServiceInfo)>,
        slices: Vec<(SliceKey, SliceInfo)>,
    ) -> Namespace {
        let mut ns = Namespace::default();
        ns.services.apply(Event::Init);
        for s in services {
            ns.services.apply(Event::InitApply(s));
        }
        assert!(ns.services.apply(Event::InitDone));
        ns.slices.apply(Event::Init);
        for s in slices {
            ns.slices.apply(Event::InitApply(s));
        }
        assert!(ns.slices.apply(Event::InitDone));
        assert!(ns.synced());
        ns
    }

    fn addrs(ns: &Namespace, port: &str, service: &str) -> Option<Vec<String>> {
        ns.lookup(PortRef::parse(port)?, service)
            .map(|v| v.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn port_labels_are_names_or_numbers() {
        assert_eq!(PortRef::parse("http"), Some(PortRef::Name("http")));
        assert_eq!(PortRef::parse("h2c"), Some(PortRef::Name("h2c")));
        assert_eq!(PortRef::parse("8080"), Some(PortRef::Number(8080)));
        assert_eq!(PortRef::parse("99999"), None);
    }

    #[test]
    fn a_port_name_binds_the_ready_endpoints_at_the_slice_port() {
        let ns = listed(
            vec![svc("world", &[("http", 80, "8080")])],
            vec![slice(
                "world-abcde",
                "world",
                &[
                    ready("10.244.1.7"),
                    unready("10.244.2.9"),
                    ready("10.244.1.5"),
                ],
                &[("http", 8080)],
            )],
        );
        assert_eq!(
            addrs(&ns, "http", "world"),
            Some(vec!["10.244.1.5:8080".into(), "10.244.1.7:8080".into()])
        );
    }

    #[test]
    fn a_port_number_is_the_service_port_mapped_to_its_target() {
        let ns = listed(
            vec![svc(
                "world",
                &[("http", 80, "8080"), ("admin", 9990, "9990")],
            )],
            vec![slice(
                "world-abcde",
                "world",
                &[ready("10.244.1.5")],
                &[("http", 8080), ("admin", 9990)],
            )],
        );
        assert_eq!(
            addrs(&ns, "80", "world"),
            Some(vec!["10.244.1.5:8080".into()])
        );
        assert_eq!(
            addrs(&ns, "9990", "world"),
            Some(vec!["10.244.1.5:9990".into()])
        );
        // 8080 is a target, not a port of the Service.
        assert_eq!(addrs(&ns, "8080", "world"), None);
    }

    /// `targetPort: web` names a container port: pods of two versions
    /// number it differently, and each slice says how.
    #[test]
    fn a_named_target_port_resolves_per_slice() {
        let ns = listed(
            vec![svc("world", &[("http", 80, "web")])],
            vec![
                slice(
                    "world-v1",
                    "world",
                    &[ready("10.244.1.5")],
                    &[("http", 8080)],
                ),
                slice(
                    "world-v2",
                    "world",
                    &[ready("10.244.2.6")],
                    &[("http", 9090)],
                ),
            ],
        );
        assert_eq!(
            addrs(&ns, "80", "world"),
            Some(vec!["10.244.1.5:8080".into(), "10.244.2.6:9090".into()])
        );
        assert_eq!(addrs(&ns, "http", "world"), addrs(&ns, "80", "world"));
    }

    #[test]
    fn an_unnamed_port_and_a_missing_target_port() {
        let mut v = fixtures::service("hello", 1, &[("", 80, "")]);
        v["spec"]["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("targetPort");
        let s: Service = serde_json::from_value(v).unwrap();
        let ns = listed(
            vec![service_entry(&s).unwrap()],
            vec![slice(
                "hello-x",
                "hello",
                &[ready("10.244.1.5")],
                &[("", 80)],
            )],
        );
        // No targetPort means the port itself.
        assert_eq!(
            addrs(&ns, "80", "hello"),
            Some(vec!["10.244.1.5:80".into()])
        );
    }

    #[test]
    fn with_no_ready_endpoint_the_serving_ones_terminating_included_are_used() {
        let eps = [
            unready("10.244.1.5"),
            terminating("10.244.1.6"),
            terminating("10.244.1.4"),
        ];
        let ns = listed(
            vec![svc("world", &[("http", 80, "8080")])],
            vec![slice("world-a", "world", &eps, &[("http", 8080)])],
        );
        assert_eq!(
            addrs(&ns, "http", "world"),
            Some(vec!["10.244.1.4:8080".into(), "10.244.1.6:8080".into()])
        );
        // One ready endpoint anywhere in the service, and only it serves.
        let ns = listed(
            vec![svc("world", &[("http", 80, "8080")])],
            vec![
                slice("world-a", "world", &eps, &[("http", 8080)]),
                slice(
                    "world-b",
                    "world",
                    &[ready("10.244.2.1")],
                    &[("http", 8080)],
                ),
            ],
        );
        assert_eq!(
            addrs(&ns, "http", "world"),
            Some(vec!["10.244.2.1:8080".into()])
        );
    }

    #[test]
    fn conditions_left_out_mean_ready() {
        let mut v = fixtures::slice(
            "world-a",
            "world",
            1,
            &[ready("10.244.1.5")],
            &[("http", 8080)],
        );
        v["endpoints"][0]
            .as_object_mut()
            .unwrap()
            .remove("conditions");
        let s: EndpointSlice = serde_json::from_value(v).unwrap();
        let (_, info) = slice_entry(&s).unwrap();
        assert!(info.endpoints[0].ready && info.endpoints[0].serving);
    }

    #[test]
    fn unknown_services_and_ports_are_neg_and_a_known_port_without_endpoints_is_empty() {
        let ns = listed(
            vec![
                svc("world", &[("http", 80, "8080")]),
                svc("idle", &[("http", 80, "8080")]),
            ],
            vec![slice(
                "world-a",
                "world",
                &[ready("10.244.1.5")],
                &[("http", 8080)],
            )],
        );
        assert_eq!(addrs(&ns, "http", "nobody"), None);
        assert_eq!(addrs(&ns, "grpc", "world"), None);
        assert_eq!(addrs(&ns, "81", "world"), None);
        // Scaled to zero: the name exists, with no endpoints (503, not neg).
        assert_eq!(addrs(&ns, "http", "idle"), Some(vec![]));
        assert_eq!(addrs(&ns, "80", "idle"), Some(vec![]));
    }

    /// Slices whose Service is gone (or never was): a name still binds
    /// through the slices' ports; a number needs the Service.
    #[test]
    fn slices_without_their_service() {
        let ns = listed(
            vec![],
            vec![slice(
                "orphan-a",
                "orphan",
                &[ready("10.244.1.5")],
                &[("http", 8080)],
            )],
        );
        assert_eq!(
            addrs(&ns, "http", "orphan"),
            Some(vec!["10.244.1.5:8080".into()])
        );
        assert_eq!(addrs(&ns, "grpc", "orphan"), None);
        assert_eq!(addrs(&ns, "80", "orphan"), None);
    }

    #[test]
    fn only_tcp_ports_and_ip_addresses() {
        let mut v = fixtures::service("dns", 1, &[("dns", 53, "53"), ("dns-tcp", 53, "53")]);
        v["spec"]["ports"][0]["protocol"] = "UDP".into();
        let s: Service = serde_json::from_value(v).unwrap();
        let mut sl = fixtures::slice(
            "dns-a",
            "dns",
            1,
            &[ready("10.244.0.10")],
            &[("dns", 53), ("dns-tcp", 53)],
        );
        sl["ports"][0]["protocol"] = "UDP".into();
        let sl: EndpointSlice = serde_json::from_value(sl).unwrap();
        let mut fqdn = fixtures::slice(
            "ext-a",
            "ext",
            1,
            &[ready("example.invalid")],
            &[("http", 80)],
        );
        fqdn["addressType"] = "FQDN".into();
        let fqdn: EndpointSlice = serde_json::from_value(fqdn).unwrap();
        let mut v6 = fixtures::slice(
            "six-a",
            "six",
            1,
            &[ready("fd00:10:244::5")],
            &[("http", 8080)],
        );
        v6["addressType"] = "IPv6".into();
        let v6: EndpointSlice = serde_json::from_value(v6).unwrap();
        let ns = listed(
            vec![service_entry(&s).unwrap()],
            vec![
                slice_entry(&sl).unwrap(),
                slice_entry(&fqdn).unwrap(),
                slice_entry(&v6).unwrap(),
            ],
        );
        assert_eq!(addrs(&ns, "dns", "dns"), None);
        assert_eq!(
            addrs(&ns, "dns-tcp", "dns"),
            Some(vec!["10.244.0.10:53".into()])
        );
        assert_eq!(addrs(&ns, "53", "dns"), Some(vec!["10.244.0.10:53".into()]));
        assert_eq!(addrs(&ns, "http", "ext"), Some(vec![]));
        assert_eq!(
            addrs(&ns, "http", "six"),
            Some(vec!["[fd00:10:244::5]:8080".into()])
        );
    }

    #[test]
    fn a_slice_without_the_service_label_is_not_kept() {
        let mut v = fixtures::slice(
            "world-a",
            "world",
            1,
            &[ready("10.244.1.5")],
            &[("http", 8080)],
        );
        v["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(SERVICE_NAME_LABEL);
        let s: EndpointSlice = serde_json::from_value(v).unwrap();
        assert!(slice_entry(&s).is_none());
    }

    /// The controller splits a slice: the new one is created, then the old
    /// one shrinks; an endpoint in both for a moment is listed once.
    #[test]
    fn a_slice_split_in_two_keeps_every_endpoint() {
        let ports = [("http", 8080)];
        let mut ns = listed(
            vec![svc("world", &[("http", 80, "8080")])],
            vec![slice(
                "world-a",
                "world",
                &[ready("10.244.1.5"), ready("10.244.1.6")],
                &ports,
            )],
        );
        assert!(ns.slices.apply(Event::Apply(slice(
            "world-b",
            "world",
            &[ready("10.244.1.6")],
            &ports
        ))));
        assert_eq!(
            addrs(&ns, "http", "world"),
            Some(vec!["10.244.1.5:8080".into(), "10.244.1.6:8080".into()])
        );
        assert!(ns.slices.apply(Event::Apply(slice(
            "world-a",
            "world",
            &[ready("10.244.1.5")],
            &ports
        ))));
        assert_eq!(
            addrs(&ns, "http", "world"),
            Some(vec!["10.244.1.5:8080".into(), "10.244.1.6:8080".into()])
        );
        assert_eq!(ns.slices.len(), 2);
    }

    #[test]
    fn applying_reports_changes_only() {
        let ports = [("http", 8080)];
        let a = slice("world-a", "world", &[ready("10.244.1.5")], &ports);
        let mut ns = listed(vec![], vec![a.clone()]);
        // The same object again (a resync, a new resourceVersion only).
        assert!(!ns.slices.apply(Event::Apply(a.clone())));
        // A readiness flip.
        let flipped = slice("world-a", "world", &[unready("10.244.1.5")], &ports);
        assert!(ns.slices.apply(Event::Apply(flipped.clone())));
        assert_eq!(addrs(&ns, "http", "world"), Some(vec![]));
        assert!(ns.slices.apply(Event::Apply(a.clone())));
        assert_eq!(
            addrs(&ns, "http", "world"),
            Some(vec!["10.244.1.5:8080".into()])
        );
        assert!(ns.slices.apply(Event::Delete(a.clone())));
        assert!(!ns.slices.apply(Event::Delete(a)));
        assert_eq!(addrs(&ns, "http", "world"), None);
    }

    /// A slice moved to another Service (its label changed) leaves the
    /// first one.
    #[test]
    fn a_slice_relabelled_leaves_its_old_service() {
        let ports = [("http", 8080)];
        let mut ns = listed(
            vec![],
            vec![slice("shared-a", "one", &[ready("10.244.1.5")], &ports)],
        );
        assert!(ns.slices.apply(Event::Apply(slice(
            "shared-a",
            "two",
            &[ready("10.244.1.5")],
            &ports
        ))));
        assert_eq!(addrs(&ns, "http", "one"), None);
        assert_eq!(
            addrs(&ns, "http", "two"),
            Some(vec!["10.244.1.5:8080".into()])
        );
        assert_eq!(ns.slices.len(), 1);
    }

    /// After `410 Gone` the watcher lists again: lookups keep the
    /// endpoints known before until the list is complete, which then
    /// replaces them (what it no longer lists is gone).
    #[test]
    fn a_relist_replaces_what_is_known_only_when_complete() {
        let ports = [("http", 8080)];
        let a = slice("world-a", "world", &[ready("10.244.1.5")], &ports);
        let b = slice("world-b", "world", &[ready("10.244.1.6")], &ports);
        let mut ns = listed(
            vec![svc("world", &[("http", 80, "8080")])],
            vec![a.clone(), b],
        );
        let before = addrs(&ns, "http", "world");
        assert!(!ns.slices.apply(Event::Init));
        assert_eq!(addrs(&ns, "http", "world"), before);
        let a2 = slice(
            "world-a",
            "world",
            &[ready("10.244.1.5"), ready("10.244.1.8")],
            &ports,
        );
        assert!(!ns.slices.apply(Event::InitApply(a2)));
        assert_eq!(
            addrs(&ns, "http", "world"),
            before,
            "nothing dropped mid-list"
        );
        assert!(ns.synced());
        assert!(ns.slices.apply(Event::InitDone));
        assert_eq!(
            addrs(&ns, "http", "world"),
            Some(vec!["10.244.1.5:8080".into(), "10.244.1.8:8080".into()])
        );
        // A relist that finds what was known changes nothing.
        ns.slices.apply(Event::Init);
        ns.slices.apply(Event::InitApply(slice(
            "world-a",
            "world",
            &[ready("10.244.1.5"), ready("10.244.1.8")],
            &ports,
        )));
        assert!(!ns.slices.apply(Event::InitDone));
    }

    #[test]
    fn not_synced_until_both_kinds_have_listed_even_empty() {
        let mut ns = Namespace::default();
        assert!(!ns.synced());
        ns.services.apply(Event::Init);
        assert!(
            ns.services.apply(Event::InitDone),
            "the first list is a change"
        );
        assert!(!ns.synced());
        ns.slices.apply(Event::Init);
        ns.slices.apply(Event::InitDone);
        assert!(ns.synced());
        assert_eq!(addrs(&ns, "http", "world"), None);
    }
}
