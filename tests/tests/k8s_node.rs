//! Root test: the proxy as a Kubernetes node runs it, on the netns test
//! bed. The binary is the image's (`cargo xtask image`, unpacked with
//! umoci), started with the DaemonSet's arguments and environment and the
//! ConfigMap's settings file, rendered from `deploy/` (not retyped). Only
//! what a test bed node has instead of a cluster's is changed in the
//! settings: the Service CIDR (the bed's), the cgroup (the bed's node
//! stands for `kubepods`), the API server (a stand-in on loopback: no
//! cluster is reachable here) and the handover socket's directory. Then
//! the demo's two requests: `hello` calls `world` by its Service name,
//! and an override stages `world-v2` for one request; and a request whose
//! Host is only the ClusterIP it went to is named by that IP's Service,
//! a short name is in the calling pod's namespace, and a Service port
//! marked `sidetrack.io/skip-ports` is not intercepted.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_yaml_ng::Value;
use sidetrack_tests::{
    TempDir,
    kube_api::{KubeApi, Pod, Service},
    require_root,
};
use xtask::{
    staging::{
        APP_PORT, Bins, Mode, Staging, hello_service, http_get, node_process, world_service,
    },
    testbed::SERVICE_RANGE,
};

fn bins() -> Bins {
    sidetrack_tests::proxy::staging_bins()
}

/// The image's root filesystem, unpacked into `dir`; the binary's path.
fn unpack_image(dir: &TempDir) -> std::path::PathBuf {
    let layout = xtask::image::image_dir().join("oci");
    assert!(
        layout.is_dir(),
        "no image at {}: `cargo xtask test` builds it (`cargo xtask image`)",
        layout.display()
    );
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:dev", layout.display()))
        .arg(&bundle)
        .output()
        .expect("run umoci (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    // The runtime spec's process: the image's entrypoint.
    let entry = config["process"]["args"][0].as_str().unwrap().to_owned();
    let binary = bundle.join("rootfs").join(entry.trim_start_matches('/'));
    assert!(binary.is_file(), "{} in the image", binary.display());
    binary
}

fn echo_bin() -> std::path::PathBuf {
    sidetrack_tests::proxy::binary()
        .parent()
        .unwrap()
        .join("netns-echo")
}

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("deploy/ has no {kind}"))
}

/// The DaemonSet container's arguments with `$(VAR)`s replaced from its
/// env (the downward API's values are the bed node's), and that env.
fn daemonset_args(objects: &[Value], node_ip: &str) -> (Vec<String>, Vec<(String, String)>) {
    let c = &object(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("status.podIP" | "status.hostIP") => node_ip.to_owned(),
                Some("spec.nodeName") => "bed-node".to_owned(),
                Some(other) => panic!("unexpected fieldPath {other}"),
                None => e["value"].as_str().unwrap_or_default().to_owned(),
            };
            (name, value)
        })
        .collect();
    let args = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| {
            let mut arg = a.as_str().unwrap().to_owned();
            for (name, value) in &env {
                arg = arg.replace(&format!("$({name})"), value);
            }
            arg
        })
        .collect();
    (args, env)
}

/// The ConfigMap's settings, with what a bed node has instead of a
/// cluster's set: every other key as deploy/ writes it.
fn node_settings(objects: &[Value], file: &str, s: &Staging, api: &KubeApi, dir: &Path) -> String {
    let text = object(objects, "ConfigMap")["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {file}"));
    let mut doc: Value = serde_yaml_ng::from_str(text).unwrap();
    let (svc, len) = SERVICE_RANGE;
    let set = |doc: &mut Value, path: &[&str], v: Value| {
        let mut at = doc;
        for key in &path[..path.len() - 1] {
            let map = at.as_mapping_mut().unwrap();
            at = map
                .entry(Value::from(*key))
                .or_insert(Value::Mapping(Default::default()));
        }
        at.as_mapping_mut()
            .unwrap()
            .insert(Value::from(path[path.len() - 1]), v);
    };
    set(
        &mut doc,
        &["interception", "cidrs"],
        Value::Sequence(vec![
            format!("{svc}/{len}").into(),
            format!("{}/32", s.hello.ip()).into(),
            format!("{}/32", s.world_v1.ip()).into(),
        ]),
    );
    set(
        &mut doc,
        &["interception", "cgroup"],
        s.node.cgroup_path().display().to_string().into(),
    );
    set(&mut doc, &["k8s", "api_server"], api.url().into());
    set(
        &mut doc,
        &["handover", "socket"],
        dir.join("handover.sock").display().to_string().into(),
    );
    serde_yaml_ng::to_string(&doc).unwrap()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn svc(name: &str, ip: std::net::Ipv4Addr, pod: std::net::Ipv4Addr) -> Service {
    Service {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: ip.to_string(),
        ports: vec![("http".into(), 80, APP_PORT)],
        endpoints: vec![pod.to_string()],
        annotations: Vec::new(),
    }
}

#[test]
fn the_image_with_deploys_settings_routes_and_stages_by_service_name() {
    require_root();
    let dir = TempDir::new("k8s-node");
    let binary = unpack_image(&dir);
    let mut s = Staging::start("k8s-node", Mode::Ebpf, bins()).unwrap();
    // The bed's own proxy makes way for the image's.
    s.kill_proxy().unwrap();
    // An echo server on world-v1's (intercepted) address, behind a
    // Service that says its port is never intercepted.
    let mut echo = s.world_v1.command(echo_bin());
    echo.args(["serve", &s.world_v1.ip().to_string()])
        .stdout(Stdio::piped());
    let mut echo = Running(echo.spawn().unwrap());
    let mut echo_lines =
        std::io::BufRead::lines(std::io::BufReader::new(echo.0.stdout.take().unwrap()));
    let echo_addr: SocketAddrV4 = echo_lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("listening ")
        .unwrap()
        .parse()
        .unwrap();
    let mut skipped = svc("echo", s.world_v1.ip(), s.world_v1.ip());
    skipped.ports = vec![("tcp".into(), echo_addr.port(), echo_addr.port())];
    skipped.annotations = vec![(
        "sidetrack.io/skip-ports".into(),
        echo_addr.port().to_string(),
    )];
    // The client pod is in namespace shop, where Services hello (the
    // hello pod, which is in default) and greet (world-v2's pod) are; the
    // others are in default.
    let in_shop = |mut svc: Service| {
        svc.namespace = "shop".into();
        svc
    };
    let greet = in_shop(svc("greet", "198.19.0.4".parse().unwrap(), s.world_v2.ip()));
    let shop_hello = in_shop(svc("hello", "198.19.0.5".parse().unwrap(), s.hello.ip()));
    let pod = |ns: &str, name: &str, ip: std::net::Ipv4Addr| Pod {
        namespace: ns.into(),
        name: name.into(),
        ip: ip.to_string(),
    };
    let api = KubeApi::start_with_pods(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            svc("hello", *hello_service().ip(), s.hello.ip()),
            svc("world", *world_service().ip(), s.world_v1.ip()),
            svc("world-v2", "198.19.0.3".parse().unwrap(), s.world_v2.ip()),
            greet,
            shop_hello,
            skipped,
        ],
        vec![
            pod("shop", "client", s.client.ip()),
            pod("default", "hello", s.hello.ip()),
            pod("default", "world-v1", s.world_v1.ip()),
            pod("default", "world-v2", s.world_v2.ip()),
        ],
    );
    let objects = xtask::deploy::documents(&xtask::deploy::render().unwrap()).unwrap();
    let node_ip = s.proxy_addr.ip().to_string();
    let (mut args, env) = daemonset_args(&objects, &node_ip);
    // --config names the ConfigMap's file where the DaemonSet mounts it;
    // here it is written beside the test.
    let config_arg = args
        .iter_mut()
        .find(|a| a.starts_with("--config"))
        .expect("the DaemonSet passes --config");
    let file = Path::new(
        config_arg
            .trim_start_matches("--config")
            .trim_start_matches('='),
    )
    .file_name()
    .unwrap()
    .to_str()
    .unwrap()
    .to_owned();
    let config = dir.path().join(&file);
    std::fs::write(
        &config,
        node_settings(&objects, &file, &s, &api, dir.path()),
    )
    .unwrap();
    *config_arg = format!("--config={}", config.display());

    let log = dir.path().join("sidetrack.log");
    let mut cmd = Command::new(&binary);
    cmd.args(&args)
        .envs(env)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    node_process(&mut cmd, &s.node.cgroup_path().join("sidetrack")).unwrap();
    let _proxy = Running(cmd.spawn().unwrap());
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let admin = SocketAddr::V4(SocketAddrV4::new(s.proxy_addr.ip().to_owned(), 9990));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(admin, "/ready").is_ok_and(|(status, _)| status == 200) {
        assert!(Instant::now() < deadline, "not ready:\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }

    // The client calls hello, shop's; hello (in default) calls world by
    // its Service name (Host: world, port 80): default's.
    let plain = s
        .get_hello(&[])
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert_eq!(
        plain,
        format!("Hello ({}) world ({})!!", s.hello.ip(), s.world_v1.ip()),
        "{}",
        logs()
    );
    let staged = s
        .get_hello(&["l5d-dtab: /svc/default/80/world => /#/io.l5d.k8s/default/80/world-v2"])
        .unwrap();
    assert_eq!(
        staged,
        format!("Hello ({}) earth ({})!!", s.hello.ip(), s.world_v2.ip())
    );
    // A request that names no host (its Host is the ClusterIP it was sent
    // to) is named by the Service that owns that ClusterIP.
    let world = world_service();
    let by_ip = s
        .curl(&format!("http://{}/", world.ip()), world, &[])
        .unwrap();
    let by_ip = String::from_utf8_lossy(&by_ip);
    assert_eq!(by_ip, format!("world ({})", s.world_v1.ip()), "{}", logs());
    // A short name is in the calling pod's namespace: the client's greet
    // is shop's (the node's pods, watched for their namespaces).
    let greet = s.curl("http://greet/", world, &[]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&greet),
        format!("earth ({})", s.world_v2.ip()),
        "{}",
        logs()
    );
    // The skipped Service port: the echo server sees the client itself,
    // not the proxy (once the namer has put it in the data path's map).
    let skip_counted = || {
        xtask::staging::metric(
            &s.metrics().unwrap(),
            "sidetrack_ebpf_connect_skipped_total",
            &[],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = s
            .client
            .command(echo_bin())
            .args(["send", &echo_addr.to_string(), "1000"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peer = echo_lines.next().unwrap().unwrap();
        // Each connection says `peer <addr>` and then `closed ...`.
        let _closed = echo_lines.next();
        if peer.starts_with(&format!("peer {}:", s.client.ip())) {
            break;
        }
        assert!(
            peer.starts_with(&format!("peer {}:", s.proxy_addr.ip())),
            "{peer}"
        );
        assert!(Instant::now() < deadline, "never skipped:\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(skip_counted() >= 1.0);
    // Names from the namer, as the metrics say.
    let m = s.metrics().unwrap();
    assert!(m.contains("dst=\"/#/io.l5d.k8s/default/80/world\""), "{m}");
    let requests = api.requests();
    assert!(requests.iter().any(|r| r.contains("endpointslices")));
    // Every namespace's Services, for their ClusterIPs.
    assert!(
        requests.iter().any(|r| r.starts_with("/api/v1/services")),
        "{requests:#?}"
    );
}
