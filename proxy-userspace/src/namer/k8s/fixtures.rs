//! API objects as a real API server writes them (fields the namer ignores
//! included), for the namer's tests.

use serde_json::{Value, json};

/// An endpoint of a slice: its address and conditions.
#[derive(Clone, Copy)]
pub struct Ep {
    pub ip: &'static str,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

pub const fn ready(ip: &'static str) -> Ep {
    Ep {
        ip,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// A pod that failed its readiness probe.
pub const fn unready(ip: &'static str) -> Ep {
    Ep {
        ip,
        ready: false,
        serving: false,
        terminating: false,
    }
}

/// A pod shutting down that still passes its probe.
pub const fn terminating(ip: &'static str) -> Ep {
    Ep {
        ip,
        ready: false,
        serving: true,
        terminating: true,
    }
}

/// An EndpointSlice of `service` as the EndpointSlice controller writes it.
pub fn slice(name: &str, service: &str, rv: u64, eps: &[Ep], ports: &[(&str, u16)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({
                "addresses": [e.ip],
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                "nodeName": format!("node-{}", i % 2 + 1),
                "targetRef": {
                    "kind": "Pod",
                    "name": format!("{service}-7d9c8b6f5-{i:05}"),
                    "namespace": "default",
                    "uid": format!("3b1f7c52-0000-4000-8000-{i:012}")
                },
                "zone": "zone-a"
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| {
            let mut port = json!({"port": p, "protocol": "TCP"});
            if !n.is_empty() {
                port["name"] = json!(n);
            }
            port
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": "9a3e5d0c-1111-4000-8000-000000000001",
            "resourceVersion": rv.to_string(),
            "generation": 3,
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "generateName": format!("{service}-"),
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": service,
                "app": service
            },
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-01T10:00:00Z"},
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": service,
                "uid": "5c2d4e6f-2222-4000-8000-000000000002",
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports
    })
}

/// A ClusterIP Service with `(name, port, targetPort)` ports; a target
/// that parses as a number is written as one.
pub fn service(name: &str, rv: u64, ports: &[(&str, u16, &str)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, t)| {
            let target = match t.parse::<u16>() {
                Ok(t) => json!(t),
                Err(_) => json!(t),
            };
            let mut port = json!({"port": p, "protocol": "TCP", "targetPort": target});
            if !n.is_empty() {
                port["name"] = json!(n);
            }
            port
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": "5c2d4e6f-2222-4000-8000-000000000002",
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2026-12-01T09:59:00Z",
            "labels": {"app": name}
        },
        "spec": {
            "clusterIP": "10.96.12.34",
            "clusterIPs": ["10.96.12.34"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": ports,
            "selector": {"app": name},
            "sessionAffinity": "None",
            "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
}

/// A list response.
pub fn list(kind: &str, api_version: &str, rv: u64, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items
    })
}

/// One line of a watch response.
pub fn event(kind: &str, object: Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

/// The watch event a server sends when the watch's resourceVersion is too
/// old to resume from.
pub fn gone(rv: u64) -> String {
    event(
        "ERROR",
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {rv} (900)"),
            "reason": "Expired", "code": 410
        }),
    )
}

/// An API error answer's body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}
