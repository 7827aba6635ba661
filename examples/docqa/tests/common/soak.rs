//! A seeded generator of valid and hostile requests against a running
//! `docqa serve` (keys required), checking each answer's status against
//! what that kind of request must get. Used by the soak test and by
//! `cargo run --example soak` for the benchmark that runs it beside a load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::json;

/// Where to send, with which keys.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub read_key: String,
    pub admin_key: String,
}

/// What a soak run saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub requests: usize,
    /// Requests whose status was not one their kind allows: (kind, status, body).
    pub wrong: Vec<(String, u16, String)>,
    /// Transport failures (no answer at all).
    pub failed: Vec<String>,
    /// The slowest answer.
    pub slowest: Duration,
    /// Uploads the server acknowledged (202).
    pub uploads_acknowledged: usize,
    pub elapsed: Duration,
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "survey", "grid", "magpie", "nest", "species", "index", "search", "model", "the", "how",
    "large", "can", "grow", "喜鹊", "筑巢", "token", "window", "plugin", "vector", "keyword",
];

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// One request: its kind, the statuses it may get, and how to send it.
fn one(
    c: &Client,
    t: &Target,
    rng: &mut Rng,
    seq: usize,
) -> (String, Vec<u16>, reqwest::Result<(u16, String)>) {
    let at = |p: &str| format!("{}{p}", t.url);
    let roll = rng.below(100);
    let send = |rb: reqwest::blocking::RequestBuilder| {
        rb.send().and_then(|r| {
            let st = r.status().as_u16();
            r.text().map(|b| (st, b))
        })
    };
    let (kind, ok, r): (&str, Vec<u16>, _) = match roll {
        0..=39 => {
            let n = 1 + rng.below(6) as usize;
            let q = words(rng, n);
            let k = 1 + rng.below(20);
            let mode = ["hybrid", "dense", "bm25"][rng.below(3) as usize];
            (
                "search",
                vec![200],
                send(
                    c.post(at("/v1/search"))
                        .bearer_auth(&t.read_key)
                        .json(&json!({"query": q, "k": k, "mode": mode})),
                ),
            )
        }
        40..=44 => {
            let q = words(rng, 2);
            (
                "search-get",
                vec![200],
                send(
                    c.get(at("/v1/search"))
                        .bearer_auth(&t.read_key)
                        .query(&[("q", q.as_str()), ("k", "3")]),
                ),
            )
        }
        45..=47 => (
            "search-filter",
            vec![200],
            send(c.post(at("/v1/search")).bearer_auth(&t.read_key).json(
                &json!({"query": "grid", "filter": ["source=nothing.md|a<b", "meta.year>=2000"]}),
            )),
        ),
        48..=51 => (
            "no-key",
            vec![401],
            send(c.post(at("/v1/search")).json(&json!({"query": "grid"}))),
        ),
        52..=54 => (
            "wrong-key",
            vec![401],
            send(
                c.get(at("/v1/documents"))
                    .bearer_auth("not-a-key-0123456789abcdef"),
            ),
        ),
        55..=58 => (
            "bad-json",
            vec![400, 415, 422],
            send(
                c.post(at("/v1/search"))
                    .bearer_auth(&t.read_key)
                    .header("content-type", "application/json")
                    .body("{\"query\": "),
            ),
        ),
        59..=61 => {
            let q = "x".repeat(9_000 + rng.below(60_000) as usize);
            (
                "huge-query",
                vec![400],
                send(
                    c.post(at("/v1/search"))
                        .bearer_auth(&t.read_key)
                        .json(&json!({"query": q})),
                ),
            )
        }
        62..=63 => {
            let q: Vec<String> = (0..300)
                .map(|i| format!("t{i}z{}", rng.below(1000)))
                .collect();
            (
                "many-terms",
                vec![400],
                send(
                    c.post(at("/v1/search"))
                        .bearer_auth(&t.read_key)
                        .json(&json!({"query": q.join(" "), "mode": "bm25"})),
                ),
            )
        }
        64..=66 => (
            "bad-filter",
            vec![400],
            send(
                c.post(at("/v1/search"))
                    .bearer_auth(&t.read_key)
                    .json(&json!({"query": "grid", "filter": "year=>x"})),
            ),
        ),
        67..=69 => (
            "no-route",
            vec![404],
            send(
                c.get(at(&format!("/v1/nothing/{}", rng.below(1 << 20))))
                    .bearer_auth(&t.read_key),
            ),
        ),
        70..=72 => {
            let m = Method::from_bytes(format!("M{}", rng.below(100_000)).as_bytes()).unwrap();
            (
                "odd-method",
                vec![405, 404],
                send(c.request(m, at("/v1/search")).bearer_auth(&t.read_key)),
            )
        }
        73..=75 => (
            "foreign-host",
            vec![421],
            send(
                c.get(at("/healthz"))
                    .header("host", "rebind.attacker.example"),
            ),
        ),
        76..=78 => (
            "foreign-origin",
            vec![403],
            send(
                c.post(at("/v1/documents"))
                    .bearer_auth(&t.admin_key)
                    .header("origin", "https://evil.example")
                    .json(&json!({"text": "injected", "name": "evil.txt"})),
            ),
        ),
        79..=83 => {
            let p = ["/healthz", "/readyz", "/metrics", "/v1/models"][rng.below(4) as usize];
            (
                "probe",
                vec![200],
                send(c.get(at(p)).bearer_auth(&t.read_key)),
            )
        }
        84..=87 => {
            let n = 1 + rng.below(4) as usize;
            let input: Vec<String> = (0..n).map(|_| words(rng, 5)).collect();
            (
                "embeddings",
                vec![200, 429],
                send(
                    c.post(at("/v1/embeddings"))
                        .bearer_auth(&t.read_key)
                        .json(&json!({"input": input})),
                ),
            )
        }
        88..=90 => (
            "read-writes",
            vec![403],
            send(
                c.post(at("/v1/documents"))
                    .bearer_auth(&t.read_key)
                    .json(&json!({"text": "x", "name": "x.txt"})),
            ),
        ),
        91..=92 => (
            "read-tools",
            vec![403],
            send(
                c.post(at("/v1/query"))
                    .bearer_auth(&t.read_key)
                    .json(&json!({"question": "2+2?", "tools": true})),
            ),
        ),
        93..=94 => {
            let name = format!("soak-{seq}.md");
            let text = format!(
                "# Soak note {seq}\n\nObserver {seq} counted {} magpies in grid square {}.",
                rng.below(50),
                rng.below(400)
            );
            (
                "upload",
                vec![202],
                send(
                    c.post(at("/v1/documents"))
                        .bearer_auth(&t.admin_key)
                        .json(&json!({"text": text, "name": name})),
                ),
            )
        }
        95..=96 => (
            "bad-upload",
            vec![400, 413, 415],
            send(c.post(at("/v1/documents")).bearer_auth(&t.admin_key).json(
                &json!({"text": "", "name": format!("{}.{}", "名".repeat(90), "e".repeat(200))}),
            )),
        ),
        _ => (
            "bad-k",
            vec![400],
            send(
                c.post(at("/v1/search"))
                    .bearer_auth(&t.read_key)
                    .json(&json!({"query": "grid", "k": 100_000})),
            ),
        ),
    };
    (kind.to_string(), ok, r)
}

/// Send `n` requests from `workers` threads; `timeout` is the server's
/// request timeout (no answer may take longer than it and a margin).
pub fn run(t: &Target, n: usize, workers: usize, seed: u64, timeout: Duration) -> SoakReport {
    let next = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(SoakReport::default()));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (t, next, report) = (t.clone(), next.clone(), report.clone());
            std::thread::spawn(move || {
                let c = Client::builder()
                    .timeout(timeout + Duration::from_secs(20))
                    .build()
                    .unwrap();
                let mut rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t1 = Instant::now();
                    let (kind, ok, r) = one(&c, &t, &mut rng, i);
                    let took = t1.elapsed();
                    let mut rep = report.lock().unwrap();
                    rep.requests += 1;
                    rep.slowest = rep.slowest.max(took);
                    match r {
                        Ok((st, body)) => {
                            if kind == "upload" && st == 202 {
                                rep.uploads_acknowledged += 1;
                            }
                            if !ok.contains(&st) {
                                let body: String = body.chars().take(300).collect();
                                rep.wrong.push((kind, st, body));
                            }
                        }
                        Err(e) => rep.failed.push(format!("{kind}: {e}")),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut rep = std::mem::take(&mut *report.lock().unwrap());
    rep.elapsed = t0.elapsed();
    rep
}
