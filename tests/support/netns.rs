//! Test hosts: a network namespace per member, each joined by a veth pair to a bridge of the
//! test's own, so a test can cut a member off the network with iptables inside its namespace,
//! as a real partition does (packets dropped, connections left hanging, nothing refused).
//!
//! The test process stays in the machine's namespace, at the bridge's address (`10.213.X.1`),
//! which is where the store and the test's clients listen and connect from; member `i` is at
//! `10.213.X.(10 + i)`. `X` is a free subnet number: its bridge, `pgwb<X>`, is created first, and
//! the kernel refuses a second bridge of that name, so tests running side by side (in one test
//! binary or in several) never share a subnet. Everything is removed on drop; nothing routes
//! off the machine (no default route in any namespace, no forwarding set up).
//!
//! Needs root, `ip` (iproute2), `nsenter` (util-linux) and `iptables`; without them a test
//! skips, except under `CI=true`, where it fails.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The bridge, and one namespace per member.
pub struct TestNet {
    subnet: u8,
    /// How many namespaces (hosts) exist: `0..hosts`.
    hosts: usize,
    /// The store's namespace exists ([`TestNet::add_store_host`]).
    store_host: bool,
}

/// Runs `cmd` with `args`; panics, naming the command and its stderr, when it fails.
fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// What a [`TestNet`] needs is here; the reason when it is not.
fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    for tool in ["/usr/sbin/ip", "/usr/bin/nsenter", "/usr/sbin/iptables"] {
        if !std::path::Path::new(tool).is_file() {
            return Some(format!(
                "{tool} is missing (scripts/install-deps.sh installs it)"
            ));
        }
    }
    None
}

impl TestNet {
    /// The bridge, with no host yet ([`TestNet::add_host`]); `None` (skip) when root or a
    /// tool is missing outside CI.
    pub fn create() -> Option<TestNet> {
        if let Some(why) = missing() {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true but {why}"
            );
            eprintln!("SKIPPED: {why}");
            return None;
        }
        // Start where the process id points, so parallel test binaries rarely try the same
        // subnet; the bridge's creation is what claims it.
        // One process makes nets one after another: the next starts past the last, as a
        // deleted namespace's veth may linger a moment under its old name.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let start = std::process::id() as usize
            + 7 * MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let subnet = (0..250)
            .map(|k| ((start + k) % 250 + 1) as u8)
            .find(|x| {
                Command::new("ip")
                    .args(["link", "add", &format!("pgwb{x}"), "type", "bridge"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("a free 10.213.X.0/24 for a test bridge");
        let net = TestNet {
            subnet,
            hosts: 0,
            store_host: false,
        };
        let bridge = net.bridge();
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net.gateway()),
                "dev",
                &bridge,
            ],
        );
        run("ip", &["link", "set", &bridge, "up"]);
        Some(net)
    }

    fn bridge(&self) -> String {
        format!("pgwb{}", self.subnet)
    }

    fn namespace(&self, i: usize) -> String {
        format!("pgw{}m{i}", self.subnet)
    }

    /// Member `i`'s namespace, as `nsenter --net=` takes it.
    pub fn ns_path(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(self.namespace(i))
    }

    /// The test's own address on the bridge: where the store listens and clients come from.
    pub fn gateway(&self) -> String {
        format!("10.213.{}.1", self.subnet)
    }

    /// Member `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, 10 + i)
    }

    /// One more namespace on the bridge: its index, for [`TestNet::addr`] and the rest.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts;
        // Counted first: a namespace half made is still deleted on drop.
        self.hosts = i + 1;
        self.make_host(
            &self.namespace(i),
            &format!("pgwv{}m{i}", self.subnet),
            &self.addr(i),
        );
        i
    }

    /// The store's own namespace, at [`TestNet::store_addr`]: the store runs apart from the
    /// members and the test, so a cut can separate a member from it and from nothing else.
    pub fn add_store_host(&mut self) {
        assert!(!self.store_host, "one store host per test net");
        self.store_host = true;
        self.make_host(
            &self.store_namespace(),
            &format!("pgwv{}s", self.subnet),
            &self.store_addr(),
        );
    }

    fn store_namespace(&self) -> String {
        format!("pgw{}s", self.subnet)
    }

    /// The store's namespace, as `nsenter --net=` takes it.
    pub fn store_ns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(self.store_namespace())
    }

    /// The store's address.
    pub fn store_addr(&self) -> String {
        format!("10.213.{}.2", self.subnet)
    }

    /// The namespace `ns` on the bridge at `addr`; its veth end on the bridge is `host_end`.
    fn make_host(&self, ns: &str, host_end: &str, addr: &str) {
        run("ip", &["netns", "add", ns]);
        run(
            "ip",
            &[
                "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        run("ip", &["link", "set", host_end, "master", &self.bridge()]);
        run("ip", &["link", "set", host_end, "up"]);
        let addr = format!("{addr}/24");
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        exec(&["ip", "addr", "add", &addr, "dev", "eth0"]);
        exec(&["ip", "link", "set", "eth0", "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
    }

    fn in_ns(&self, i: usize, cmd: &str, args: &[&str]) {
        let ns = self.namespace(i);
        let mut all = vec!["netns", "exec", ns.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Runs `iptables args` in member `i`'s namespace (a fault of the test's own choosing;
    /// [`TestNet::heal`] removes every rule).
    pub fn iptables(&self, i: usize, args: &[&str]) {
        self.in_ns(i, "iptables", args);
    }

    /// Member `i` cut off from everything on the network: every packet in or out of its
    /// namespace dropped, except, when `client_port` is given, TCP with the test's address on
    /// that port of the member (a client on the member's side of the partition).
    pub fn isolate(&self, i: usize, client_port: Option<u16>) {
        if let Some(p) = client_port {
            let (gw, p) = (self.gateway(), p.to_string());
            self.iptables(
                i,
                &[
                    "-A", "INPUT", "-i", "eth0", "-p", "tcp", "-s", &gw, "--dport", &p, "-j",
                    "ACCEPT",
                ],
            );
            self.iptables(
                i,
                &[
                    "-A", "OUTPUT", "-o", "eth0", "-p", "tcp", "-d", &gw, "--sport", &p, "-j",
                    "ACCEPT",
                ],
            );
        }
        self.iptables(i, &["-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
        self.iptables(i, &["-A", "OUTPUT", "-o", "eth0", "-j", "DROP"]);
    }

    /// Member `i` back on the network: its rules removed.
    pub fn heal(&self, i: usize) {
        self.iptables(i, &["-F"]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, its peer and its rules with it.
        let store = self.store_host.then(|| self.store_namespace());
        for ns in (0..self.hosts).map(|i| self.namespace(i)).chain(store) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}
