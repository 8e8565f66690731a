//! deploy/, the Kubernetes manifests: rendered as `kubectl apply -k deploy/`
//! would send them, and validated offline against the API's schemas.
//!
//! No API server runs here (`kubectl apply --dry-run=client` needs one), so
//! validation is kubernetes-validate's `--strict` check of every object
//! against the oldest and newest Kubernetes we support. Rendering uses
//! `kubectl kustomize` where kubectl is installed, else the files that
//! kustomization.yaml lists, as they are: deploy/ is kept to plain
//! resources so that both give the same objects (a test checks it).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{cmd, setup};

/// The Kubernetes versions every object must be valid for: the oldest we
/// support and the newest kubernetes-validate ships.
pub const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

pub fn deploy_dir() -> PathBuf {
    crate::workspace_root().join("deploy")
}

/// The part of kustomization.yaml the plain rendering understands; any
/// other key (patches, generators) is refused, as the plain files would
/// not show what it does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    namespace: Option<String>,
    resources: Vec<String>,
}

/// deploy/ rendered, as a multi-document YAML stream: by `kubectl
/// kustomize` when kubectl is installed, else the plain files.
pub fn render() -> Result<String> {
    match render_kustomize() {
        Some(rendered) => rendered,
        None => render_plain(),
    }
}

/// `kubectl kustomize deploy/`, or `None` when kubectl is not installed.
pub fn render_kustomize() -> Option<Result<String>> {
    cmd::output(Command::new("kubectl").args(["version", "--client"]))?;
    let mut kubectl = Command::new("kubectl");
    kubectl.arg("kustomize").arg(deploy_dir());
    Some(cmd::output(&mut kubectl).with_context(|| format!("`{}` failed", cmd::display(&kubectl))))
}

/// The files kustomization.yaml lists, joined in its order. Each names its
/// namespace itself; one that differs from the kustomization's is refused,
/// since kustomize would change it.
pub fn render_plain() -> Result<String> {
    let dir = deploy_dir();
    let path = dir.join("kustomization.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let k: Kustomization = serde_yaml_ng::from_str(&text).with_context(|| {
        format!(
            "{}: only apiVersion, kind, namespace and resources can be rendered without \
             kubectl",
            path.display()
        )
    })?;
    let mut out = String::new();
    for name in &k.resources {
        let file = dir.join(name);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        if let Some(ns) = &k.namespace {
            for doc in documents(&text)? {
                let own = doc["metadata"]["namespace"].as_str();
                if own.is_some_and(|own| own != ns) {
                    bail!(
                        "{}: namespace {own:?} differs from the kustomization's {ns}, which \
                         kustomize would set",
                        file.display()
                    );
                }
            }
        }
        out.push_str("---\n");
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The documents of a YAML stream, empty ones left out.
pub fn documents(text: &str) -> Result<Vec<serde_yaml_ng::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(doc).context("parsing YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Renders deploy/ and validates every object with `kubernetes-validate
/// --strict` (unknown fields are errors) for each of [`KUBERNETES_VERSIONS`].
pub fn validate() -> Result<()> {
    let how = if render_kustomize().is_some() {
        "kubectl kustomize"
    } else {
        "the plain files (no kubectl)"
    };
    let rendered = render()?;
    let objects = documents(&rendered)?.len();
    let out = crate::target_dir().join("deploy/rendered.yaml");
    std::fs::create_dir_all(out.parent().expect("a parent"))?;
    std::fs::write(&out, &rendered).with_context(|| format!("writing {}", out.display()))?;
    cmd::note(format!("deploy/ rendered by {how}: {objects} objects"));
    let mut check = Command::new(setup::kubernetes_validate());
    check.args(["--strict", "--quiet"]);
    for v in KUBERNETES_VERSIONS {
        check.args(["-k", v]);
    }
    cmd::run(check.arg(&out))
        .context("deploy/ does not validate (or run `cargo xtask setup` for kubernetes-validate)")
}
