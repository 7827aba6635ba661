//! `docqa serve` under attack, through the real binary on loopback: every
//! request's work is bounded, connections cannot starve the server, the
//! browser cannot be used against it, and roles hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::blocking::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::json;

mod common;
use common::server::{body, client, error, metric_as, wait_job, Server};
use common::{docqa, index_sample};

/// CPU seconds the process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Resident memory of the process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// A raw request; returns the status line's code (0 when the connection closed).
fn raw(s: &Server, request: &str) -> (u16, String) {
    let mut sock = TcpStream::connect(addr(s)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    sock.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[test]
fn every_request_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let s = Server::start(
        &idx,
        &[
            "--request-timeout",
            "2",
            "--max-body",
            "4M",
            "--header-timeout",
            "2",
        ],
    );
    let c = client();
    let index_path = idx.canonicalize().unwrap().display().to_string();

    // Huge queries: refused at once with the limit named, on every route.
    for size in [273_000, 960_000] {
        let q = "magpie grid survey ".repeat(size / 19);
        let t0 = Instant::now();
        let (st, m) = error(
            c.post(s.at("/v1/search"))
                .json(&json!({"query": q}))
                .send()
                .unwrap(),
        );
        assert_eq!(st, 400, "{m}");
        assert!(m.contains("8192"), "{m}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let (st, _) = error(
            c.post(s.at("/v1/query"))
                .json(&json!({"question": q, "max_tokens": 1}))
                .send()
                .unwrap(),
        );
        assert_eq!(st, 400);
        let (st, _) = error(
            c.post(s.at("/v1/chat/completions"))
                .json(&json!({"messages": [{"role": "user", "content": q}], "max_tokens": 1}))
                .send()
                .unwrap(),
        );
        assert_eq!(st, 400);
    }
    // Too many distinct words, under the byte cap.
    let words: Vec<String> = (0..400).map(|i| format!("w{i}q")).collect();
    let (st, m) = error(
        c.post(s.at("/v1/search"))
            .json(&json!({"query": words.join(" "), "mode": "bm25"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 400);
    assert!(m.contains("distinct terms"), "{m}");
    // A 200,000-alternative filter: refused quickly.
    let alts = vec!["x"; 200_000].join("|");
    let t0 = Instant::now();
    let (st, m) = error(
        c.post(s.at("/v1/search"))
            .json(&json!({"query": "grid", "filter": format!("doc={alts}")}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 400);
    assert!(m.contains("at most"), "{m}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Filter values may hold `<` and `>`.
    let (st, v) = body(
        c.post(s.at("/v1/search"))
            .json(&json!({"query": "grid", "filter": "meta.title=a<b>c"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hits"].as_array().unwrap().len(), 0, "{v}");

    // Embeddings: a request past its deadline stops working (its 504 means
    // it), and at most two run at once.
    let input: Vec<String> = (0..512)
        .map(|i| format!("{i} {}", "magpies gather shiny things ".repeat(73)))
        .collect();
    let pid = s.child.id();
    let url = s.at("/v1/embeddings");
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let (url, input) = (url.clone(), input.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150 * i));
                client()
                    .post(url)
                    .json(&json!({"input": input}))
                    .send()
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let statuses: Vec<StatusCode> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.contains(&StatusCode::GATEWAY_TIMEOUT),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let busy = cpu_seconds(pid) - before;
    assert!(
        busy < 0.5,
        "the server kept working after the 504: {busy:.2} CPU s in 2 s"
    );

    // /metrics does not grow with made-up methods.
    let m0 = c
        .get(s.at("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
        .len();
    for i in 0..3000 {
        let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
        let _ = c.request(method, s.at("/v1/search")).send().unwrap();
    }
    let m1 = c.get(s.at("/metrics")).send().unwrap().text().unwrap();
    assert!(m1.len() < m0 + 4096, "{} -> {} bytes", m0, m1.len());
    assert!(m1.contains("method=\"other\""), "{m1}");

    // Upload names: bytes, not characters; long extensions; no server path.
    let zh_name = format!("{}.md", "喜鹊".repeat(50));
    let form = Form::new().part(
        "file",
        Part::text("# 喜鹊\n\n喜鹊在高树上筑巢。").file_name(zh_name),
    );
    let (st, v) = body(
        c.post(s.at("/v1/documents"))
            .multipart(form)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 202, "{v}");
    let job = wait_job(&c, &s, v["id"].as_str().unwrap());
    assert_eq!(job["status"], "done", "{job}");
    for name in [format!("a.{}", "x".repeat(300)), "b".repeat(400)] {
        let form = Form::new().part("file", Part::text("some text").file_name(name.clone()));
        let r = c
            .post(s.at("/v1/documents"))
            .multipart(form)
            .send()
            .unwrap();
        let st = r.status();
        let text = r.text().unwrap();
        assert!(st == 202 || st == 400, "{name}: {st} {text}");
        assert!(!text.contains(&index_path), "{text}");
    }

    // Half-sent request heads are closed at the header timeout; so is an
    // idle kept-alive connection.
    let mut held: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut t = TcpStream::connect(addr(&s)).unwrap();
            t.write_all(b"GET /healthz HTTP/1.1\r\nHost: x").unwrap();
            t
        })
        .collect();
    let mut idle = TcpStream::connect(addr(&s)).unwrap();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", addr(&s)).as_bytes())
        .unwrap();
    let mut first = [0u8; 512];
    assert!(idle.read(&mut first).unwrap() > 0);
    held.push(idle);
    let t0 = Instant::now();
    for t in &mut held {
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Closed: EOF (or a reset), never a timeout. Whatever came before
        // the end (an error response) is read to the end.
        let mut rest = Vec::new();
        if let Err(e) = t.read_to_end(&mut rest) {
            assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "a connection stayed open: {e}"
            );
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    let (st, _) = body(c.get(s.at("/healthz")).send().unwrap());
    assert_eq!(st, 200);
    assert!(s.stop().success());
}

#[test]
fn browsers_and_roles_cannot_be_turned_against_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);

    // A key-less server on loopback.
    let s = Server::start(&idx, &["--cors-origin", "https://app.example.org"]);
    let c = client();
    let count = |c: &reqwest::blocking::Client| {
        body(c.get(s.at("/v1/documents")).send().unwrap()).1["count"]
            .as_u64()
            .unwrap()
    };
    let docs = count(&c);
    // A cross-site form post (a CORS "simple" request) from a page the
    // operator happens to open: refused, nothing added.
    let form = Form::new().part(
        "file",
        Part::text("Injected content.").file_name("evil.txt"),
    );
    let (st, m) = error(
        c.post(s.at("/v1/documents"))
            .header("origin", "https://evil.example")
            .multipart(form)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403, "{m}");
    let (st, _) = error(
        c.post(s.at("/v1/search"))
            .header("sec-fetch-site", "cross-site")
            .json(&json!({"query": "grid"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403);
    assert_eq!(count(&c), docs);
    // DNS rebinding: a foreign name in Host.
    let (code, text) = raw(
        &s,
        "GET /v1/documents HTTP/1.1\r\nHost: rebind.attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 421, "{text}");
    // The same origin, and a configured CORS origin, work.
    let (st, _) = body(
        c.post(s.at("/v1/search"))
            .header("origin", s.url.clone())
            .json(&json!({"query": "grid"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    let r = c
        .request(Method::OPTIONS, s.at("/v1/search"))
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    let r = c
        .post(s.at("/v1/search"))
        .header("origin", "https://app.example.org")
        .json(&json!({"query": "grid"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    // /readyz says ready and nothing else.
    let (_, v) = body(c.get(s.at("/readyz")).send().unwrap());
    assert_eq!(v, json!({"status": "ready"}));
    drop(s);

    // With keys: the scheme's case, roles for tools, /readyz's details.
    let read = "read-key-0123456789abcdef";
    let admin = "admin-key-0123456789abcdef";
    let s = Server::start(
        &idx,
        &[
            "--read-keys",
            read,
            "--admin-keys",
            admin,
            "--rate-limit",
            "20",
        ],
    );
    let (st, _) = body(
        c.post(s.at("/v1/search"))
            .header("authorization", format!("bearer {read}"))
            .json(&json!({"query": "grid"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    let (st, m) = error(
        c.post(s.at("/v1/query"))
            .bearer_auth(read)
            .json(&json!({"question": "what is 2 * 3?", "tools": true, "max_tokens": 4}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403);
    assert!(m.contains("admin"), "{m}");
    let (_, v) = body(c.get(s.at("/readyz")).send().unwrap());
    assert_eq!(v, json!({"status": "ready"}));
    let (_, v) = body(c.get(s.at("/readyz")).bearer_auth(read).send().unwrap());
    assert!(v["documents"].as_u64().unwrap() >= 5, "{v}");
    // The per-address rate: a burst beyond it gets 429 with Retry-After.
    let mut limited = None;
    for _ in 0..100 {
        let r = c.get(s.at("/healthz")).send().unwrap();
        if r.status() == 429 {
            limited = Some(r.headers()["retry-after"].to_str().unwrap().to_string());
            break;
        }
    }
    let wait: u64 = limited.expect("no 429 in 100 requests").parse().unwrap();
    assert!(wait >= 1);
    assert!(s.stop().success());
}

/// Raise this test process's open-files limit (it holds many sockets).
fn raise_own_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in, plain struct out.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn a_connection_flood_does_not_starve_the_server() {
    use std::os::unix::process::CommandExt;
    raise_own_fd_limit();
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let key = "admin-key-0123456789abcdef";
    // The server runs with 1,024 descriptors, soft and hard.
    let mut cmd = docqa(&idx);
    cmd.args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--header-timeout",
        "3",
        "--admin-keys",
        key,
    ]);
    // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let s = Server::spawn(cmd);
    // 1,100 connections that send half a request head and wait, without a key.
    let mut flood = Vec::new();
    for _ in 0..1100 {
        match TcpStream::connect(addr(&s)) {
            Ok(mut t) => {
                let _ = t.write_all(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-");
                flood.push(t);
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }
    // The server answers a probe and an authorised search within the header
    // timeout and a margin, while the flood is still held open by the client.
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let ok = loop {
        match c.get(s.at("/healthz")).send() {
            Ok(r) if r.status() == 200 => break true,
            _ if t0.elapsed() > Duration::from_secs(15) => break false,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(ok, "/healthz did not answer within 15 s of the flood");
    let (st, _) = body(
        c.post(s.at("/v1/search"))
            .bearer_auth(key)
            .json(&json!({"query": "grid"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    let m = c
        .get(s.at("/metrics"))
        .bearer_auth(key)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("docqa_connections_open"), "{m}");
    drop(flood);
    assert!(s.stop().success());
}

/// 20,000 seeded requests, valid and hostile, at bounded concurrency against
/// one server: each gets the status its kind must get, none takes longer than
/// the request timeout, memory stays bounded, the server still answers, and
/// every acknowledged upload is indexed exactly once.
#[test]
fn a_soak_of_valid_and_hostile_requests() {
    use common::soak::{run, Target};
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let read = "read-key-0123456789abcdef";
    let admin = "admin-key-0123456789abcdef";
    let timeout = Duration::from_secs(10);
    let s = Server::start(
        &idx,
        &[
            "--read-keys",
            read,
            "--admin-keys",
            admin,
            "--request-timeout",
            "10",
            "--header-timeout",
            "3",
        ],
    );
    let t = Target {
        url: s.url.clone(),
        read_key: read.into(),
        admin_key: admin.into(),
    };
    let c = client();
    let docs = |c: &reqwest::blocking::Client| {
        body(
            c.get(s.at("/v1/documents"))
                .bearer_auth(admin)
                .send()
                .unwrap(),
        )
        .1["count"]
            .as_u64()
            .unwrap() as usize
    };
    let before = docs(&c);
    let total: usize = std::env::var("DOCQA_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let pid = s.child.id();
    // Warm up (models paged in, buffers grown), then measure memory growth.
    let warm = run(&t, 500, 8, 7, timeout);
    let rss_warm = rss(pid);
    let main = run(&t, total - 500, 8, 42, timeout);
    eprintln!(
        "soak: {} requests in {:.1} s, slowest {:.2} s, {} uploads acknowledged, RSS {} -> {} MiB",
        warm.requests + main.requests,
        (warm.elapsed + main.elapsed).as_secs_f64(),
        warm.slowest.max(main.slowest).as_secs_f64(),
        warm.uploads_acknowledged + main.uploads_acknowledged,
        rss_warm >> 20,
        rss(pid) >> 20
    );
    for r in [&warm, &main] {
        assert!(
            r.failed.is_empty(),
            "no answer: {:?}",
            &r.failed[..r.failed.len().min(5)]
        );
        assert!(
            r.wrong.is_empty(),
            "wrong statuses: {:?}",
            &r.wrong[..r.wrong.len().min(5)]
        );
        assert!(
            r.slowest <= timeout + Duration::from_secs(3),
            "slowest {:?}",
            r.slowest
        );
    }
    assert_eq!(warm.requests + main.requests, total);
    // Every acknowledged upload is indexed, once.
    let acked = warm.uploads_acknowledged + main.uploads_acknowledged;
    assert!(acked > 0);
    let t0 = Instant::now();
    loop {
        let gauge = |name: &str| metric_as(&c, &s, Some(read), name);
        if gauge("docqa_indexing_jobs_queued") == 0.0 && gauge("docqa_indexing_jobs_running") == 0.0
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "indexing did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(docs(&c), before + acked);
    let grown = rss(pid).saturating_sub(rss_warm);
    assert!(grown < 300 << 20, "RSS grew by {} MiB", grown >> 20);
    let (st, _) = body(
        c.post(s.at("/v1/search"))
            .bearer_auth(read)
            .json(&json!({"query": "soak note observer"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    assert!(s.stop().success());
}
