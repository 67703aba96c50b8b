//! `docs/openapi.yaml` against a live two-member cluster: every answer of the main endpoints
//! (status code, content type, JSON body) is what the spec documents, on the leader and on a
//! replica; malformed and oversized bodies get 400/413 with a message; slow clients that dribble
//! a request byte by byte, or hold connections open without a word, do not starve `/health`.
//! Skipped outside CI when PostgreSQL or etcd is missing; fails in CI.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{Backend, Cluster, Timings};
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Timings = Timings {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 3,
};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    serde_norway::from_str(&text).expect("docs/openapi.yaml is YAML")
}

/// Follows `$ref: '#/a/b/c'` inside the spec.
fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = r
                .trim_start_matches("#/")
                .split('/')
                .fold(root, |node, key| &node[key]);
            assert!(!target.is_null(), "dangling $ref {r}");
            resolve(root, target)
        }
        None => v,
    }
}

/// The subset of OpenAPI 3.0 schema objects the spec uses: `type` (+ `nullable`), `enum`,
/// `properties`, `required`, `additionalProperties`, `items`, `minItems`, `minimum`, `oneOf`.
/// Pushes one message per violation, naming where it is.
fn check(root: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let s = resolve(root, schema);
    if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
        let ok = alts
            .iter()
            .filter(|a| {
                let mut e = Vec::new();
                check(root, a, v, at, &mut e);
                e.is_empty()
            })
            .count();
        if ok != 1 {
            errs.push(format!("{at}: {ok} oneOf alternatives match {v}"));
        }
        return;
    }
    if v.is_null() {
        if s.get("type").is_some() && s["nullable"] != Value::Bool(true) {
            errs.push(format!("{at}: null is not allowed"));
        }
        return;
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let fits = match t {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        };
        if !fits {
            errs.push(format!("{at}: expected {t}, got {v}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!("{at}: {v} is not one of {e:?}"));
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        errs.push(format!("{at}: {n} < minimum {min}"));
    }
    if let Some(a) = v.as_array() {
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && (a.len() as u64) < min
        {
            errs.push(format!("{at}: fewer than {min} items"));
        }
        if let Some(items) = s.get("items") {
            for (i, x) in a.iter().enumerate() {
                check(root, items, x, &format!("{at}[{i}]"), errs);
            }
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap_or_default();
            if !o.contains_key(r) {
                errs.push(format!("{at}: required field {r} missing"));
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, x, &format!("{at}.{k}"), errs),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errs.push(format!("{at}: undocumented field {k}"));
                    }
                    Some(extra @ Value::Object(_)) => {
                        check(root, extra, x, &format!("{at}.{k}"), errs);
                    }
                    _ => {}
                },
            }
        }
    }
}

/// A real answer checked against the spec's operation `method path`: the status code is
/// documented; so is the content type; a JSON body fits the schema.
fn conforms(root: &Value, method: &Method, path: &str, code: u16, ctype: &str, body: &str) {
    let op = &root["paths"][path][method.as_str().to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the spec");
    let resp = &op["responses"][code.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {code}, which the spec does not document: {body}"
    );
    let resp = resolve(root, resp);
    let Some(content) = resp.get("content").and_then(Value::as_object) else {
        assert!(
            body.is_empty(),
            "{method} {path} {code}: a body the spec does not document: {body}"
        );
        return;
    };
    let media = content
        .get(ctype)
        .or_else(|| content.get(ctype.split(';').next().unwrap_or_default()))
        .unwrap_or_else(|| {
            panic!(
                "{method} {path} {code}: content type {ctype:?} not in {:?}",
                content.keys()
            )
        });
    if ctype.starts_with("application/json") {
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{method} {path}: invalid JSON ({e}): {body}"));
        let mut errs = Vec::new();
        check(root, &media["schema"], &v, "body", &mut errs);
        assert!(errs.is_empty(), "{method} {path} {code}: {errs:#?}\n{body}");
    }
}

async fn call(
    http: &reqwest::Client,
    port: u16,
    method: Method,
    path: &str,
    body: Option<String>,
) -> (u16, String, String) {
    let mut rq = http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        rq = rq.header("content-type", "application/json").body(b);
    }
    let r = rq.send().await.expect("request");
    let code = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (code, ctype, r.text().await.unwrap_or_default())
}

const GETS: &[&str] = &[
    "/patroni",
    "/cluster",
    "/history",
    "/config",
    "/failsafe",
    "/metrics",
    "/liveness",
    "/readiness",
    "/",
    "/primary",
    "/leader",
    "/standby-leader",
    "/replica",
    "/read-only",
    "/health",
    "/sync",
    "/async",
    "/quorum",
    "/read-only-sync",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_match_the_openapi_spec() {
    let root = spec();
    let Some(c) = Cluster::start(Backend::Etcd, "openapi", 2, T).await else {
        return;
    };
    let long = Duration::from_secs(120);
    let leader = c
        .wait_for("a leader", long, || async { c.leader().await })
        .await;
    c.wait_for("a streaming replica", long, || async {
        let v = c.view().await?;
        v.members
            .values()
            .any(|m| m.replication_state.as_deref() == Some("streaming"))
            .then_some(())
    })
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let li = c.index(&leader);
    let ports: Vec<u16> = c.members.iter().map(|m| m.api_port).collect();

    // Every main GET on both members, and HEAD/OPTIONS of the health checks.
    for &port in &ports {
        for path in GETS {
            let (code, ctype, body) = call(&http, port, Method::GET, path, None).await;
            conforms(&root, &Method::GET, path, code, &ctype, &body);
        }
        for path in ["/primary", "/replica", "/health", "/read-only"] {
            for m in [Method::HEAD, Method::OPTIONS] {
                let (code, ctype, body) = call(&http, port, m.clone(), path, None).await;
                conforms(&root, &m, path, code, &ctype, &body);
            }
        }
    }
    let (code, ..) = call(&http, ports[li], Method::OPTIONS, "/primary", None).await;
    assert_eq!(code, 200, "OPTIONS /primary on the leader");
    let (code, ..) = call(&http, ports[1 - li], Method::OPTIONS, "/primary", None).await;
    assert_eq!(code, 503, "OPTIONS /primary on the replica");

    // Writes that change nothing, checked against the spec too.
    let (code, ctype, body) = call(
        &http,
        ports[li],
        Method::PATCH,
        "/config",
        Some(r#"{"postgresql":{"parameters":{"work_mem":"8MB"}}}"#.into()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    conforms(&root, &Method::PATCH, "/config", code, &ctype, &body);
    let (code, ctype, body) = call(&http, ports[li], Method::DELETE, "/restart", None).await;
    assert_eq!(code, 404, "{body}");
    conforms(&root, &Method::DELETE, "/restart", code, &ctype, &body);
    let (code, ctype, body) = call(&http, ports[li], Method::DELETE, "/switchover", None).await;
    conforms(&root, &Method::DELETE, "/switchover", code, &ctype, &body);
    let (code, ctype, body) = call(
        &http,
        ports[li],
        Method::POST,
        "/switchover",
        Some(format!(r#"{{"leader":"{leader}","candidate":"nobody"}}"#)),
    )
    .await;
    assert_eq!(code, 412, "{body}");
    conforms(&root, &Method::POST, "/switchover", code, &ctype, &body);

    // Malformed and oversized bodies: 400/413 with a message, as documented.
    let bad: &[(Method, &str, String, u16)] = &[
        (Method::POST, "/switchover", "{not json".into(), 400),
        (Method::POST, "/failover", "[1,2]".into(), 400),
        (Method::PATCH, "/config", "\"a string\"".into(), 400),
        (Method::PUT, "/config", "{}".into(), 400),
        (Method::POST, "/restart", "{\u{0}".into(), 400),
        (
            Method::POST,
            "/switchover",
            format!(r#"{{"leader":"{}"}}"#, "x".repeat(70_000)),
            413,
        ),
    ];
    for (m, path, body, want) in bad {
        let (code, ctype, text) = call(&http, ports[li], m.clone(), path, Some(body.clone())).await;
        assert_eq!(code, *want, "{m} {path}: {text}");
        assert!(text.contains("Message:"), "{m} {path}: no message: {text}");
        conforms(&root, m, path, code, &ctype, &text);
    }
    // A huge declared body is refused from its headers, before it is sent (a client writing it
    // all would see its connection closed mid-body).
    let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", ports[li]))
        .await
        .unwrap();
    s.write_all(
        b"PATCH /config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100000000\r\n\r\n{\"k\":\"xxxx",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut head))
        .await
        .expect("an answer before the body")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(
        head.starts_with("HTTP/1.1 413") && head.contains("larger than"),
        "{head}"
    );
    drop(s);
    // GET /config answers from the agent's cached view: the PATCH shows up within a cycle,
    // and no bad request undid it.
    c.wait_for(
        "the patched config, unchanged by the bad requests",
        long,
        || async {
            let (code, _, text) = call(&http, ports[li], Method::GET, "/config", None).await;
            (code == 200 && text.contains("work_mem")).then_some(())
        },
    )
    .await;

    // Slow clients: 4 connections dribble a request one byte every 300 ms, 64 more are open
    // and silent; `/health` keeps answering meanwhile (generous bound: 5 s per request).
    let addr = format!("127.0.0.1:{}", ports[li]);
    let mut hogs = Vec::new();
    for _ in 0..64 {
        hogs.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut dribblers = Vec::new();
    for _ in 0..4 {
        let addr = addr.clone();
        dribblers.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            for b in b"GET /patroni HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n" {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    for _ in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            call(&http, ports[li], Method::GET, "/health", None),
        )
        .await
        .expect("/health answers while slow clients hold connections");
        assert_eq!(r.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for d in dribblers {
        d.abort();
    }
    drop(hogs);
}

/// The checker itself finds what it should (a silent checker would pass anything).
#[test]
fn the_checker_rejects_what_the_spec_forbids() {
    let root = spec();
    let status = serde_json::json!({"$ref": "#/components/schemas/Status"});
    let errors = |v: Value| {
        let mut e = Vec::new();
        check(&root, &status, &v, "body", &mut e);
        e
    };
    let good = serde_json::json!({"state": "running", "role": "primary", "dcs_last_seen": 1,
        "xlog": {"location": 5}, "patroni": {"version": "1", "scope": "s", "name": "n"}});
    assert_eq!(errors(good.clone()), Vec::<String>::new());
    let mut extra = good.clone();
    extra["surprise"] = Value::Bool(true);
    assert!(errors(extra)[0].contains("undocumented field surprise"));
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("patroni");
    assert!(errors(missing)[0].contains("required field patroni"));
    let mut wrong = good;
    wrong["xlog"]["location"] = Value::String("5".into());
    assert!(errors(wrong)[0].contains("expected integer"));
}
