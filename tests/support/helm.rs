//! Helm for the chart's tests: built from its Go module by `tests/helm/build.sh` (cached
//! outside the repository, under `~/.cache/pgwarden-helm/<version>`), run with a home of its
//! own so that no test reads or writes the user's Helm configuration.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The chart under test.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/pgwarden")
}

/// The helm binary, built on first use; `None` (skip) when it cannot be built outside CI.
/// With `CI=true` a helm that cannot be had fails the test.
pub fn helm() -> Option<&'static Path> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let got = HELM.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/build.sh");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "tests/helm/build.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match got {
        Ok(p) => Some(p),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "CI=true but helm is missing: {e}");
            eprintln!("SKIPPED: no helm: {e}");
            None
        }
    }
}

/// `helm args...`, against `kubeconfig` when given; its output, whatever its exit status.
pub fn run(helm: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("pgwarden-helm-home-{}", std::process::id()));
    let mut cmd = Command::new(helm);
    cmd.args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        // Never the cluster the user's own kubeconfig names.
        .env("KUBECONFIG", "/dev/null");
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    cmd.output().expect("run helm")
}

/// `helm args...`, which must succeed; its stdout.
pub fn ok(helm: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> String {
    let out = run(helm, kubeconfig, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// The documents of a multi-document YAML stream (`helm template`'s output), empty ones left out.
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered object of `kind` named `name`.
pub fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}
