//! The sandbox against real, misbehaving wasm components (plugins/testing/hostile)
//! and the bundled plugins: every attack costs one clear error, the host and the
//! other plugins keep working, and the next call to the same plugin works.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use magpie_plugin_host::{PluginError, PluginHost, SearchBackend, SearchHit};

async fn loaded(extra_hostile: &str, operator_toml: &str) -> (tempfile::TempDir, PluginHost) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    install(&dir, "hostile", extra_hostile);
    install(&dir, "calculator", "");
    let mut h = host(&tmp.path().join("cache"));
    let results = h.load_dir(&dir, &operator(operator_toml)).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(results.len(), 2);
    (tmp, h)
}

/// The host is still whole: the hostile plugin's next call and another plugin work.
async fn still_works(h: &PluginHost) {
    let out = h
        .call("hostile", "echo", r#"{"x":1}"#)
        .await
        .expect("echo after the attack");
    assert_eq!(out.value["x"], 1);
    let out = h
        .call("calculator", "calculate", r#"{"expression":"2+3*4"}"#)
        .await
        .expect("calculator after the attack");
    assert_eq!(out.value["result"], "14");
}

#[tokio::test]
async fn bundled_calculator_computes_and_explains_errors() {
    let (_t, h) = loaded("", "").await;
    let p = h.plugin("calculator").unwrap();
    assert_eq!(p.description.tools[0].name, "calculate");
    // The schema is derived from the Rust type, doc comment included.
    let schema = &p.description.tools[0].parameters;
    assert_eq!(schema["required"][0], "expression");
    assert!(schema["properties"]["expression"]["description"]
        .as_str()
        .unwrap()
        .contains("expression"));
    let out = h
        .call(
            "calculator",
            "calculate",
            r#"{"expression":"2^10 / 4 - sqrt(16)"}"#,
        )
        .await
        .unwrap();
    assert_eq!(out.value["result"], "252");
    let e = h
        .call("calculator", "calculate", r#"{"expression":"1/(2-2)"}"#)
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::InvalidArguments { .. }), "{e}");
    assert!(e.to_string().contains("division by zero"), "{e}");
    let e = h
        .call("calculator", "calculate", r#"{"expr":"1"}"#)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expression"), "{e}");
    let e = h
        .call("calculator", "calculate", "{not json")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    let e = h.call("calculator", "draw", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::UnknownTool { .. }), "{e}");
    let e = h.call("nope", "x", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::NotFound(_)), "{e}");
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_within_its_budget() {
    let (_t, h) = loaded("", "").await;
    let t0 = Instant::now();
    let e = h.call("hostile", "spin", "{}").await.unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, PluginError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("time budget"), "{e}");
    // Budget 500 ms; the epoch ticks every 5 ms. Generous slack for a loaded CI machine.
    assert!(
        took >= Duration::from_millis(450),
        "stopped too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "not stopped in time: {took:?}"
    );
    still_works(&h).await;
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_cap() {
    let (_t, h) = loaded("", "").await;
    let e = h.call("hostile", "allocate", "{}").await.unwrap_err();
    assert!(
        matches!(e, PluginError::MemoryCap { limit_mib: 32, .. }),
        "{e}"
    );
    still_works(&h).await;
}

#[tokio::test]
async fn traps_panics_and_stack_overflows_are_clear_errors() {
    let (_t, h) = loaded("", "").await;
    let e = h.call("hostile", "trap", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::Crashed { .. }), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    still_works(&h).await;

    let e = h.call("hostile", "panic", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::Crashed { .. }), "{e}");
    assert!(e.to_string().contains("panicked on purpose"), "{e}");
    still_works(&h).await;

    let e = h.call("hostile", "recurse", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::StackOverflow { .. }), "{e}");
    still_works(&h).await;
}

#[tokio::test]
async fn bad_outputs_are_refused() {
    let (_t, h) = loaded("", "").await;
    let e = h.call("hostile", "bad_utf8", "{}").await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("utf-8"), "{e}");
    still_works(&h).await;

    let e = h.call("hostile", "bad_json", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::InvalidOutput { .. }), "{e}");
    still_works(&h).await;

    let e = h.call("hostile", "huge_output", "{}").await.unwrap_err();
    assert!(
        matches!(e, PluginError::OutputTooLarge { limit: 1048576, .. }),
        "{e}"
    );
    still_works(&h).await;
}

#[tokio::test]
async fn no_files_no_sockets_no_environment() {
    let (_t, h) = loaded("", "").await;
    let e = h.call("hostile", "read_file", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::Failed { .. }), "{e}");
    assert!(e.to_string().contains("read_file:"), "{e}");

    let e = h.call("hostile", "open_socket", "{}").await.unwrap_err();
    assert!(matches!(e, PluginError::Failed { .. }), "{e}");
    assert!(e.to_string().contains("open_socket:"), "{e}");

    let out = h.call("hostile", "environment", "{}").await.unwrap();
    assert_eq!(out.value["vars"], 0, "{}", out.json);
    assert_eq!(out.value["args"], 0, "{}", out.json);
    still_works(&h).await;
}

#[tokio::test]
async fn capabilities_not_granted_are_refused() {
    // The manifest asks for search and http; the operator grants nothing.
    let (_t, h) = loaded("capabilities = [\"search\", \"http\"]\n", "").await;
    let e = h.call("hostile", "search", "{}").await.unwrap_err();
    assert!(
        e.to_string().contains("capability `search` is not granted"),
        "{e}"
    );
    let e = h
        .call("hostile", "http", r#"{"url":"https://example.org/"}"#)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("capability `http` is not granted"),
        "{e}"
    );
    // Arguments must be an object: the host refuses before the plugin runs.
    let e = h
        .call("hostile", "http", "\"https://example.org/\"")
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::InvalidArguments { .. }), "{e}");
    still_works(&h).await;
}

struct Fixed;

#[async_trait]
impl SearchBackend for Fixed {
    async fn search(&self, query: &str, k: usize) -> Result<Vec<SearchHit>, String> {
        Ok((0..k)
            .map(|i| SearchHit {
                text: format!("passage {i} about {query}"),
                source: format!("doc{i}.md"),
                doc_id: format!("d{i}"),
                score: 1.0 / (i + 1) as f32,
            })
            .collect())
    }
}

#[tokio::test]
async fn granted_search_reaches_the_backend_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    install(&dir, "search", "capabilities = [\"search\"]\n");
    let mut h = host(&tmp.path().join("cache"));
    h.set_search(Arc::new(Fixed));
    let r = h
        .load_dir(&dir, &operator("[plugins.search]\ngrant = [\"search\"]\n"))
        .await;
    assert!(r[0].is_ok(), "{r:?}");
    let out = h
        .call("search", "search", r#"{"query":"magpies","k":3}"#)
        .await
        .unwrap();
    let hits = out.value.as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["source"], "doc0.md");
    assert!(hits[0]["text"].as_str().unwrap().contains("magpies"));
    let e = h
        .call("search", "search", r#"{"query":"  "}"#)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

#[tokio::test]
async fn calls_run_concurrently_while_one_spins() {
    let (_t, h) = loaded("", "").await;
    let h = Arc::new(h);
    let spin = {
        let h = h.clone();
        tokio::spawn(async move { h.call("hostile", "spin", "{}").await })
    };
    let mut tasks = Vec::new();
    // More calls at once than the pool has slots (64): the rest wait, none fail.
    for i in 0..100 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call(
                "calculator",
                "calculate",
                &format!(r#"{{"expression":"{i}*{i}"}}"#),
            )
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        assert_eq!(out.value["value"], (i * i) as f64);
    }
    assert!(matches!(
        spin.await.unwrap(),
        Err(PluginError::Timeout { .. })
    ));
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    install(&dir, "calculator", "");
    let cache = tmp.path().join("cache");
    let mut first = host(&cache);
    first.load_dir(&dir, &operator("")).await;
    assert!(!first.plugin("calculator").unwrap().timings.cached);
    let mut second = host(&cache);
    second.load_dir(&dir, &operator("")).await;
    assert!(second.plugin("calculator").unwrap().timings.cached);
    let out = second
        .call("calculator", "calculate", r#"{"expression":"7*6"}"#)
        .await
        .unwrap();
    assert_eq!(out.value["result"], "42");

    // A cache entry changed on disk (here: bytes flipped in its code, header
    // intact) is noticed by its checksum and compiled again, never run.
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a cache entry");
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b = 0xCC; // int3
    }
    std::fs::write(&entry, &bytes).unwrap();
    let mut third = host(&cache);
    for r in third.load_dir(&dir, &operator("")).await {
        r.unwrap();
    }
    assert!(!third.plugin("calculator").unwrap().timings.cached);
    let out = third
        .call("calculator", "calculate", r#"{"expression":"6*7"}"#)
        .await
        .unwrap();
    assert_eq!(out.value["result"], "42");
    // The recompiled entry is written back, checksum and all.
    let mut fourth = host(&cache);
    fourth.load_dir(&dir, &operator("")).await;
    assert!(fourth.plugin("calculator").unwrap().timings.cached);
}

#[tokio::test]
async fn broken_plugins_are_reported_and_the_others_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    install(&dir, "calculator", "");
    // Not WebAssembly.
    std::fs::create_dir_all(dir.join("junk")).unwrap();
    std::fs::write(dir.join("junk/junk.wasm"), b"this is not wasm").unwrap();
    std::fs::write(
        dir.join("junk/plugin.toml"),
        "name = \"junk\"\nwasm = \"junk.wasm\"\n",
    )
    .unwrap();
    // Escapes its directory.
    std::fs::create_dir_all(dir.join("escape")).unwrap();
    std::fs::write(
        dir.join("escape/plugin.toml"),
        "name = \"escape\"\nwasm = \"../calculator/calculator.wasm\"\n",
    )
    .unwrap();
    // Claims another name than the component has.
    std::fs::create_dir_all(dir.join("liar")).unwrap();
    std::fs::copy(wasm("solver"), dir.join("liar/liar.wasm")).unwrap();
    std::fs::write(
        dir.join("liar/plugin.toml"),
        "name = \"liar\"\nwasm = \"liar.wasm\"\n",
    )
    .unwrap();
    // A typo in a manifest.
    std::fs::create_dir_all(dir.join("typo")).unwrap();
    std::fs::write(
        dir.join("typo/plugin.toml"),
        "name = \"typo\"\nwsam = \"x.wasm\"\n",
    )
    .unwrap();

    let mut h = host(&tmp.path().join("cache"));
    let results = h.load_dir(&dir, &operator("")).await;
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("junk") && e.contains("not a valid WebAssembly component")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("inside the plugin's directory")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("calls itself \"solver\"")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("wsam")), "{errors:?}");
    assert_eq!(h.plugins().count(), 1);
    assert!(h
        .call("calculator", "calculate", r#"{"expression":"1+1"}"#)
        .await
        .is_ok());
}

#[tokio::test]
async fn disabled_plugins_are_not_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    install(&dir, "calculator", "");
    install(&dir, "solver", "");
    let mut h = host(&tmp.path().join("cache"));
    h.load_dir(&dir, &operator("[plugins.solver]\nenabled = false\n"))
        .await;
    let names: Vec<&str> = h.plugins().map(|p| p.description.name.as_str()).collect();
    assert_eq!(names, vec!["calculator"]);
}

#[tokio::test]
async fn solver_plugin_solves() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    install(&dir, "solver", "");
    let mut h = host(&tmp.path().join("cache"));
    h.load_dir(&dir, &operator("")).await;
    let out = h
        .call(
            "solver",
            "solve_linear",
            r#"{"equations":["2x + 3y = 7","x - y = 1"]}"#,
        )
        .await
        .unwrap();
    assert_eq!(out.value["solution"]["x"], "2");
    assert_eq!(out.value["solution"]["y"], "1");
    let out = h
        .call("solver", "roots", r#"{"polynomial":"x^2 - 5x + 6 = 0"}"#)
        .await
        .unwrap();
    assert_eq!(out.value["real"], serde_json::json!(["2", "3"]));
    let e = h
        .call(
            "solver",
            "solve_linear",
            r#"{"equations":["x + y = 1","x + y = 2"]}"#,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no solution"), "{e}");
}

#[tokio::test]
async fn fuel_stops_a_loop_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    install(&dir, "hostile", "");
    install(&dir, "calculator", "");
    let mut h = PluginHost::new(magpie_plugin_host::HostConfig {
        fuel: Some(50_000_000),
        cache_dir: Some(tmp.path().join("cache")),
        ..magpie_plugin_host::HostConfig::default()
    })
    .unwrap();
    for r in h.load_dir(&dir, &operator("")).await {
        r.unwrap();
    }
    let e = h.call("hostile", "spin", "{}").await.unwrap_err();
    assert!(
        matches!(
            e,
            PluginError::OutOfFuel {
                fuel: 50_000_000,
                ..
            }
        ),
        "{e}"
    );
    still_works(&h).await;
}
