//! docqa as a user runs it: the real binary, real models, real stores.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{docqa, json, models_dir, run_ok, sample};

/// The bundled plugins as scripts/build_plugins.sh installs them.
fn plugins_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist");
    assert!(
        dir.join("calculator/plugin.toml").exists(),
        "bundled plugins missing in {}: run scripts/build_plugins.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

#[test]
fn index_search_status_and_idempotence() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    let first = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(sample())));
    assert_eq!(first["indexed"], 7, "{first}");
    assert!(first["chunks"].as_u64().unwrap() >= 7);
    let again = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(sample())));
    assert_eq!(again["indexed"], 0);
    assert_eq!(again["unchanged"], 7);
    assert_eq!(again["chunks"], 0, "an unchanged corpus embeds nothing");
    let text = run_ok(docqa(&idx).arg("index").arg(sample()));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("up to date") && text.contains("nothing to embed"),
        "{text}"
    );

    let res = json(&run_ok(docqa(&idx).args([
        "search",
        "--json",
        "-k",
        "2",
        "how do I upgrade without losing data",
    ])));
    let hits = res["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(
        hits[0]["chunk"]["source"]
            .as_str()
            .unwrap()
            .ends_with("install.md"),
        "{res}"
    );
    assert_eq!(hits[0]["chunk"]["heading_path"][1], "Upgrading");

    for mode in ["bm25", "dense", "hybrid"] {
        let out = run_ok(docqa(&idx).args(["search", "--mode", mode, "observer code error"]));
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.starts_with("1. "), "{mode}: {s}");
    }
    let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
    assert_eq!(status["consistent"], true);
    assert_eq!(status["documents"], 7);

    // Bad input: an empty query is a clear error, not a crash.
    let out = docqa(&idx).args(["search", ""]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("query is empty"));
}

#[test]
fn search_without_an_index_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = docqa(&tmp.path().join("none"))
        .args(["search", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("docqa index"), "{err}");
}

fn make_corpus(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let body: String = (0..40)
            .map(|j| {
                format!(
                    "Note {i} line {j}: the survey counted {} birds near site {}.\n",
                    i * 7 + j,
                    i % 13
                )
            })
            .collect();
        std::fs::write(dir.join(format!("note-{i:04}.txt")), body).unwrap();
    }
}

/// SIGKILL in the middle of indexing, several times, then a clean run: the index ends
/// consistent (no duplicates, both stores agree, every document exactly once).
#[test]
fn sigkill_during_indexing_leaves_a_recoverable_index() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    let idx = tmp.path().join("idx");
    let n = 150;
    make_corpus(&corpus, n);
    let mut killed_mid_run = 0;
    for attempt in 0..3 {
        let mut child = docqa(&idx)
            .args(["index", "--commit-every", "32", "--json"])
            .arg(&corpus)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until this run has committed something new, then kill it.
        let catalog = idx.join("catalog.json");
        let before = std::fs::metadata(&catalog).and_then(|m| m.modified()).ok();
        let t0 = Instant::now();
        loop {
            let now = std::fs::metadata(&catalog).and_then(|m| m.modified()).ok();
            if now.is_some() && now != before {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300 + 200 * attempt));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed_mid_run += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        killed_mid_run >= 1,
        "indexing finished before it could be killed"
    );
    let out = run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus));
    let report = json(&out);
    let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
    assert_eq!(status["consistent"], true, "{status}\nrun: {report}");
    assert_eq!(status["documents"], n, "{status}");
    assert_eq!(status["duplicates"], 0);
    assert_eq!(status["vector_chunks"], status["chunks"]);
    assert_eq!(status["keyword_chunks"], status["chunks"]);
    // and a further run has nothing to do
    let again = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus)));
    assert_eq!(again["indexed"], 0);
    assert_eq!(again["unchanged"], n);
}

#[test]
fn models_fetch_without_pip_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_docqa"))
        .args(["models", "fetch", "--models-dir"])
        .arg(tmp.path())
        .env("PATH", tmp.path()) // no python on PATH
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pip"), "{err}");
}

/// A model given by Hugging Face hub id (from the local hub cache, laid out as the hub
/// client does: snapshots of symlinks) indexes, and later commands find it from the index.
#[test]
fn hub_id_models_load_from_the_hub_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--sentence-transformers--all-MiniLM-L6-v2");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let src = models_dir().join("all-MiniLM-L6-v2");
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "sentence_bert_config.json",
    ] {
        std::os::unix::fs::symlink(src.join(f), snap.join(f)).unwrap();
    }
    let idx = tmp.path().join("idx");
    let no_models = tmp.path().join("no-models");
    let hub = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_docqa"));
        c.arg("--index")
            .arg(&idx)
            .arg("--models-dir")
            .arg(&no_models);
        c.env("HF_HUB_CACHE", &cache)
            .env_remove("DOCQA_INDEX")
            .env_remove("MAGPIE_EMBED_MODEL");
        c
    };
    let report = json(&run_ok(
        hub()
            .args([
                "--embed-model",
                "sentence-transformers/all-MiniLM-L6-v2",
                "index",
                "--json",
            ])
            .arg(sample()),
    ));
    assert_eq!(report["indexed"], 7);
    let res = json(&run_ok(hub().args([
        "search",
        "--json",
        "-k",
        "1",
        "error E42",
    ])));
    assert!(
        res["hits"][0]["chunk"]["text"]
            .as_str()
            .unwrap()
            .contains("E42"),
        "{res}"
    );
    let status = json(&run_ok(hub().args(["status", "--json"])));
    assert_eq!(
        status["settings"]["embedding_model"],
        "sentence-transformers/all-MiniLM-L6-v2"
    );
}

/// `docqa ask` on the sample corpus with the real Gemma model: a streamed
/// answer, then the passages it was given; `--json` has the whole Answer with
/// citations pointing at real sources and spans.
#[test]
fn ask_answers_from_the_index_with_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    run_ok(docqa(&idx).args(["index", "--json"]).arg(sample()));
    let out = run_ok(docqa(&idx).args([
        "ask",
        "--seed",
        "1",
        "--max-tokens",
        "40",
        "how do I upgrade without losing my data?",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let (answer, sources) = text.split_once("Sources:").expect("a Sources: list");
    assert!(!answer.trim().is_empty(), "{text}");
    assert!(sources.contains("guide/install.md"), "{text}");
    let v = json(&run_ok(docqa(&idx).args([
        "ask",
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "40",
        "how do I upgrade without losing my data?",
    ])));
    let sources = v["sources"].as_array().unwrap();
    assert!(!sources.is_empty());
    for (i, s) in sources.iter().enumerate() {
        assert_eq!(s["number"], i + 1);
        assert!(
            s["span"]["line_end"].as_u64().unwrap() >= s["span"]["line_start"].as_u64().unwrap()
        );
    }
    assert!(sources
        .iter()
        .any(|s| s["source"].as_str().unwrap().ends_with("install.md")));
    for c in v["citations"].as_array().unwrap() {
        assert!(sources.iter().any(|s| s["chunk_id"] == c["chunk_id"]));
    }
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 50);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(v["timings"]["time_to_first_token_ms"].as_f64().unwrap() > 0.0);
    assert!(!v["text"].as_str().unwrap().trim().is_empty());
    // an empty question is refused with a clear message
    let out = docqa(&idx).args(["ask", "  "]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("question is empty"));
}

#[test]
fn model_info_describes_the_default_model_and_refuses_junk() {
    let v = json(&run_ok(
        docqa(Path::new("unused"))
            .args(["model", "info", "--json"])
            .arg(models_dir().join("gemma-3-270m-q4_k_m.gguf")),
    ));
    assert_eq!(v["architecture"], "gemma3");
    assert_eq!(v["supported"], true);
    assert_eq!(v["context_length"], 32768);
    assert_eq!(v["vocab_size"], 262144);
    let params = v["parameters"].as_u64().unwrap();
    assert!((260_000_000..280_000_000).contains(&params), "{params}");
    let mem = v["memory"].as_array().unwrap();
    let fp16 = mem.iter().find(|m| m["precision"] == "fp16").unwrap();
    assert_eq!(fp16["weights_bytes"].as_u64().unwrap(), params * 2);
    // the device this build runs on (the CPU here: the test build has no cuda)
    let device = v["device"]["name"].as_str().unwrap();
    assert!(device.starts_with("cpu ("), "{device}");
    assert!(v["device"]["memory_used_bytes"].is_null());
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let out = docqa(Path::new("unused"))
        .args(["model", "info"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a usable GGUF"));
}

/// `bench llm` on the default model: rates, the device, and the bytes a
/// generated token reads (the file's weights once, and a little KV cache);
/// `bench memory`: read and copy rates for one thread and for all.
#[test]
fn bench_llm_and_memory_report_rates_and_bytes_per_token() {
    let bench = |extra: &[&str]| {
        let args = ["bench", "llm", "--prompt-tokens", "24", "--gen-tokens", "3"];
        json(&run_ok(
            docqa(Path::new("unused"))
                .args(args)
                .args(["--repeat", "1"])
                .args(extra),
        ))
    };
    let v = bench(&[]);
    assert_eq!(v["prompt_tokens"], 24, "{v}");
    assert!(v["prefill_tokens_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["decode_tokens_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["device"].as_str().unwrap().starts_with("cpu ("), "{v}");
    // Gemma 3 270M Q4_K_M: the tied 262,144 × 640 Q8_0 output alone is 178 MB
    let file = std::fs::metadata(models_dir().join("gemma-3-270m-q4_k_m.gguf"))
        .unwrap()
        .len();
    let bytes = v["decode_bytes_per_token"].as_u64().unwrap();
    assert!(
        bytes > 178_000_000 && bytes < file * 3 / 2,
        "{bytes} against a {file}-byte file"
    );
    assert!(v["decode_read_gb_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["kv_cache"], "f16", "{v}");
    assert_eq!(v["attention"], "own", "{v}");
    // the GPU's code path on the CPU, attending with the fused kernel
    let fused = json(&run_ok(
        docqa(Path::new("unused"))
            .args(["bench", "llm", "--prompt-tokens", "24", "--gen-tokens", "3"])
            .args(["--repeat", "1"])
            .env("MAGPIE_LLM_KERNELS", "candle")
            .env("MAGPIE_ATTENTION", "fused"),
    ));
    assert_eq!(fused["attention"], "fused", "{fused}");
    assert!(
        fused["decode_tokens_per_sec"].as_f64().unwrap() > 0.0,
        "{fused}"
    );
    // a q8_0 KV cache: the same run reading fewer bytes a token
    let q8 = bench(&["--kv-cache", "q8_0"]);
    assert_eq!(q8["kv_cache"], "q8_0", "{q8}");
    assert!(
        q8["decode_bytes_per_token"].as_u64().unwrap() < bytes,
        "{q8} {v}"
    );
    let out = docqa(Path::new("unused"))
        .args(["bench", "llm", "--kv-cache", "q4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("f16") && err.contains("q8_0"), "{err}");

    let out = run_ok(
        docqa(Path::new("unused")).args(["bench", "memory", "--mib", "16", "--repeat", "1"]),
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty() && lines[0]["threads"] == 1, "{lines:?}");
    for l in &lines {
        assert_eq!(l["bytes"], 16 << 20);
        assert!(
            l["read_gb_s"].as_f64().unwrap() > 0.0 && l["copy_gb_s"].as_f64().unwrap() > 0.0,
            "{l}"
        );
    }
    let out = docqa(Path::new("unused"))
        .args(["bench", "memory", "--mib", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mib must be at least 1"));
}

#[test]
fn plugins_list_info_and_call() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    // docqa with the bundled plugins and a compile cache of its own.
    let with_plugins = || {
        let mut c = docqa(&idx);
        c.arg("--plugins")
            .arg(plugins_dir())
            .env("XDG_CACHE_HOME", tmp.path().join("cache"));
        c
    };
    let mut c = with_plugins();
    let v = json(&run_ok(c.args(["plugins", "list", "--json"])));
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["calculator", "fetch", "search", "solver"]);
    for p in v.as_array().unwrap() {
        assert!(
            p["granted"].as_array().unwrap().is_empty(),
            "granted by default: {p}"
        );
    }

    let mut c = with_plugins();
    let out = run_ok(c.args(["plugins", "info", "solver"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tool solve_linear") && text.contains("\"equations\""),
        "{text}"
    );

    let mut c = with_plugins();
    let v = json(&run_ok(c.args([
        "plugins",
        "call",
        "calculator",
        "calculate",
        r#"{"expression":"(2+3)*4^2"}"#,
    ])));
    assert_eq!(v["result"], "80");

    // A bad expression: a clear error and a failing exit code.
    let mut c = with_plugins();
    let out = c
        .args([
            "plugins",
            "call",
            "calculator",
            "calculate",
            r#"{"expression":"2+"}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ends too early"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The search plugin over a real index: refused without a grant, answers with one.
    run_ok(docqa(&idx).args(["index", "--json"]).arg(sample()));
    let mut c = with_plugins();
    let out = c
        .args([
            "plugins",
            "call",
            "search",
            "search",
            r#"{"query":"upgrade"}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not granted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = tmp.path().join("plugins.toml");
    std::fs::write(&config, "[plugins.search]\ngrant = [\"search\"]\n").unwrap();
    let mut c = with_plugins();
    let v = json(&run_ok(c.arg("--plugin-config").arg(&config).args([
        "plugins",
        "call",
        "search",
        "search",
        r#"{"query":"upgrade without losing data","k":3}"#,
    ])));
    let hits = v.as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert!(
        hits.iter()
            .any(|h| h["source"].as_str().unwrap().contains("install.md")),
        "{v}"
    );

    // A missing plugin directory says what to do.
    let out = docqa(&idx)
        .args(["plugins", "list"])
        .arg("--plugins")
        .arg(tmp.path().join("none"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/build_plugins.sh"));
}

#[test]
fn ask_with_tools_runs_the_tool_loop_with_the_real_model() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    run_ok(docqa(&idx).args(["index", "--json"]).arg(sample()));
    // Greedy decoding on the bundled Gemma 3 270M: with the worked example in
    // the tool instructions it calls the calculator. Whether a 270M base model
    // then restates the result depends on the CPU's rounding (greedy paths
    // differ between AVX2 and AVX-512 machines), so the answer text must carry
    // it for at least one of two questions; the loop's own guarantees are
    // checked on both.
    let mut used_result = Vec::new();
    for (question, product) in [
        ("what is 1234 * 5678?", "7006652"),
        ("what is 4321 * 8765?", "37873565"),
    ] {
        let v = json(&run_ok(
            docqa(&idx)
                .arg("--plugins")
                .arg(plugins_dir())
                .env("XDG_CACHE_HOME", tmp.path().join("cache"))
                .args([
                    "ask",
                    "--tools",
                    "--json",
                    "--temperature",
                    "0",
                    "--max-tokens",
                    "40",
                    question,
                ]),
        ));
        let calls = v["tool_calls"].as_array().expect("tool_calls");
        assert!(!calls.is_empty(), "the model made no tool call: {v}");
        assert_eq!(calls[0]["tool"], "calculate", "{v}");
        assert!(
            calls[0]["result"].as_str().unwrap().contains(product),
            "{v}"
        );
        // A repeated identical call is answered from the first one, never run again.
        let ran: Vec<_> = calls
            .iter()
            .filter(|c| c["result"].is_string())
            .map(|c| c["arguments"].to_string())
            .collect();
        let mut unique = ran.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(ran.len(), unique.len(), "a call ran twice: {v}");
        let text = v["text"].as_str().unwrap();
        assert!(
            !text.contains("<|Commands|>") && !text.contains("<|Results|>"),
            "{v}"
        );
        assert_ne!(v["finish_reason"], "cancelled", "{v}");
        used_result.push(text.contains(product));
    }
    assert!(
        used_result.contains(&true),
        "the answer never used the calculator's result"
    );
}

/// Counts of a test site's requests.
#[derive(Default)]
struct SiteCounts {
    not_modified: std::sync::atomic::AtomicUsize,
    /// Requests for a path robots.txt disallows, or to the other origin.
    forbidden: std::sync::atomic::AtomicUsize,
}

/// A two-page site on loopback (std threads; this test file is synchronous),
/// with traps: a redirect to another origin, a redirect into a path
/// robots.txt disallows, and a percent-encoded link to that path.
fn serve_site() -> (String, std::sync::Arc<SiteCounts>) {
    use std::io::{Read, Write};
    let counts = std::sync::Arc::new(SiteCounts::default());
    // The other origin: whatever it serves must never be fetched.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    let c = counts.clone();
    std::thread::spawn(move || {
        for stream in other.incoming() {
            let Ok(mut s) = stream else { return };
            c.forbidden
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = "<html><body><p>Injected text about volcanoes.</p></body></html>";
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let nm = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            // Read the whole request head: answering and closing with unread
            // bytes would make the kernel reset the connection.
            let mut req = Vec::new();
            let mut buf = [0u8; 8192];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
            if path.contains("rivate") {
                nm.forbidden
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let redirect = match path.as_str() {
                "/away" => Some(format!("{other_url}/")),
                "/inward" => Some("/private/codes".to_string()),
                _ => None,
            };
            if let Some(to) = redirect {
                let _ = s.write_all(
                    format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
                continue;
            }
            let body = match path.as_str() {
                "/robots.txt" => "User-agent: *\nDisallow: /private\n",
                "/" => "<html><head><title>Station</title></head><body><h1>Station</h1>\
                        <p>The weather station logs wind speed every minute.</p>\
                        <a href=\"/rain\">rain</a> <a href=\"/away\">partners</a> \
                        <a href=\"/inward\">codes</a> <a href=\"/%70rivate/log\">log</a></body></html>",
                p if p.contains("rivate") => "<html><body><p>Secret wind codes.</p></body></html>",
                "/rain" => "<html><head><title>Rain</title></head><body><h1>Rain gauge</h1>\
                            <p>Empty the tipping-bucket rain gauge before winter frost.</p></body></html>",
                _ => "",
            };
            let etag = format!("\"{}\"", path.len());
            let resp = if body.is_empty() {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string()
            } else if req
                .to_ascii_lowercase()
                .contains(&format!("if-none-match: {etag}"))
            {
                nm.not_modified
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                format!("HTTP/1.1 304 Not Modified\r\netag: {etag}\r\ncontent-length: 0\r\n\r\n")
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\netag: {etag}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            };
            // One request per connection, said so, so the client never reuses
            // a connection this server is closing.
            let resp = resp.replacen("\r\n\r\n", "\r\nconnection: close\r\n\r\n", 1);
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (base, counts)
}

#[test]
fn index_a_site_by_crawling_it_and_again_without_downloads() {
    let (base, counts) = serve_site();
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    let crawl = |idx: &Path| {
        json(&run_ok(
            docqa(idx)
                .args(["index", "--json", "--crawl", "--delay-ms", "0"])
                .arg(format!("{base}/")),
        ))
    };
    let v = crawl(&idx);
    assert_eq!(v["indexed"], 2, "{v}");
    // The traps: a redirect off the site, one into a disallowed path, and a
    // percent-encoded link to it are skipped with their reasons, unfetched.
    let skipped = v["skipped"].to_string();
    assert!(skipped.contains("off the site"), "{v}");
    assert!(skipped.contains("robots.txt"), "{v}");
    assert_eq!(
        counts.forbidden.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the crawl fetched a forbidden page: {v}"
    );
    let v = json(&run_ok(docqa(&idx).args([
        "search",
        "--json",
        "-k",
        "1",
        "how to protect the rain gauge from frost",
    ])));
    assert_eq!(
        v["hits"][0]["chunk"]["source"],
        format!("{base}/rain"),
        "{v}"
    );
    // Again: conditional requests, nothing re-embedded.
    let v = crawl(&idx);
    assert_eq!(v["unchanged"], 2, "{v}");
    assert_eq!(v["indexed"], 0, "{v}");
    assert!(
        counts
            .not_modified
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
    assert_eq!(
        counts.forbidden.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn watch_keeps_the_index_in_step_with_the_folder() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    let dir = tmp.path().join("docs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.md"), "# Alpha\n\nAlpha notes about kestrels.\n").unwrap();
    let mut child = docqa(&idx)
        .args(["index", "--json", "--watch"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("a report from the watcher")
    };
    let first = next();
    assert_eq!(first["indexed"], 1, "{first}");

    // Create: the editor pattern, a temporary file renamed into place.
    std::fs::write(dir.join(".b.md.tmp"), "# Beta\n\nBeta notes about owls.\n").unwrap();
    std::fs::rename(dir.join(".b.md.tmp"), dir.join("b.md")).unwrap();
    let mut v = next();
    while v["documents_in_index"] != 2 {
        v = next();
    }
    // Modify.
    std::fs::write(
        dir.join("a.md"),
        "# Alpha\n\nAlpha notes about falcons now.\n",
    )
    .unwrap();
    let v = next();
    assert_eq!(v["indexed"], 1, "{v}");
    // Rename: the old document goes, the new one comes.
    std::fs::rename(dir.join("b.md"), dir.join("c.md")).unwrap();
    let mut v = next();
    while v["removed"] == 0 && v["indexed"] == 0 {
        v = next();
    }
    let mut total_removed = v["removed"].as_u64().unwrap();
    while total_removed == 0 || v["documents_in_index"] != 2 {
        v = next();
        total_removed += v["removed"].as_u64().unwrap();
    }
    // Delete.
    std::fs::remove_file(dir.join("a.md")).unwrap();
    let mut v = next();
    while v["documents_in_index"] != 1 {
        v = next();
    }
    child.kill().unwrap();
    let _ = child.wait();
    // What the watcher wrote is a consistent index.
    let st = json(&run_ok(docqa(&idx).args(["status", "--json"])));
    assert_eq!(st["documents"], 1, "{st}");
    assert_eq!(st["consistent"], true, "{st}");
}

#[test]
fn ask_with_a_session_reads_the_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    run_ok(docqa(&idx).arg("index").arg(sample()));
    let ask = |session: Option<&str>, q: &str| {
        let mut c = docqa(&idx);
        c.args(["ask", "--json", "--max-tokens", "12", "--temperature", "0"]);
        if let Some(s) = session {
            c.args(["--session", s]);
        }
        json(&run_ok(c.arg(q)))
    };
    let first_source =
        |a: &serde_json::Value| a["sources"][0]["source"].as_str().unwrap().to_string();
    // Asked alone, "it" is nothing: another passage comes first.
    let alone = ask(None, "What does it sound like?");
    assert!(
        !first_source(&alone).ends_with("species-notes.html"),
        "{alone}"
    );
    // In a conversation about the magpie, the magpie's notes.
    ask(Some("birds"), "What colour is the Eurasian magpie's tail?");
    let follow = ask(Some("birds"), "What does it sound like?");
    assert_eq!(follow["decision"]["kind"], "answer", "{follow}");
    assert!(
        first_source(&follow).ends_with("species-notes.html"),
        "{follow}"
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(idx.join("sessions/birds.json")).unwrap()).unwrap();
    let roles: Vec<&str> = saved["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    // --history: the last message alone finds what it finds asked alone; the
    // model's rewrite fused with the history still brings the magpie's notes
    let mut c = docqa(&idx);
    c.args(["ask", "--json", "--max-tokens", "6", "--temperature", "0"]);
    c.args(["--session", "birds", "--history", "last-turn"]);
    let last = json(&run_ok(c.arg("What does it sound like?")));
    assert_eq!(first_source(&last), first_source(&alone), "{last}");
    let mut c = docqa(&idx);
    c.args(["ask", "--json", "--max-tokens", "6", "--temperature", "0"]);
    c.args(["--session", "birds", "--history", "condensed-fused"]);
    let condensed = json(&run_ok(c.arg("What does it sound like?")));
    let sources: Vec<String> = condensed["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap().to_string())
        .collect();
    assert!(
        sources.iter().any(|s| s.ends_with("species-notes.html")),
        "{condensed}"
    );
    let out = docqa(&idx)
        .args(["ask", "--history", "rewrite", "hello?"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("condensed-fused"), "{err}");
    let out = docqa(&idx)
        .args(["ask", "--session", "../escape", "hello?"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session name"));
}

/// Knowing when not to answer, with the real embedder and model: a question
/// the sample corpus does not cover gets "the documents do not cover this
/// question" and the nearest passages, without running the model; a first
/// question whose "it" names nothing gets a clarifying question; both can be
/// turned off; a language the embedder does not read is judged by its words.
#[test]
fn ask_abstains_off_the_documents_and_asks_back_what_it_means() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    run_ok(docqa(&idx).arg("index").arg(sample()));
    let ask = |extra: &[&str], q: &str| {
        let mut c = docqa(&idx);
        c.args(["ask", "--json", "--max-tokens", "6", "--temperature", "0"]);
        json(&run_ok(c.args(extra).arg(q)))
    };
    let off = ask(&[], "What is the capital of Peru?");
    assert_eq!(off["decision"]["kind"], "abstain", "{off}");
    let text = off["text"].as_str().unwrap();
    assert!(
        text.starts_with("The documents do not cover this question"),
        "{text}"
    );
    let first = off["sources"][0]["source"].as_str().unwrap();
    assert!(text.contains(first), "the nearest passage is named: {text}");
    assert_eq!(
        off["usage"]["completion_tokens"], 0,
        "the model did not run: {off}"
    );
    assert!(off["citations"].as_array().unwrap().is_empty());
    let forced = ask(&["--abstain", "off"], "What is the capital of Peru?");
    assert_eq!(forced["decision"]["kind"], "answer", "{forced}");
    assert!(forced["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    // What the documents hold is answered.
    let on = ask(&[], "What does error E42 mean?");
    assert_eq!(on["decision"]["kind"], "answer", "{on}");
    // "it", with nothing before it.
    let vague = ask(&[], "What does it sound like?");
    assert_eq!(vague["decision"]["kind"], "clarify", "{vague}");
    assert_eq!(vague["decision"]["pronoun"], "it");
    assert!(vague["text"].as_str().unwrap().contains("“it”"), "{vague}");
    let as_asked = ask(&["--no-clarify"], "What does it sound like?");
    assert_ne!(as_asked["decision"]["kind"], "clarify", "{as_asked}");
    // Chinese, which the English embedder cannot read, is judged by its
    // words alone: what the Chinese notes hold is answered, what nothing
    // names is declined, in Chinese.
    let zh = ask(&[], "秘鲁的首都是哪里？");
    assert_eq!(zh["decision"]["kind"], "abstain", "{zh}");
    assert!(
        zh["text"].as_str().unwrap().starts_with("文档中没有"),
        "{zh}"
    );
    let zh_on = ask(&[], "喜鹊能在镜子里认出自己吗？");
    assert_eq!(zh_on["decision"]["kind"], "answer", "{zh_on}");
    let bad = docqa(&idx)
        .args(["ask", "--abstain", "often", "hello?"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("measured"));
}

#[test]
fn chat_in_the_terminal_asks_each_line_in_the_conversation() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    run_ok(docqa(&idx).arg("index").arg(sample()));
    let mut child = docqa(&idx)
        .args([
            "chat",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--session",
            "t",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What colour is the Eurasian magpie's tail?\nWhat does it sound like?\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = text.split("Sources:").skip(1).collect();
    assert_eq!(answers.len(), 2, "{text}");
    // The follow-up's first source is the magpie's notes, not the FAQ.
    let first = answers[1].lines().find(|l| l.contains("[1]")).unwrap();
    assert!(first.contains("species-notes.html"), "{text}");
    let saved = std::fs::read_to_string(idx.join("sessions/t.json")).unwrap();
    assert!(saved.contains("What does it sound like?"), "{saved}");
}
