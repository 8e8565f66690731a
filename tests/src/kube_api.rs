//! A stand-in for the Kubernetes API server, for end-to-end tests of the
//! `io.l5d.k8s` namer (no cluster is reachable here): plain HTTP/1.1 on
//! std threads, serving lists of Services and EndpointSlices the test
//! gives it, and watches that stay open with nothing to say.
//!
//! - `GET .../namespaces/NS/services` and `GET /api/v1/services` (a list):
//!   a `ServiceList` of the test's Services (in NS, or all).
//! - The same for `.../endpointslices` (`discovery.k8s.io/v1`), and for
//!   `/api/v1/pods` (a `PodList` of the test's pods, whatever the field
//!   selector: they are all on the node).
//! - `...&watch=true...`: 200, chunked, no event until the test ends (or
//!   the watch's `timeoutSeconds`), then the end of the body.
//! - Anything else: 404 with a `Status`.
//!
//! Every request line is kept (`requests`).

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// A Service: name, namespace, ClusterIP, and ports as (name, port,
/// targetPort).
#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: String,
    pub ports: Vec<(String, u16, u16)>,
    /// The endpoints' addresses (ready), all on each target port.
    pub endpoints: Vec<String>,
    pub annotations: Vec<(String, String)>,
}

impl Service {
    fn json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": "100",
                "uid": format!("uid-svc-{}-{}", self.namespace, self.name),
                "annotations": self
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                    .collect::<serde_json::Map<String, Value>>(),
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.cluster_ip,
                "clusterIPs": [self.cluster_ip],
                "ports": self.ports.iter().map(|(name, port, target)| json!({
                    "name": name, "port": port, "protocol": "TCP", "targetPort": target,
                })).collect::<Vec<_>>(),
                "selector": {"app": self.name},
            },
        })
    }

    fn slice_json(&self) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-abcde", self.name),
                "namespace": self.namespace,
                "resourceVersion": "100",
                "uid": format!("uid-eps-{}-{}", self.namespace, self.name),
                "labels": {"kubernetes.io/service-name": self.name},
            },
            "addressType": "IPv4",
            "endpoints": self.endpoints.iter().map(|ip| json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            })).collect::<Vec<_>>(),
            "ports": self.ports.iter().map(|(name, _, target)| json!({
                "name": name, "port": target, "protocol": "TCP",
            })).collect::<Vec<_>>(),
        })
    }
}

/// A pod: namespace, name, address.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: String,
}

impl Pod {
    fn json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": "100",
                "uid": format!("uid-pod-{}-{}", self.namespace, self.name),
            },
            "spec": {"nodeName": "bed-node", "containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running", "podIP": self.ip, "podIPs": [{"ip": self.ip}]},
        })
    }
}

/// The server; stops when dropped.
pub struct KubeApi {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl KubeApi {
    /// Serves `services` on `bind` (an address and port 0, say).
    pub fn start(bind: SocketAddr, services: Vec<Service>) -> KubeApi {
        Self::start_slow(bind, services, Duration::ZERO)
    }

    /// [`KubeApi::start`], answering each list `delay` late (a slow or
    /// far API server: the namer's first sync takes that long).
    pub fn start_slow(bind: SocketAddr, services: Vec<Service>, delay: Duration) -> KubeApi {
        Self::serve_all(bind, services, Vec::new(), delay)
    }

    /// [`KubeApi::start`] with the pods of the node too.
    pub fn start_with_pods(bind: SocketAddr, services: Vec<Service>, pods: Vec<Pod>) -> KubeApi {
        Self::serve_all(bind, services, pods, Duration::ZERO)
    }

    fn serve_all(
        bind: SocketAddr,
        services: Vec<Service>,
        pods: Vec<Pod>,
        delay: Duration,
    ) -> KubeApi {
        let listener = TcpListener::bind(bind).expect("bind the API stand-in");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let objects = Arc::new((services, pods));
        let (flag, seen) = (stop.clone(), requests.clone());
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (flag, seen, objects) = (flag.clone(), seen.clone(), objects.clone());
                        thread::spawn(move || {
                            let _ = serve(s, &objects.0, &objects.1, &seen, &flag, delay);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        KubeApi {
            addr,
            requests,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    services: &[Service],
    pods: &[Pod],
    seen: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    delay: Duration,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        // The rest of the head (a GET has no body).
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        seen.lock().unwrap().push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let namespace = path
            .split("/namespaces/")
            .nth(1)
            .and_then(|rest| rest.split('/').next());
        let of_ns = |s: &&Service| namespace.is_none_or(|ns| s.namespace == ns);
        let (kind, items): (&str, Vec<Value>) = if path.ends_with("/services") {
            (
                "ServiceList",
                services.iter().filter(of_ns).map(Service::json).collect(),
            )
        } else if path.ends_with("/pods") {
            ("PodList", pods.iter().map(Pod::json).collect())
        } else if path.ends_with("/endpointslices") {
            (
                "EndpointSliceList",
                services
                    .iter()
                    .filter(of_ns)
                    .map(Service::slice_json)
                    .collect(),
            )
        } else {
            let body = json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": format!("{path} not found"),
            })
            .to_string();
            write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        };
        if query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
        {
            // Nothing changes: hold the watch open, then end it cleanly.
            let secs = query
                .split('&')
                .find_map(|p| p.strip_prefix("timeoutSeconds="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(290u64);
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )?;
            out.flush()?;
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(50));
            }
            write!(out, "0\r\n\r\n")?;
            out.flush()?;
            continue;
        }
        thread::sleep(delay);
        let api_version = if kind == "ServiceList" || kind == "PodList" {
            "v1"
        } else {
            "discovery.k8s.io/v1"
        };
        let body = json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": "100"},
            "items": items,
        })
        .to_string();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}
