//! What a test sees of a cluster, whatever its store: the view of the test's observer, the
//! members' PostgreSQL and REST API, their logs, and waiting for the cluster to get somewhere.

use std::time::Duration;

use pgwarden::dcs::ClusterView;

use super::{Cluster, member_io};

impl Cluster {
    pub fn index(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .expect("known member")
    }

    pub async fn view(&self) -> Option<ClusterView> {
        self.observer.load(true).await.ok()
    }

    pub async fn leader(&self) -> Option<String> {
        self.view().await.and_then(|v| v.leader.map(|l| l.name))
    }

    /// The member's key says it runs as a replica streaming on `timeline`.
    pub async fn streaming_on(&self, name: &str, timeline: u64) -> bool {
        self.view()
            .await
            .is_some_and(|v| member_io::streaming_on(&v, name, timeline))
    }

    /// The member's key says it runs as a replica streaming on the cluster's timeline.
    pub async fn streaming(&self, name: &str) -> bool {
        self.view()
            .await
            .is_some_and(|v| member_io::streaming_on(&v, name, v.timeline()))
    }

    /// Waits for a healthy cluster: a leader, every other member streaming. The leader's
    /// index and the others'.
    pub async fn healthy(&self, timeout: Duration) -> (usize, Vec<usize>) {
        let leader = self
            .wait_for("a leader", timeout, || async { self.leader().await })
            .await;
        let l = self.index(&leader);
        let others: Vec<usize> = (0..self.members.len()).filter(|i| *i != l).collect();
        for &i in &others {
            let name = &self.members[i].name;
            self.wait_for(&format!("{name} streaming"), timeout, || async {
                self.streaming(name).await.then_some(())
            })
            .await;
        }
        (l, others)
    }

    /// Polls `check` until it returns `Some`, or fails the test with the members' logs.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        if let Some(v) = member_io::poll_until(timeout, Duration::from_millis(200), check).await {
            return v;
        }
        self.dump_logs();
        panic!(
            "timed out after {timeout:?} waiting for {what}; view: {:?}{}",
            self.view().await,
            self.store.diagnostics().await
        );
    }

    pub fn dump_logs(&self) {
        for (i, m) in self.members.iter().enumerate() {
            member_io::dump_log(&m.name, &self.log_path(i));
        }
    }

    pub async fn sql(&self, i: usize, sql: &str) -> Result<Vec<String>, String> {
        let m = &self.members[i];
        member_io::sql(&m.host, m.pg_port, sql).await
    }

    pub async fn api(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let m = &self.members[i];
        member_io::api(&self.http, &m.host, m.api_port, method, path, body).await
    }

    /// Whether member `i`'s PostgreSQL accepts a write now.
    pub async fn writable(&self, i: usize) -> bool {
        self.sql(
            i,
            "CREATE TABLE IF NOT EXISTS probe (x int); INSERT INTO probe VALUES (1)",
        )
        .await
        .is_ok()
    }

    /// Waits for a leader whose PostgreSQL takes writes; its index.
    pub async fn writable_leader(&self, timeout: Duration) -> usize {
        let leader = self
            .wait_for("a leader", timeout, || async { self.leader().await })
            .await;
        let l = self.index(&leader);
        self.wait_for(
            &format!("writes on the leader {leader}"),
            timeout,
            || async { self.writable(l).await.then_some(()) },
        )
        .await;
        l
    }
}
