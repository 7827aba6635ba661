//! `docqa serve` as an operator runs it: the real binary, real models, real
//! stores, spoken to over HTTP on loopback.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;
use common::server::{body, client, error, wait_job, Server};
use common::{docqa, index_sample, models_dir, root};

/// Server-sent events as (event name, data) pairs.
fn sse_events(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = "message".to_string();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if !data.is_empty() {
            out.push((event, data));
        }
    }
    out
}

/// POST a multipart upload of `size` bytes over a raw socket; the response as text.
fn raw_upload(s: &Server, name: &str, size: usize) -> String {
    use std::io::Write;
    let addr = s.url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let boundary = "magpieboundary";
    let pre = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    );
    let post = format!("\r\n--{boundary}--\r\n");
    let len = pre.len() + size + post.len();
    let head = format!(
        "POST /v1/documents HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; \
         boundary={boundary}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{pre}"
    );
    sock.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        if sock.write_all(&chunk).is_err() {
            break; // the server closed its side after answering
        }
        sent += chunk.len();
    }
    let _ = sock.write_all(post.as_bytes());
    let mut out = Vec::new();
    let _ = sock.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const HERONS: &str = "The grey heron nests in colonies called heronries, high in tall trees \
near water. A heronry can hold dozens of nests, reused year after year.";

#[test]
fn the_api_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let s = Server::start(&idx, &["--max-body", "64K", "--max-upload", "256K"]);
    let c = client();

    let (st, v) = body(c.get(s.at("/healthz")).send().unwrap());
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    // The probe says ready and nothing else (no key can be given here).
    let (st, v) = body(c.get(s.at("/readyz")).send().unwrap());
    assert_eq!(st, 200);
    assert_eq!(v, json!({"status": "ready"}));
    let (_, v) = body(c.get(s.at("/v1/documents")).send().unwrap());
    let docs_before = v["count"].as_u64().unwrap();
    assert!(docs_before >= 5, "{v}");
    let (_, api) = body(c.get(s.at("/openapi.json")).send().unwrap());
    for p in ["/v1/query", "/v1/chat/completions", "/v1/documents/{id}"] {
        assert!(
            api["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    let page = c.get(s.at("/")).send().unwrap().text().unwrap();
    assert!(page.contains("<title>docqa</title>"));

    // Add a document as JSON; it is indexed in the background.
    let r = c
        .post(s.at("/v1/documents"))
        .json(&json!({"text": HERONS, "title": "Heron notes", "name": "herons", "format": "markdown"}))
        .send()
        .unwrap();
    let (st, job) = body(r);
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let done = wait_job(&c, &s, job["id"].as_str().unwrap());
    assert_eq!(done["status"], "done", "{done}");
    let heron_id = done["document_id"].as_str().unwrap().to_string();
    let (st, d) = body(
        c.get(s.at(&format!("/v1/documents/{heron_id}")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    assert_eq!(d["source"], "herons.md");
    assert_eq!(d["title"], "Heron notes");

    // And a multipart upload.
    let form = reqwest::blocking::multipart::Form::new().part(
        "file",
        reqwest::blocking::multipart::Part::bytes(
            b"Lighthouse keepers wound the clockwork lamp every four hours.".to_vec(),
        )
        .file_name("lighthouse.txt"),
    );
    let (st, job) = body(
        c.post(s.at("/v1/documents"))
            .multipart(form)
            .send()
            .unwrap(),
    );
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    assert_eq!(
        wait_job(&c, &s, job["id"].as_str().unwrap())["status"],
        "done"
    );
    let (_, list) = body(c.get(s.at("/v1/documents")).send().unwrap());
    assert_eq!(list["count"].as_u64().unwrap(), docs_before + 2, "{list}");

    // Search, by POST and GET, in each mode.
    let (st, v) = body(
        c.post(s.at("/v1/search"))
            .json(&json!({"query": "where do grey herons nest?", "k": 3}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hits"][0]["source"], "herons.md", "{v}");
    assert_eq!(v["hits"].as_array().unwrap().len(), 3);
    for mode in ["bm25", "dense"] {
        let (st, v) = body(
            c.get(s.at("/v1/search"))
                .query(&[
                    ("q", "clockwork lamp lighthouse"),
                    ("mode", mode),
                    ("k", "2"),
                ])
                .send()
                .unwrap(),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["mode"], mode);
        assert_eq!(v["hits"][0]["source"], "lighthouse.txt", "{mode}: {v}");
    }
    // Filters: a list in JSON, `;`-separated in a query string; a bad clause is a 400.
    let (st, v) = body(
        c.post(s.at("/v1/search"))
            .json(&json!({"query": "where do grey herons nest?", "k": 5, "filter": ["source=lighthouse.txt"]}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    let hits = v["hits"].as_array().unwrap();
    assert!(
        !hits.is_empty() && hits.iter().all(|h| h["source"] == "lighthouse.txt"),
        "{v}"
    );
    let (st, v) = body(
        c.get(s.at("/v1/search"))
            .query(&[
                ("q", "herons"),
                ("filter", "source=herons.md;meta.title=No such title"),
            ])
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hits"].as_array().unwrap().len(), 0, "{v}");
    let (st, v) = body(
        c.post(s.at("/v1/search"))
            .json(&json!({"query": "herons", "filter": "colour=grey"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("meta.NAME"), "{v}");

    // An answer, whole.
    let q = json!({"question": "Where do grey herons nest?", "temperature": 0, "max_tokens": 24});
    let (st, a) = body(c.post(s.at("/v1/query")).json(&q).send().unwrap());
    assert_eq!(st, 200, "{a}");
    assert!(!a["text"].as_str().unwrap().trim().is_empty(), "{a}");
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(
        a["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source"] == "herons.md"),
        "{a}"
    );
    // The same, streamed: sources, tokens, then the whole answer.
    let mut q2 = q.clone();
    q2["stream"] = json!(true);
    let r = c.post(s.at("/v1/query")).json(&q2).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&r.text().unwrap());
    assert_eq!(events[0].0, "sources", "{events:?}");
    let tokens: String = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "answer", "{events:?}");
    let streamed: Value = serde_json::from_str(data).unwrap();
    assert!(!tokens.is_empty());
    // The tokens add up to the answer the stream ends with. (Not compared with
    // the first answer's words: the second reuses the cached prompt and its
    // last token runs through another kernel, and greedy decoding of a small
    // model may flip on that rounding.)
    assert_eq!(tokens.trim(), streamed["text"].as_str().unwrap().trim());
    assert!(streamed["sources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["source"] == "herons.md"));

    // OpenAI-compatible chat completions and models.
    let (st, m) = body(c.get(s.at("/v1/models")).send().unwrap());
    assert_eq!(st, 200);
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"].as_array().unwrap().len(), 2, "{m}");
    let chat = json!({
        "model": "docqa",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Where do grey herons nest?"}]}
        ],
        "temperature": 0, "max_tokens": 24
    });
    let (st, v) = body(
        c.post(s.at("/v1/chat/completions"))
            .json(&chat)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim()
            .is_empty(),
        "{v}"
    );
    assert!(
        v["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["source"] == "herons.md"),
        "{v}"
    );
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let mut chat_s = chat.clone();
    chat_s["stream"] = json!(true);
    chat_s["stream_options"] = json!({"include_usage": true});
    let text = c
        .post(s.at("/v1/chat/completions"))
        .json(&chat_s)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{text}");
    let mut content = String::new();
    let mut finish = None;
    let mut usage = None;
    for (_, d) in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(ch) = v["choices"].get(0) {
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            if !ch["finish_reason"].is_null() {
                finish = Some(ch["finish_reason"].clone());
            }
        }
        if v["usage"].is_object() {
            usage = Some(v["usage"].clone());
        }
    }
    assert!(!content.trim().is_empty(), "{text}");
    assert!(finish.is_some(), "{text}");
    let usage = usage.expect("usage chunk");
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 1, "{text}");

    // Embeddings: floats and base64 agree; related texts are closer.
    let (st, e) = body(
        c.post(s.at("/v1/embeddings"))
            .json(&json!({"input": ["herons nest in trees", "grey herons build nests high up", "the invoice is overdue"]}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{e}");
    let vecs: Vec<Vec<f64>> = e["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(vecs.len(), 3);
    assert_eq!(vecs[0].len(), 384);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]) + 0.2);
    let (_, e64) = body(
        c.post(s.at("/v1/embeddings"))
            .json(&json!({"input": "herons nest in trees", "encoding_format": "base64"}))
            .send()
            .unwrap(),
    );
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(e64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let v64: Vec<f64> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
        .collect();
    assert!(v64.iter().zip(&vecs[0]).all(|(a, b)| (a - b).abs() < 1e-6));

    // Plugins: listed with their tools, called directly, and used by answers.
    let (st, v) = body(c.get(s.at("/v1/plugins")).send().unwrap());
    assert_eq!(st, 200, "{v}");
    assert!(
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "calculator"),
        "{v} (run scripts/build_plugins.sh)"
    );
    let calc = |args: Value| {
        c.post(s.at("/v1/plugins/calculator/calculate"))
            .json(&args)
            .send()
            .unwrap()
    };
    let (st, v) = body(calc(json!({"expression": "6*7"})));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"]["result"], "42", "{v}");
    let (st, m) = error(calc(json!({"expr": 1})));
    assert_eq!(st, 400, "{m}");
    // The calculator reports a division by zero as bad arguments.
    let (st, m) = error(calc(json!({"expression": "1/0"})));
    assert_eq!(st, 400, "{m}");
    assert!(m.contains("division by zero"), "{m}");
    let (st, _) = error(calc(json!([1, 2])));
    assert_eq!(st, 400);
    let (st, _) = error(
        c.post(s.at("/v1/plugins/nope/calculate"))
            .json(&json!({}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
    let (st, v) = body(
        c.post(s.at("/v1/query"))
            .json(&json!({"question": "what is 1234 * 5678?", "tools": true, "temperature": 0, "max_tokens": 40}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    let calls = v["tool_calls"].as_array().expect("tool_calls");
    assert!(
        calls
            .iter()
            .all(|c| c["result"].is_string() || c["error"].is_string()),
        "{v}"
    );
    let text = v["text"].as_str().unwrap();
    assert!(
        !text.contains("<|Commands|>") && !text.contains("<|Results|>"),
        "{v}"
    );

    // Bad input: the right status and a JSON error, every time.
    let post_raw = |path: &str, body: &str| {
        c.post(s.at(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let (st, m) = error(post_raw("/v1/search", "{\"query\": "));
    assert_eq!(st, 400, "{m}");
    let (st, m) = error(post_raw("/v1/search", "{\"query\": 5}"));
    assert_eq!(st, 422, "{m}");
    let (st, m) = error(post_raw("/v1/search", "{\"query\": \"x\", \"kk\": 3}"));
    assert_eq!(st, 422);
    assert!(m.contains("kk"), "{m}");
    let (st, m) = error(post_raw("/v1/search", "{\"query\": \"   \"}"));
    assert_eq!(st, 400);
    assert!(m.contains("empty"), "{m}");
    let (st, _) = error(post_raw("/v1/query", "{\"question\": \"\"}"));
    assert_eq!(st, 400);
    let (st, _) = error(post_raw(
        "/v1/query",
        "{\"question\": \"x\", \"max_tokens\": 100000}",
    ));
    assert_eq!(st, 400);
    let (st, _) = error(post_raw("/v1/chat/completions", "{\"messages\": []}"));
    assert_eq!(st, 400);
    let (st, _) = error(post_raw("/v1/embeddings", "{\"input\": [[1, 2, 3]]}"));
    assert_eq!(st, 400);
    let huge = format!("{{\"query\": \"{}\"}}", "a".repeat(100_000));
    let (st, _) = error(post_raw("/v1/search", &huge));
    assert_eq!(st, 413);
    let (st, m) = error(c.get(s.at("/v2/nothing")).send().unwrap());
    assert_eq!(st, 404);
    assert!(m.contains("/openapi.json"));
    let (st, _) = error(c.delete(s.at("/v1/search")).send().unwrap());
    assert_eq!(st, 405);
    let (st, _) = error(
        c.post(s.at("/v1/search"))
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .unwrap(),
    );
    assert_eq!(st, 415);
    let upload = |name: &str, bytes: Vec<u8>| {
        let form = reqwest::blocking::multipart::Form::new().part(
            "file",
            reqwest::blocking::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
        c.post(s.at("/v1/documents"))
            .multipart(form)
            .send()
            .unwrap()
    };
    let (st, m) = error(upload("report.pdf", b"this is not a PDF at all".to_vec()));
    assert_eq!(st, 422, "{m}");
    assert!(m.contains("PDF"), "{m}");
    let (st, _) = error(upload("photo.png", b"\x89PNG\r\n".to_vec()));
    assert_eq!(st, 415);
    // An upload over the limit: the server answers 413 without reading it all
    // (and may close the connection while the client is still sending, so the
    // request is written by hand and the answer read whatever happens to the rest).
    let head = raw_upload(&s, "big.txt", 4 << 20);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("max_upload_bytes"), "{head}");
    let (st, _) = error(upload("empty.txt", Vec::new()));
    assert_eq!(st, 400);
    // A PDF that passes the first look but is damaged inside: the job fails, nothing is lost.
    let (st, job) = body(upload("damaged.pdf", b"%PDF-1.7\n1 0 obj <<".to_vec()));
    assert_eq!(st, 202);
    let failed = wait_job(&c, &s, job["id"].as_str().unwrap());
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(!failed["error"].as_str().unwrap().is_empty());
    let (_, list) = body(c.get(s.at("/v1/documents")).send().unwrap());
    assert_eq!(list["count"].as_u64().unwrap(), docs_before + 2, "{list}");

    // A client that leaves mid-stream frees the model for the next one.
    {
        let mut q3 = json!({"question": "Tell me everything about lighthouses.", "max_tokens": 400, "stream": true});
        q3["temperature"] = json!(0);
        let mut r = c.post(s.at("/v1/query")).json(&q3).send().unwrap();
        let mut buf = [0u8; 64];
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0);
        drop(r);
    }
    let t0 = Instant::now();
    let (st, v) = body(c.post(s.at("/v1/query")).json(&q).send().unwrap());
    assert_eq!(st, 200, "{v}");
    // (Not necessarily the same words as before: the cached prefix the model
    // reuses now comes from the abandoned question, and greedy decoding of a
    // 270M model flips on such rounding differences.)
    assert!(!v["text"].as_str().unwrap().trim().is_empty(), "{v}");
    assert_ne!(v["finish_reason"], "cancelled", "{v}");
    eprintln!("answer after a dropped stream took {:?}", t0.elapsed());

    // Delete: gone from the listing and from search.
    let (st, _) = body(
        c.delete(s.at(&format!("/v1/documents/{heron_id}")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    let (st, _) = error(
        c.get(s.at(&format!("/v1/documents/{heron_id}")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
    let (st, _) = error(
        c.delete(s.at(&format!("/v1/documents/{heron_id}")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
    let (_, v) = body(
        c.post(s.at("/v1/search"))
            .json(&json!({"query": "grey heron heronries", "k": 10, "mode": "bm25"}))
            .send()
            .unwrap(),
    );
    assert!(
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["source"] != "herons.md"),
        "{v}"
    );

    // Metrics saw all of it.
    let m = c.get(s.at("/metrics")).send().unwrap().text().unwrap();
    assert!(
        m.contains(
            "docqa_http_requests_total{method=\"POST\",route=\"/v1/search\",status=\"200\"}"
        ),
        "{m}"
    );
    assert!(m.contains("route=\"/v1/search\",status=\"413\""), "{m}");
    let metric = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {m}"))
            .parse()
            .unwrap()
    };
    assert!(metric("docqa_llm_generated_tokens_total") > 0.0);
    assert!(metric("docqa_llm_answers_total") >= 4.0);
    assert_eq!(metric("docqa_index_documents") as u64, docs_before + 1);
    assert!(
        m.contains("docqa_http_request_duration_seconds_bucket{route=\"/v1/query\",le=\"+Inf\"}")
    );

    let status = s.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn keys_roles_and_the_queue_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    // A public address without keys is refused before anything loads.
    let out = docqa(&idx)
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DOCQA_READ_KEYS"));

    index_sample(&idx);
    let read = "read-key-0123456789abcdef";
    let admin = "admin-key-0123456789abcdef";
    let cfg = tmp.path().join("docqa.toml");
    std::fs::write(
        &cfg,
        format!(
            "llm_queue = 0\n[[keys]]\nkey = \"{read}\"\nrole = \"read\"\n\
             [[keys]]\nkey = \"{admin}\"\nrole = \"admin\"\nname = \"ops\"\n"
        ),
    )
    .unwrap();
    let s = Server::start(&idx, &["--config", cfg.to_str().unwrap()]);
    let c = client();
    let search = json!({"query": "grid size"});
    let (st, m) = error(c.post(s.at("/v1/search")).json(&search).send().unwrap());
    assert_eq!(st, 401);
    assert!(m.contains("Bearer"), "{m}");
    let (st, _) = error(
        c.post(s.at("/v1/search"))
            .bearer_auth("wrong-key-0123456789abcdef")
            .json(&search)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 401);
    let (st, _) = body(
        c.post(s.at("/v1/search"))
            .bearer_auth(read)
            .json(&search)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    let doc = json!({"text": "Keys are rotated every ninety days.", "name": "keys.txt"});
    let (st, m) = error(
        c.post(s.at("/v1/documents"))
            .bearer_auth(read)
            .json(&doc)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 403);
    assert!(m.contains("admin"), "{m}");
    let (st, _) = body(
        c.post(s.at("/v1/documents"))
            .bearer_auth(admin)
            .json(&doc)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 202);
    let (st, _) = error(c.get(s.at("/v1/plugins")).bearer_auth(read).send().unwrap());
    assert_eq!(st, 403);
    let (st, _) = body(c.get(s.at("/healthz")).send().unwrap());
    assert_eq!(st, 200);

    // One answer at a time and no queue: concurrent questions beyond it get
    // 429 with Retry-After, never a hang or another error.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = s.at("/v1/query");
            std::thread::spawn(move || {
                let r = client()
                    .post(url)
                    .bearer_auth(read)
                    .json(&json!({"question": format!("How large can a survey grow? ({i})"), "max_tokens": 48}))
                    .send()
                    .unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status(), retry)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(ok + busy.len(), 4, "{results:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{results:?}");
    for (_, retry) in busy {
        let secs: u64 = retry.as_ref().expect("Retry-After").parse().unwrap();
        assert!(secs >= 1);
    }
    let m = c
        .get(s.at("/metrics"))
        .bearer_auth(read)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("docqa_llm_rejected_total ") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[test]
fn stopping_keeps_what_was_acknowledged_and_a_watched_folder_stays_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    let s = Server::start(&idx, &[]);
    let c = client();
    // Acknowledge several documents, then stop at once: each must be in the
    // index after a restart, indexed before the stop or at the next start.
    let n = 6;
    for i in 0..n {
        let doc = json!({"text": format!("Document {i} is about the tide table of harbour number {i}."), "name": format!("tide-{i}.txt")});
        let (st, v) = body(c.post(s.at("/v1/documents")).json(&doc).send().unwrap());
        assert_eq!(st, 202, "{v}");
    }
    let status = s.stop();
    assert!(status.success(), "{status:?}");

    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("ferry.md"),
        "# Ferry\n\nThe ferry leaves at dawn.\n",
    )
    .unwrap();
    let s = Server::start(&idx, &["--watch", docs.to_str().unwrap()]);
    let listed = |want: &dyn Fn(&Value) -> bool| {
        let t0 = Instant::now();
        loop {
            let (_, v) = body(c.get(s.at("/v1/documents")).send().unwrap());
            if want(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "never got there: {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let has = |v: &Value, name: &str| {
        v["documents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["source"].as_str().unwrap().ends_with(name))
    };
    let v = listed(&|v| (0..n).all(|i| has(v, &format!("tide-{i}.txt"))) && has(v, "ferry.md"));
    assert_eq!(v["count"], n + 1, "nothing twice: {v}");
    // The watched folder follows changes while the server runs.
    std::fs::write(docs.join("bridge.txt"), "The bridge opens for tall ships.").unwrap();
    listed(&|v| has(v, "bridge.txt"));
    std::fs::remove_file(docs.join("ferry.md")).unwrap();
    listed(&|v| !has(v, "ferry.md") && has(v, "bridge.txt"));
    let (_, hits) = body(
        c.get(s.at("/v1/search"))
            .query(&[("q", "harbour 3 tide table"), ("mode", "bm25")])
            .send()
            .unwrap(),
    );
    assert_eq!(hits["hits"][0]["source"], "tide-3.txt", "{hits}");
    assert!(s.stop().success());
}

/// Runs a script of the repository's with a tool that scripts/test.sh installs.
fn run_script(program: &Path, args: &[&str], what: &str) {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run scripts/setup_test_tools.sh (scripts/test.sh does) \
                 to install {what}",
                program.display()
            )
        });
    assert!(
        out.status.success(),
        "{} {:?} failed:\nstdout: {}\nstderr: {}",
        program.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_openai_python_client_works_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let s = Server::start(&idx, &[]);
    let python = root().join("target/test-tools/venv/bin/python");
    run_script(
        &python,
        &["tests/clients/openai_client.py", &format!("{}/v1", s.url)],
        "the openai Python package",
    );

    // magpie's own OpenAI-compatible client, as a remote generator and embedder.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures::StreamExt;
        use magpie_core::{Embedder, GenerationEvent, GenerationOptions, Generator, Prompt};
        let base = format!("{}/v1", s.url);
        let g =
            magpie_openai::OpenAiGenerator::new(magpie_openai::OpenAiConfig::new(&base, "docqa"))
                .unwrap();
        let opts = GenerationOptions {
            max_tokens: 30,
            temperature: 0.0,
            ..Default::default()
        };
        let mut stream = g
            .generate(Prompt::Text("What does error E42 mean?".into()), opts)
            .await
            .unwrap();
        let (mut text, mut deltas, mut summary) = (String::new(), 0, None);
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                GenerationEvent::Delta { text: t } => {
                    deltas += 1;
                    text.push_str(&t)
                }
                GenerationEvent::Done(d) => summary = Some(d),
            }
        }
        let summary = summary.expect("a summary");
        assert!(deltas > 1 && !text.trim().is_empty(), "{text:?}");
        assert!(summary.usage.completion_tokens >= deltas, "{summary:?}");

        let remote =
            magpie_openai::OpenAiEmbedder::connect(magpie_openai::OpenAiConfig::new(&base, "any"))
                .await
                .unwrap();
        let local = magpie_candle::BertEmbedder::load(
            models_dir()
                .join("all-MiniLM-L6-v2")
                .to_string_lossy()
                .into_owned(),
        )
        .unwrap();
        assert_eq!(remote.dimension(), local.dimension());
        let texts = vec!["grid squares".to_string(), "observer codes".to_string()];
        let (r, l) = (
            remote.embed(&texts).await.unwrap(),
            local.embed(&texts).await.unwrap(),
        );
        for (a, b) in r.iter().zip(&l) {
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
        }
    });

    // An index held by the running server: the CLI says so (not "damaged").
    let out = docqa(&idx).args(["search", "grid"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");

    // docqa itself with a remote model: `ask --llm <server>/v1` (over a copy
    // of the sample index, since the server holds its own).
    let idx = tmp.path().join("idx2");
    index_sample(&idx);
    let out = docqa(&idx)
        .args(["ask", "--json", "--max-tokens", "30", "--llm"])
        .arg(format!("{}/v1", s.url))
        .arg("What does error E42 mean?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!a["text"].as_str().unwrap().trim().is_empty(), "{a}");
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{a}");
    // A URL where no server listens: a clear error naming it.
    let out = docqa(&idx)
        .args([
            "ask",
            "--llm",
            "http://127.0.0.1:9/v1",
            "What does error E42 mean?",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach http://127.0.0.1:9/v1"), "{err}");
}

#[test]
fn the_web_page_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let s = Server::start(&idx, &[]);
    let node = PathBuf::from("node"); // from PATH
    let shot = tmp.path().join("page.png");
    run_script(
        &node,
        &["tests/web/page.mjs", &s.url, shot.to_str().unwrap()],
        "Node.js",
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

#[test]
fn conversations_are_kept_per_key_and_answer_follow_ups() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let (alice, bob) = ("alice-key-0123456789abcdef", "bob-key-0123456789abcdef");
    let cfg = tmp.path().join("docqa.toml");
    std::fs::write(
        &cfg,
        format!("[[keys]]\nkey = \"{alice}\"\nrole = \"read\"\n[[keys]]\nkey = \"{bob}\"\nrole = \"read\"\n"),
    )
    .unwrap();
    let s = Server::start(&idx, &["--config", cfg.to_str().unwrap()]);
    let c = client();
    let (st, conv) = body(
        c.post(s.at("/v1/conversations"))
            .bearer_auth(alice)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 201, "{conv}");
    let id = conv["id"].as_str().unwrap().to_string();
    let say = |q: &str| {
        body(
            c.post(s.at(&format!("/v1/conversations/{id}/messages")))
                .bearer_auth(alice)
                .json(&json!({"question": q, "max_tokens": 12, "temperature": 0}))
                .send()
                .unwrap(),
        )
    };
    let (st, a) = say("What colour is the Eurasian magpie's tail?");
    assert_eq!(st, 200, "{a}");
    let (st, a) = say("What does it sound like?");
    assert_eq!(st, 200, "{a}");
    let first = a["sources"][0]["source"].as_str().unwrap();
    assert!(
        first.ends_with("species-notes.html"),
        "the follow-up reads the conversation: {a}"
    );
    let (_, got) = body(
        c.get(s.at(&format!("/v1/conversations/{id}")))
            .bearer_auth(alice)
            .send()
            .unwrap(),
    );
    assert_eq!(got["messages"].as_array().unwrap().len(), 4, "{got}");
    assert_eq!(got["messages"][2]["content"], "What does it sound like?");
    // Another key sees none of it.
    let (st, _) = body(
        c.get(s.at(&format!("/v1/conversations/{id}")))
            .bearer_auth(bob)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
    let (_, theirs) = body(
        c.get(s.at("/v1/conversations"))
            .bearer_auth(bob)
            .send()
            .unwrap(),
    );
    assert_eq!(theirs["conversations"], json!([]));
    let (_, mine) = body(
        c.get(s.at("/v1/conversations"))
            .bearer_auth(alice)
            .send()
            .unwrap(),
    );
    assert_eq!(mine["conversations"][0]["id"], id.as_str());
    let (st, _) = body(
        c.delete(s.at(&format!("/v1/conversations/{id}")))
            .bearer_auth(bob)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404, "bob cannot delete alice's conversation");
    let (st, _) = body(
        c.delete(s.at(&format!("/v1/conversations/{id}")))
            .bearer_auth(alice)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200);
    // /v1/query takes a history of its own, checked.
    for (history, says) in [
        (json!([{"role": "system", "content": "x"}]), "history role"),
        (
            json!(vec![json!({"role": "user", "content": "x"}); 41]),
            "at most the last 40",
        ),
    ] {
        let (st, e) = body(
            c.post(s.at("/v1/query"))
                .bearer_auth(alice)
                .json(&json!({"question": "What does it sound like?", "history": history}))
                .send()
                .unwrap(),
        );
        assert_eq!(st, 400, "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let (st, _) = body(
        c.get(s.at("/v1/conversations/not-an-id"))
            .bearer_auth(alice)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
}
