//! deploy/ against the binary it runs: the DaemonSet's arguments parse as
//! `sidetrack run` parses them, the ConfigMap's settings file loads, and
//! what the settings name (the config file, the handover socket's
//! directory, the host's cgroup hierarchy) is mounted. A renamed flag or
//! settings key fails here rather than on a node. The objects' shapes are
//! checked against the Kubernetes schemas by `cargo xtask test`
//! (`xtask::deploy::validate`); this reads the same rendering.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser;
use serde_yaml_ng::Value;
use sidetrack::{
    cli::{Cli, Command as Sub, run::RunArgs},
    config::{IdentifierKind, InterceptMode, Settings, parse_cidr},
    dtab::Dtab,
};

/// What the downward API gives the container here: a node's address.
const NODE_IP: &str = "10.0.0.5";

fn rendered() -> Vec<Value> {
    let text = xtask::deploy::render().expect("rendering deploy/");
    xtask::deploy::documents(&text).expect("deploy/ is YAML")
}

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "deploy/ has one {kind}");
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} is a string"))
}

/// The DaemonSet's one container and its pod spec.
fn container(objects: &[Value]) -> (&Value, &Value) {
    let pod = &object(objects, "DaemonSet")["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    (pod, &containers[0])
}

/// The container's arguments as the kubelet passes them: `$(VAR)` replaced
/// by the variable's value, each of which must be defined in `env` (the
/// kubelet leaves an undefined one as it is).
fn expanded_args(c: &Value) -> Vec<String> {
    let env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            let name = str_of(&e["name"], "env name").to_string();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("status.podIP" | "status.hostIP") => NODE_IP.to_string(),
                Some("spec.nodeName") => "node-1".to_string(),
                Some(other) => panic!("{name}: unexpected fieldPath {other}"),
                None => str_of(&e["value"], "env value").to_string(),
            };
            (name, value)
        })
        .collect();
    c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| {
            let mut arg = str_of(a, "an arg").to_string();
            while let Some(start) = arg.find("$(") {
                let end = start + arg[start..].find(')').expect("$(VAR) is closed");
                let var = &arg[start + 2..end];
                let (_, value) = env
                    .iter()
                    .find(|(name, _)| name == var)
                    .unwrap_or_else(|| panic!("{arg}: $({var}) is not in the container's env"));
                arg.replace_range(start..=end, value);
            }
            arg
        })
        .collect()
}

/// `sidetrack run`'s arguments from the DaemonSet, parsed by the binary's own parser.
fn run_args(objects: &[Value]) -> RunArgs {
    let (_, c) = container(objects);
    assert!(
        c["command"].is_null(),
        "the image's entrypoint (/sidetrack) runs"
    );
    let argv = std::iter::once("sidetrack".to_string()).chain(expanded_args(c));
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Sub::Run(args),
            ..
        }) => args,
        Ok(other) => panic!(
            "the DaemonSet runs {:?}, not `sidetrack run`",
            other.command
        ),
        Err(e) => panic!("sidetrack does not accept the DaemonSet's arguments:\n{e}"),
    }
}

/// The settings the proxy starts with on a node: the ConfigMap's file with
/// the DaemonSet's flags on top (as `RunArgs` applies them).
fn settings(objects: &[Value], args: &RunArgs) -> Settings {
    let config = args.config.as_ref().expect("--config");
    let key = config.file_name().unwrap().to_str().unwrap();
    let text = str_of(
        &object(objects, "ConfigMap")["data"][key],
        "the ConfigMap's settings file",
    );
    let mut s = Settings::from_yaml(text)
        .unwrap_or_else(|e| panic!("the ConfigMap's {key} does not load: {e}"));
    assert!(
        args.intercept.is_none() && args.identifier.is_none() && args.dtab.is_none(),
        "the mode, identifier and dtab are the ConfigMap's to say"
    );
    s.listen = args.listen.expect("--listen");
    s.admin = args.admin.expect("--admin");
    s
}

#[test]
fn every_flag_of_the_daemonset_is_one_sidetrack_run_has() {
    let objects = rendered();
    let args = run_args(&objects);
    let node = |port| SocketAddr::new(NODE_IP.parse().unwrap(), port);
    assert_eq!(
        args.listen,
        Some(node(4140)),
        "listens on the node's address"
    );
    assert_eq!(args.admin, Some(node(9990)));
    // The built binary's own help, too: what a person reading it sees.
    let help = Command::new(sidetrack_tests::proxy::binary())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let (_, c) = container(&objects);
    for arg in expanded_args(c) {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
                "`sidetrack run --help` has no --{flag}"
            );
        }
    }
}

#[test]
fn the_configmap_settings_load_as_the_node_proxy_needs_them() {
    let objects = rendered();
    let s = settings(&objects, &run_args(&objects));
    assert_eq!(s.intercept, InterceptMode::Ebpf);
    assert_eq!(s.identifier, IdentifierKind::K8s);
    assert!(s.k8s.enabled, "the io.l5d.k8s namer runs");
    let dtab = s.base_dtab_text().unwrap();
    Dtab::parse(&dtab).unwrap_or_else(|e| panic!("the base dtab {dtab:?}: {e}"));
    assert!(
        dtab.contains("/#/io.l5d.k8s"),
        "{dtab:?} routes to the namer"
    );
    assert!(!s.interception.cidrs.is_empty());
    for cidr in &s.interception.cidrs {
        parse_cidr(cidr).unwrap_or_else(|e| panic!("interception.cidrs: {e}"));
    }
    assert!(
        s.handover.enabled && s.handover_socket().is_some(),
        "a new pod takes over from the old one"
    );
}

#[test]
fn what_the_settings_name_is_mounted() {
    let objects = rendered();
    let args = run_args(&objects);
    let s = settings(&objects, &args);
    let (pod, c) = container(&objects);
    let volume = |name: &str| -> &Value {
        pod["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    // The volume mounted at `path` or the nearest directory above it.
    let mount_of = |path: &Path| -> (PathBuf, &Value) {
        c["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .map(|m| (PathBuf::from(str_of(&m["mountPath"], "mountPath")), m))
            .filter(|(at, _)| path.starts_with(at))
            .max_by_key(|(at, _)| at.components().count())
            .map(|(at, m)| (at, volume(str_of(&m["name"], "mount name"))))
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()))
    };

    // The settings file: the ConfigMap's key, in a volume of the whole
    // ConfigMap (a subPath mount would never see an update).
    let config = args.config.unwrap();
    let (at, v) = mount_of(&config);
    assert_eq!(at, config.parent().unwrap(), "{} is mounted", at.display());
    assert_eq!(
        v["configMap"]["name"],
        object(&objects, "ConfigMap")["metadata"]["name"]
    );
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == at.to_str().unwrap())
        .unwrap();
    assert!(mount["subPath"].is_null(), "no subPath: updates must show");

    // The handover socket: a directory of the host's, the same for the
    // old pod and the new one.
    let socket = s.handover_socket().unwrap();
    let dir = socket.parent().unwrap();
    let (at, v) = mount_of(dir);
    assert_eq!(
        v["hostPath"]["path"].as_str(),
        Some(at.to_str().unwrap()),
        "{} comes from the host",
        dir.display()
    );

    // The cgroup the programs attach to: the host's hierarchy, not the
    // container's own cgroup namespace.
    let cgroup = s
        .interception
        .cgroup
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    let (_, v) = mount_of(&cgroup);
    assert_eq!(v["hostPath"]["path"].as_str(), Some("/sys/fs/cgroup"));

    // Files the settings read, when they name any.
    for path in s
        .dtab_file
        .iter()
        .chain(&s.fs_dir)
        .chain(&s.overrides.keys_dir)
    {
        mount_of(path);
    }
}

#[test]
fn the_daemonset_can_surge_and_drain() {
    let objects = rendered();
    let ds = object(&objects, "DaemonSet");
    let s = settings(&objects, &run_args(&objects));
    let (pod, c) = container(&objects);
    let update = &ds["spec"]["updateStrategy"];
    assert_eq!(update["type"], "RollingUpdate");
    assert_eq!(update["rollingUpdate"]["maxSurge"], 1);
    assert_eq!(update["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(pod["hostNetwork"], true);
    assert!(
        c["ports"].is_null(),
        "with hostNetwork a declared port is a hostPort, and the surge pod would not schedule"
    );
    // The drain, after waiting out a successor that prepares, fits in the grace.
    let grace_ms = pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000;
    assert!(
        s.shutdown_grace_ms + s.handover.timeout_ms < grace_ms,
        "terminationGracePeriodSeconds covers shutdown_grace_ms and handover.timeout_ms"
    );
    // Probes and scrapes go to the admin server.
    let admin_port = s.admin.port();
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], admin_port, "{probe}");
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        admin_port.to_string().as_str()
    );
    assert_eq!(c["image"], xtask::image::IMAGE_NAME);
}

/// Without kubectl, CI validates the plain files: they must be what
/// kustomize renders.
#[test]
fn the_plain_files_are_what_kustomize_renders() {
    let Some(kustomized) = xtask::deploy::render_kustomize() else {
        eprintln!("kubectl is not installed: nothing to compare");
        return;
    };
    let key = |o: &Value| format!("{:?}/{:?}", o["kind"], o["metadata"]["name"]);
    let sorted = |text: &str| {
        let mut docs = xtask::deploy::documents(text).unwrap();
        docs.sort_by_key(key);
        docs
    };
    let plain = xtask::deploy::render_plain().unwrap();
    assert_eq!(sorted(&plain), sorted(&kustomized.unwrap()));
}
