//! The namer against kube's client driven by an API server in the test
//! (`tower_test::mock::pair`): each test answers the requests the watches
//! send, checks them (paths and queries), and looks names up as the router
//! would. No cluster is reachable here; this is the closest stand-in.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, channel::mpsc};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use serde_json::Value;

use super::fixtures::{event, gone, list, ready, service, slice, status, terminating, unready};
use super::{K8sNamer, Options};
use crate::dtab::{NameTree, Namer, NamerError, Path};

type Body = BoxBody<Bytes, Infallible>;
type Handle = tower_test::mock::Handle<Request<kube::client::Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

const SERVICES: &str = "/api/v1/namespaces/default/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
/// The first request of each watch: a list, 500 a page.
const LIST_SERVICES: &str = "/api/v1/namespaces/default/services?&limit=500";
const LIST_SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?&labelSelector=kubernetes.io%2Fservice-name&limit=500";

fn watch_services(rv: u64) -> String {
    format!(
        "{SERVICES}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}"
    )
}

fn watch_slices(rv: u64) -> String {
    format!(
        "{SLICES}?&watch=true&timeoutSeconds=290&labelSelector=kubernetes.io%2Fservice-name&allowWatchBookmarks=true&resourceVersion={rv}"
    )
}

/// The API server's side: requests as they come, and the means to answer.
struct Api {
    handle: Handle,
    /// Requests taken from the channel but not asked for yet, with when
    /// they arrived.
    early: Vec<(String, Reply, Instant)>,
}

impl Api {
    /// The next request to a path starting with `prefix` (the other
    /// kind's requests wait their turn): its URI, the means to answer it,
    /// and when it arrived.
    async fn take(&mut self, prefix: &str) -> (String, Reply, Instant) {
        if let Some(i) = self
            .early
            .iter()
            .position(|(u, _, _)| u.starts_with(prefix))
        {
            return self.early.remove(i);
        }
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.handle.next_request());
            let (req, reply) = next
                .await
                .unwrap_or_else(|_| panic!("no request to {prefix} within 10 s"))
                .expect("the client is gone");
            assert_eq!(req.method(), http::Method::GET);
            let uri = req.uri().to_string();
            if uri.starts_with(prefix) {
                return (uri, reply, Instant::now());
            }
            self.early.push((uri, reply, Instant::now()));
        }
    }

    /// Takes the next request to `prefix`, checks it is `want`.
    async fn expect(&mut self, prefix: &str, want: &str) -> Reply {
        let (uri, reply, _) = self.take(prefix).await;
        assert_eq!(uri, want);
        reply
    }

    /// Asserts nothing more is asked for a while.
    async fn quiet(&mut self) {
        assert!(self.early.is_empty(), "unexpected: {:?}", self.uris());
        let next = tokio::time::timeout(Duration::from_millis(200), self.handle.next_request());
        if let Ok(Some((req, _))) = next.await {
            panic!("unexpected request {}", req.uri());
        }
    }

    fn uris(&self) -> Vec<&str> {
        self.early.iter().map(|(u, _, _)| u.as_str()).collect()
    }

    /// Lists both kinds of `default` (at resourceVersions 100 and 200)
    /// and opens both watches; the watches' senders push events.
    async fn sync(&mut self, services: Vec<Value>, slices: Vec<Value>) -> (Watch, Watch) {
        let kinds = (
            ("ServiceList", "v1", SERVICES, LIST_SERVICES, 100, services),
            (
                "EndpointSliceList",
                "discovery.k8s.io/v1",
                SLICES,
                LIST_SLICES,
                200,
                slices,
            ),
        );
        let (kind, version, prefix, uri, rv, items) = kinds.0;
        self.expect(prefix, uri)
            .await
            .send_response(json(list(kind, version, rv, items)));
        let (kind, version, prefix, uri, rv, items) = kinds.1;
        self.expect(prefix, uri)
            .await
            .send_response(json(list(kind, version, rv, items)));
        let services = self.watch(SERVICES, &watch_services(100)).await;
        let slices = self.watch(SLICES, &watch_slices(200)).await;
        (services, slices)
    }

    /// Answers the watch request `want` with a stream kept open.
    async fn watch(&mut self, prefix: &str, want: &str) -> Watch {
        let reply = self.expect(prefix, want).await;
        let (tx, rx) = mpsc::unbounded::<Bytes>();
        let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
        reply.send_response(Response::new(BodyExt::boxed(body)));
        Watch(tx)
    }
}

/// An open watch response: each `send` is one event line.
struct Watch(mpsc::UnboundedSender<Bytes>);

impl Watch {
    fn send(&self, line: String) {
        self.0
            .unbounded_send(Bytes::from(line))
            .expect("watch open");
    }
}

fn json(v: Value) -> Response<Body> {
    Response::new(BodyExt::boxed(Full::new(Bytes::from(v.to_string()))))
}

fn api_error(code: u16, reason: &str, message: &str) -> Response<Body> {
    let mut r = json(status(code, reason, message));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

fn fast() -> Options {
    Options {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        max_namespaces: 4,
        cluster_ips: false,
        node_name: None,
    }
}

fn start(options: Options) -> (Arc<K8sNamer>, Api, Arc<AtomicU64>) {
    let (svc, handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
    let generation = Arc::new(AtomicU64::new(0));
    let namer = K8sNamer::start(
        move || async move { Ok(kube::Client::new(svc, "default")) },
        generation.clone(),
        options,
    )
    .unwrap();
    (
        namer,
        Api {
            handle,
            early: Vec::new(),
        },
        generation,
    )
}

/// What a path binds to: `Ok(None)` for neg, else the addresses.
fn look(namer: &K8sNamer, path: &str) -> Result<Option<Vec<String>>, NamerError> {
    Ok(match namer.lookup(&Path::read(path).unwrap())? {
        NameTree::Neg => None,
        NameTree::Leaf(b) => {
            assert_eq!(b.consumed, 3);
            Some(
                b.endpoints
                    .as_slice()
                    .iter()
                    .map(|e| e.addr.to_string())
                    .collect(),
            )
        }
        other => panic!("{other:?}"),
    })
}

fn bound(addrs: &[&str]) -> Result<Option<Vec<String>>, NamerError> {
    Ok(Some(addrs.iter().map(ToString::to_string).collect()))
}

/// Waits until `path` binds to `want` (the watches apply events on the
/// namer's own thread).
async fn until(namer: &K8sNamer, path: &str, want: Result<Option<Vec<String>>, NamerError>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = look(namer, path);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {got:?}, waiting for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_pending(r: Result<Option<Vec<String>>, NamerError>) -> String {
    match r {
        Err(e) if e.pending => e.message,
        other => panic!("expected pending, got {other:?}"),
    }
}

const HTTP: &[(&str, u16)] = &[("http", 8080)];

#[tokio::test]
async fn the_first_lookup_lists_then_watches_with_the_requests_kube_sends() {
    let (namer, mut api, generation) = start(fast());
    // Nothing is watched before a lookup asks.
    api.quiet().await;
    let message = is_pending(look(&namer, "/default/http/world"));
    assert!(
        message.contains("namespace default is not synced yet"),
        "{message}"
    );

    api.expect(SERVICES, LIST_SERVICES)
        .await
        .send_response(json(list(
            "ServiceList",
            "v1",
            100,
            vec![service("world", 90, &[("http", 80, "8080")])],
        )));
    // One kind listed is not enough.
    tokio::time::sleep(Duration::from_millis(50)).await;
    is_pending(look(&namer, "/default/http/world"));
    api.expect(SLICES, LIST_SLICES)
        .await
        .send_response(json(list(
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            200,
            vec![slice(
                "world-7xk2p",
                "world",
                190,
                &[ready("10.244.1.5"), ready("10.244.2.6")],
                HTTP,
            )],
        )));
    until(
        &namer,
        "/default/http/world",
        bound(&["10.244.1.5:8080", "10.244.2.6:8080"]),
    )
    .await;
    assert!(
        generation.load(Ordering::Acquire) >= 2,
        "each first list bumps"
    );
    assert_eq!(
        look(&namer, "/default/80/world"),
        look(&namer, "/default/http/world")
    );
    // The watches go on from the lists' resourceVersions.
    let _services = api.watch(SERVICES, &watch_services(100)).await;
    let _slices = api.watch(SLICES, &watch_slices(200)).await;

    // Synced: unknown names are neg, and more lookups there open nothing.
    assert_eq!(look(&namer, "/default/http/nobody"), Ok(None));
    assert_eq!(look(&namer, "/default/grpc/world"), Ok(None));
    assert_eq!(look(&namer, "/default/81/world"), Ok(None));
    api.quiet().await;
    // A path too short, or a namespace no cluster can have, opens nothing.
    assert_eq!(look(&namer, "/default/http"), Ok(None));
    assert_eq!(look(&namer, "/Not_A_Namespace/http/world"), Ok(None));
    api.quiet().await;
}

#[tokio::test]
async fn added_modified_and_deleted_objects_change_the_binding_and_the_generation() {
    let (namer, mut api, generation) = start(fast());
    is_pending(look(&namer, "/default/http/world"));
    let (services, slices) = api.sync(vec![], vec![]).await;
    until(&namer, "/default/http/world", Ok(None)).await;

    let g = generation.load(Ordering::Acquire);
    services.send(event(
        "ADDED",
        service("world", 101, &[("http", 80, "8080")]),
    ));
    until(&namer, "/default/http/world", bound(&[])).await;
    slices.send(event(
        "ADDED",
        slice("world-7xk2p", "world", 201, &[ready("10.244.1.5")], HTTP),
    ));
    until(&namer, "/default/http/world", bound(&["10.244.1.5:8080"])).await;
    assert!(generation.load(Ordering::Acquire) >= g + 2);

    let g = generation.load(Ordering::Acquire);
    slices.send(event(
        "MODIFIED",
        slice(
            "world-7xk2p",
            "world",
            202,
            &[ready("10.244.1.5"), ready("10.244.1.9")],
            HTTP,
        ),
    ));
    until(
        &namer,
        "/default/http/world",
        bound(&["10.244.1.5:8080", "10.244.1.9:8080"]),
    )
    .await;
    assert!(generation.load(Ordering::Acquire) > g);

    // The Service's port moves: numbers follow, names stay.
    services.send(event(
        "MODIFIED",
        service("world", 102, &[("http", 8000, "8080")]),
    ));
    until(
        &namer,
        "/default/8000/world",
        bound(&["10.244.1.5:8080", "10.244.1.9:8080"]),
    )
    .await;
    assert_eq!(look(&namer, "/default/80/world"), Ok(None));

    slices.send(event(
        "DELETED",
        slice("world-7xk2p", "world", 203, &[], HTTP),
    ));
    until(&namer, "/default/http/world", bound(&[])).await;
    services.send(event(
        "DELETED",
        service("world", 104, &[("http", 8000, "8080")]),
    ));
    until(&namer, "/default/http/world", Ok(None)).await;
    api.quiet().await;
}

#[tokio::test]
async fn a_slice_split_in_two_and_readiness_flips() {
    let (namer, mut api, _) = start(fast());
    is_pending(look(&namer, "/default/http/world"));
    let (_services, slices) = api
        .sync(
            vec![service("world", 90, &[("http", 80, "8080")])],
            vec![slice(
                "world-a",
                "world",
                190,
                &[
                    ready("10.244.1.5"),
                    ready("10.244.1.6"),
                    ready("10.244.1.7"),
                ],
                HTTP,
            )],
        )
        .await;
    let all = ["10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080"];
    until(&namer, "/default/http/world", bound(&all)).await;

    // The controller adds a slice, then takes its endpoints off the first.
    slices.send(event(
        "ADDED",
        slice(
            "world-b",
            "world",
            201,
            &[ready("10.244.1.6"), ready("10.244.1.7")],
            HTTP,
        ),
    ));
    slices.send(event(
        "MODIFIED",
        slice("world-a", "world", 202, &[ready("10.244.1.5")], HTTP),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    until(&namer, "/default/http/world", bound(&all)).await;

    // A pod fails its readiness probe, then passes it again.
    slices.send(event(
        "MODIFIED",
        slice("world-a", "world", 203, &[unready("10.244.1.5")], HTTP),
    ));
    until(
        &namer,
        "/default/http/world",
        bound(&["10.244.1.6:8080", "10.244.1.7:8080"]),
    )
    .await;
    slices.send(event(
        "MODIFIED",
        slice("world-a", "world", 204, &[ready("10.244.1.5")], HTTP),
    ));
    until(&namer, "/default/http/world", bound(&all)).await;

    // A scale-down: nothing ready, the terminating pods still serving are used.
    slices.send(event(
        "MODIFIED",
        slice("world-a", "world", 205, &[terminating("10.244.1.5")], HTTP),
    ));
    slices.send(event(
        "MODIFIED",
        slice(
            "world-b",
            "world",
            206,
            &[terminating("10.244.1.6"), unready("10.244.1.7")],
            HTTP,
        ),
    ));
    until(
        &namer,
        "/default/http/world",
        bound(&["10.244.1.5:8080", "10.244.1.6:8080"]),
    )
    .await;
    api.quiet().await;
}

/// `410 Gone` on the watch: the watch lists again. While the list is in
/// flight lookups keep the endpoints known before; the complete list then
/// replaces them.
#[tokio::test]
async fn gone_relists_and_drops_nothing_meanwhile() {
    let (namer, mut api, generation) = start(fast());
    is_pending(look(&namer, "/default/http/world"));
    let (_services, slices) = api
        .sync(
            vec![service("world", 90, &[("http", 80, "8080")])],
            vec![
                slice("world-a", "world", 190, &[ready("10.244.1.5")], HTTP),
                slice("world-b", "world", 191, &[ready("10.244.1.6")], HTTP),
            ],
        )
        .await;
    let before = bound(&["10.244.1.5:8080", "10.244.1.6:8080"]);
    until(&namer, "/default/http/world", before.clone()).await;

    slices.send(gone(200));
    let relist = api.expect(SLICES, LIST_SLICES).await;
    assert_eq!(namer.stats().restarts, 1);
    // Mid-relist: nothing dropped, not pending.
    let g = generation.load(Ordering::Acquire);
    for _ in 0..10 {
        assert_eq!(look(&namer, "/default/http/world"), before);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(generation.load(Ordering::Acquire), g);
    assert!(namer.stats().sync_age > Duration::ZERO);
    // world-b went away while the watch was behind; world-a grew.
    relist.send_response(json(list(
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        950,
        vec![slice(
            "world-a",
            "world",
            940,
            &[ready("10.244.1.5"), ready("10.244.1.8")],
            HTTP,
        )],
    )));
    until(
        &namer,
        "/default/http/world",
        bound(&["10.244.1.5:8080", "10.244.1.8:8080"]),
    )
    .await;
    assert!(generation.load(Ordering::Acquire) > g);
    let _slices = api.watch(SLICES, &watch_slices(950)).await;
    assert_eq!(namer.stats().sync_age, Duration::ZERO);
    api.quiet().await;
}

/// Errors before the first list: the namespace stays pending (the answer
/// says why), and each retry waits longer, up to the cap.
#[tokio::test]
async fn api_errors_back_off_and_keep_the_namespace_pending() {
    let (namer, mut api, _) = start(Options {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        max_namespaces: 4,
        cluster_ips: false,
        node_name: None,
    });
    is_pending(look(&namer, "/default/http/world"));
    // Slices list at once.
    api.expect(SLICES, LIST_SLICES)
        .await
        .send_response(json(list(
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            200,
            vec![slice("world-a", "world", 190, &[ready("10.244.1.5")], HTTP)],
        )));
    // Services fail: 500, 503, then 403 (RBAC), each retried after a wait.
    let (uri, reply, mut last) = api.take(SERVICES).await;
    assert_eq!(uri, LIST_SERVICES);
    reply.send_response(api_error(500, "InternalError", "etcd leader changed"));
    let answers = [
        api_error(503, "ServiceUnavailable", "the server is shutting down"),
        api_error(
            403,
            "Forbidden",
            "services is forbidden: User \"system:serviceaccount:sidetrack:sidetrack\" cannot list resource \"services\" in API group \"\" in the namespace \"default\"",
        ),
    ];
    // Waits are drawn between half and all of 100 ms, 200 ms, 400 ms.
    let least = [50, 100, 200];
    let mut waits = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let (uri, reply, at) = api.take(SERVICES).await;
        assert_eq!(uri, LIST_SERVICES, "a failed list is listed again");
        let waited = at - last;
        assert!(
            waited >= Duration::from_millis(least[i]),
            "retry {i} after {waited:?}"
        );
        waits.push(waited);
        last = at;
        reply.send_response(answer);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let message = is_pending(look(&namer, "/default/http/world"));
    assert!(message.contains("forbidden"), "{message}");
    assert_eq!(namer.stats().restarts, 3);
    assert!(namer.stats().sync_age >= Duration::from_millis(150));

    let (uri, reply, at) = api.take(SERVICES).await;
    assert_eq!(uri, LIST_SERVICES);
    assert!(
        at - last >= Duration::from_millis(least[2]),
        "{:?}",
        at - last
    );
    reply.send_response(json(list(
        "ServiceList",
        "v1",
        100,
        vec![service("world", 90, &[("http", 80, "8080")])],
    )));
    until(&namer, "/default/http/world", bound(&["10.244.1.5:8080"])).await;
    let _services = api.watch(SERVICES, &watch_services(100)).await;
    let _slices = api.watch(SLICES, &watch_slices(200)).await;
    assert_eq!(namer.stats().sync_age, Duration::ZERO);
    api.quiet().await;
}

/// The API server restarts: the open watches break, reconnecting fails
/// for a while, and then it answers again. What was known stays bound
/// throughout.
#[tokio::test]
async fn an_api_server_restart_keeps_what_is_known() {
    let (namer, mut api, _) = start(fast());
    is_pending(look(&namer, "/default/http/world"));
    let (services, slices) = api
        .sync(
            vec![service("world", 90, &[("http", 80, "8080")])],
            vec![slice("world-a", "world", 190, &[ready("10.244.1.5")], HTTP)],
        )
        .await;
    let known = bound(&["10.244.1.5:8080"]);
    until(&namer, "/default/http/world", known.clone()).await;

    // The connections drop mid-watch.
    slices.send("{\"type\":\"MODIFIED\",\"object\":{\"apiVers".into());
    drop(services);
    drop(slices);
    // A watch that ends is resumed from where it was; a broken one lists
    // again. Either way, while the server is down requests fail.
    for _ in 0..2 {
        let (uri, reply, _) = api.take("/").await;
        assert!(
            uri.starts_with(SERVICES) || uri.starts_with(SLICES),
            "{uri}"
        );
        reply.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(look(&namer, "/default/http/world"), known);
    }
    // Back: each kind ends up listed and watched again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut watching = Vec::new();
    while watching.len() < 2 {
        assert!(Instant::now() < deadline, "not watching again");
        let (uri, reply, _) = api.take("/").await;
        // Known until a list says more.
        let now = look(&namer, "/default/http/world").unwrap().unwrap();
        assert!(now.contains(&"10.244.1.5:8080".to_string()), "{now:?}");
        if uri == LIST_SERVICES {
            reply.send_response(json(list(
                "ServiceList",
                "v1",
                300,
                vec![service("world", 90, &[("http", 80, "8080")])],
            )));
        } else if uri == LIST_SLICES {
            reply.send_response(json(list(
                "EndpointSliceList",
                "discovery.k8s.io/v1",
                400,
                vec![slice(
                    "world-a",
                    "world",
                    390,
                    &[ready("10.244.1.5"), ready("10.244.3.3")],
                    HTTP,
                )],
            )));
        } else {
            assert!(uri.contains("watch=true"), "{uri}");
            let (tx, rx) = mpsc::unbounded::<Bytes>();
            let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
            reply.send_response(Response::new(BodyExt::boxed(body)));
            watching.push((uri, Watch(tx)));
        }
    }
    until(
        &namer,
        "/default/http/world",
        bound(&["10.244.1.5:8080", "10.244.3.3:8080"]),
    )
    .await;
    assert!(namer.stats().restarts >= 2);
    // Events on the new watches apply.
    let (_, slices) = watching
        .iter()
        .find(|(u, _)| u.starts_with(SLICES))
        .expect("a slice watch");
    slices.send(event(
        "MODIFIED",
        slice("world-a", "world", 401, &[ready("10.244.3.3")], HTTP),
    ));
    until(&namer, "/default/http/world", bound(&["10.244.3.3:8080"])).await;
}

/// A namespace that does not exist: the API server lists nothing there
/// (it answers 200 with an empty list, not 404), so its names are neg
/// once synced. A 404 (the API itself missing: no discovery.k8s.io/v1)
/// is an error like any other: pending, retried, and said in the answer.
#[tokio::test]
async fn a_namespace_that_does_not_exist() {
    let (namer, mut api, _) = start(fast());
    is_pending(look(&namer, "/nowhere/http/world"));
    let list_services = "/api/v1/namespaces/nowhere/services?&limit=500";
    let list_slices = "/apis/discovery.k8s.io/v1/namespaces/nowhere/endpointslices?&labelSelector=kubernetes.io%2Fservice-name&limit=500";
    api.expect("/api/v1/namespaces/nowhere/services", list_services)
        .await
        .send_response(json(list("ServiceList", "v1", 100, vec![])));
    api.expect(
        "/apis/discovery.k8s.io/v1/namespaces/nowhere/endpointslices",
        list_slices,
    )
    .await
    .send_response(api_error(
        404,
        "NotFound",
        "the server could not find the requested resource",
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let message = is_pending(look(&namer, "/nowhere/http/world"));
    assert!(
        message.contains("could not find the requested resource"),
        "{message}"
    );
    api.expect(
        "/apis/discovery.k8s.io/v1/namespaces/nowhere/endpointslices",
        list_slices,
    )
    .await
    .send_response(json(list(
        "EndpointSliceList",
        "discovery.k8s.io/v1",
        200,
        vec![],
    )));
    until(&namer, "/nowhere/http/world", Ok(None)).await;
}

/// Watches are per namespace, opened by the first lookup there, and
/// bounded in number: a request's own dtab can name any namespace.
#[tokio::test]
async fn one_watch_per_namespace_and_kind_and_a_bound_on_namespaces() {
    let (namer, mut api, _) = start(Options {
        max_namespaces: 2,
        ..fast()
    });
    for _ in 0..3 {
        is_pending(look(&namer, "/default/http/world"));
        is_pending(look(&namer, "/default/grpc/other"));
    }
    is_pending(look(&namer, "/team-b/http/world"));
    let mut uris = Vec::new();
    for _ in 0..4 {
        let (uri, reply, _) = api.take("/").await;
        uris.push(uri);
        drop(reply);
    }
    uris.sort();
    assert_eq!(
        uris,
        [
            LIST_SERVICES,
            "/api/v1/namespaces/team-b/services?&limit=500",
            LIST_SLICES,
            "/apis/discovery.k8s.io/v1/namespaces/team-b/endpointslices?&labelSelector=kubernetes.io%2Fservice-name&limit=500",
        ]
    );
    let err = look(&namer, "/team-c/http/world").unwrap_err();
    assert!(!err.pending, "{err:?}");
    assert!(err.message.contains("2 namespaces are"), "{}", err.message);
    assert_eq!(namer.stats().namespaces, 2);
}

#[tokio::test]
async fn stats_count_what_is_known() {
    let (namer, mut api, _) = start(fast());
    assert_eq!(namer.stats(), super::Stats::default());
    is_pending(look(&namer, "/default/http/world"));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        namer.stats().sync_age >= Duration::from_millis(30),
        "not synced yet"
    );
    let _watches = api
        .sync(
            vec![
                service("world", 90, &[("http", 80, "8080")]),
                service("hello", 91, &[("http", 80, "8080")]),
            ],
            vec![
                slice(
                    "world-a",
                    "world",
                    190,
                    &[ready("10.244.1.5"), unready("10.244.1.6")],
                    HTTP,
                ),
                slice("hello-a", "hello", 191, &[ready("10.244.1.7")], HTTP),
            ],
        )
        .await;
    until(&namer, "/default/http/world", bound(&["10.244.1.5:8080"])).await;
    let stats = namer.stats();
    assert_eq!(
        stats,
        super::Stats {
            restarts: 0,
            namespaces: 1,
            services: 2,
            endpoints: 3,
            sync_age: Duration::ZERO,
        }
    );
}

/// `k8s.api_server: http://...` as `sidetrack run` connects: a plain-HTTP
/// API server on the loopback, over real TCP (no credentials are looked
/// for, none are sent).
#[tokio::test]
async fn sidetrack_run_connects_to_a_plain_http_api_server() {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let answer = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let uri = req.uri().to_string();
                    assert!(req.headers().get("authorization").is_none());
                    log.lock().unwrap().push(uri.clone());
                    let body: Body = if uri.contains("watch=true") {
                        // A watch held open, with nothing to say.
                        BodyExt::boxed(StreamBody::new(futures::stream::pending::<
                            Result<Frame<Bytes>, Infallible>,
                        >()))
                    } else if uri.starts_with(SERVICES) {
                        json(list(
                            "ServiceList",
                            "v1",
                            100,
                            vec![service("world", 90, &[("http", 80, "8080")])],
                        ))
                        .into_body()
                    } else {
                        json(list(
                            "EndpointSliceList",
                            "discovery.k8s.io/v1",
                            200,
                            vec![slice("world-a", "world", 190, &[ready("10.244.1.5")], HTTP)],
                        ))
                        .into_body()
                    };
                    async move { Ok::<_, Infallible>(Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), answer)
                    .await;
            });
        }
    });
    let url = format!("http://{addr}");
    let namer = K8sNamer::start(move || super::connect(Some(url)), Arc::default(), fast()).unwrap();
    is_pending(look(&namer, "/default/80/world"));
    until(&namer, "/default/80/world", bound(&["10.244.1.5:8080"])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "{:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            LIST_SERVICES.to_string(),
            watch_services(100),
            LIST_SLICES.to_string(),
            watch_slices(200)
        ]
    );
    assert!(super::connect(Some("not a url".into())).await.is_err());
}
