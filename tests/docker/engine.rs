//! The container tests' Docker engine and images: `tests/docker/engine.sh` starts a daemon of
//! the test's own (its data, socket and cgroups in a directory of its own), `tests/docker/build.sh`
//! builds the images into it from docker/Dockerfile; dropped, the daemon, its containers and
//! volumes and its directory go. Include it with `#[path = "docker/engine.rs"] mod engine;`.
//!
//! Missing components (root, Debian's docker.io or debootstrap) fail the test under `CI=true`
//! and otherwise skip it with a note, as the other real-component tests do.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The Debian client: it builds with the daemon's own BuildKit (no buildx plugin here).
const DOCKER: &str = "/usr/bin/docker";

pub struct Engine {
    dir: PathBuf,
    /// `unix://<dir>/docker.sock`.
    host: String,
    pub pgwarden_image: String,
    pub pgbouncer_image: String,
    /// The test's store (tests/docker/etcd.Dockerfile).
    pub etcd_image: String,
}

fn script(name: &str) -> String {
    format!("{}/tests/docker/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// What is missing for the engine, if anything.
fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (the Docker daemon runs as root)".to_owned());
    }
    for (path, what) in [
        ("/usr/sbin/dockerd", "dockerd (Debian's docker.io)"),
        (DOCKER, "docker (Debian's docker.io)"),
        ("/usr/sbin/debootstrap", "debootstrap"),
    ] {
        if !Path::new(path).exists() {
            missing.push(format!("{path}: {what}"));
        }
    }
    missing
}

impl Engine {
    /// Starts the daemon and builds the images (minutes the first time: the release build and
    /// the Debian base), or explains why not: panics under `CI=true` when a component is
    /// missing, else prints `SKIPPED: ...` and returns `None`. A component that is there but
    /// fails panics in any case.
    pub fn start_or_skip(test: &str) -> Option<Engine> {
        let missing = missing();
        if !missing.is_empty() {
            let msg = format!(
                "{test}: the container test needs {} (scripts/install-deps.sh installs the packages)",
                missing.join(", ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "pgwarden-docker-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let up = Command::new("bash")
            .arg(script("engine.sh"))
            .arg("up")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run tests/docker/engine.sh");
        let mut engine = Engine {
            host: format!("unix://{}/docker.sock", dir.display()),
            dir,
            pgwarden_image: String::new(),
            pgbouncer_image: String::new(),
            etcd_image: String::new(),
        };
        // From here on, dropping `engine` stops whatever `up` started.
        assert!(
            up.status.success(),
            "tests/docker/engine.sh up failed: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let started = std::time::Instant::now();
        let build = Command::new("bash")
            .arg(script("build.sh"))
            .env("DOCKER_HOST", &engine.host)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/docker/build.sh");
        assert!(build.status.success(), "tests/docker/build.sh failed");
        eprintln!("images built in {:.0} s", started.elapsed().as_secs_f64());
        let images = String::from_utf8_lossy(&build.stdout);
        let mut images = images.lines().map(str::to_owned);
        engine.pgwarden_image = images.next().expect("build.sh names the pgwarden image");
        engine.pgbouncer_image = images.next().expect("build.sh names the pgBouncer image");
        engine.etcd_image = images.next().expect("build.sh names the etcd image");
        Some(engine)
    }

    /// A directory of the engine's, removed with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `docker ARGS` against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// `docker ARGS`, which must succeed: its stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker inspect -f FORMAT NAME`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.docker_ok(&["inspect", "-f", format, name])
            .trim()
            .to_owned()
    }

    /// A container's log (stdout and stderr), as `docker logs` gives it.
    pub fn logs(&self, name: &str) -> String {
        let out = self.docker(&["logs", name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let down = Command::new("bash")
            .arg(script("engine.sh"))
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = down
            && !out.status.success()
        {
            eprintln!(
                "tests/docker/engine.sh down {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
