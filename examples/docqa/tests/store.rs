//! docqa with its vectors in Qdrant: filters on both stores, `store copy` to a
//! server and back, indexing and searching through the remote store, against a
//! real Qdrant server (skipped, loudly, without one).

use std::path::Path;

mod common;
use common::{docqa, json, run_ok, sample};

/// The real Qdrant server (the one `scripts/test.sh` starts, or `QDRANT_URL`)
/// and a fresh collection on it; None: SKIPPED, said loudly.
fn server() -> Option<(String, String)> {
    qdrant_standin::real_qdrant(&format!("docqa_test_{}", std::process::id()))
}

fn search(idx: &Path, mode: &str, q: &str, filters: &[&str]) -> Vec<(String, String)> {
    let mut c = docqa(idx);
    c.args(["search", "--json", "-k", "5", "--mode", mode, q]);
    for f in filters {
        c.arg("--filter").arg(f);
    }
    let res = json(&run_ok(&mut c));
    res["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["chunk"]["source"].as_str().unwrap().to_string(),
                h["chunk"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn fails_with(c: &mut std::process::Command, says: &str) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{c:?} should fail");
    assert!(err.contains(says), "{c:?}: expected {says:?} in: {err}");
}

#[test]
fn filters_and_moving_an_index_to_qdrant_and_back() {
    if let Some((name, url)) = server() {
        eprintln!("--- docqa store against {name}");
        let tmp = tempfile::tempdir().unwrap();
        let idx = tmp.path().join("idx");
        let corpus = tmp.path().join("docs");
        copy_dir(&sample(), &corpus);
        run_ok(docqa(&idx).arg("index").arg(&corpus));
        // Sources are the files' paths.
        let root = corpus.canonicalize().unwrap();
        let src = |rel: &str| root.join(rel).to_string_lossy().into_owned();
        let (faq, install, grid) = (src("faq.txt"), src("guide/install.md"), src("grid.rs"));
        let source_is = |p: &str| format!("source={p}");

        // Filters on the embedded store.
        let q = "how do I upgrade without losing data";
        for mode in ["dense", "bm25", "hybrid"] {
            let hits = search(&idx, mode, q, &[&source_is(&faq)]);
            assert!(
                !hits.is_empty() && hits.iter().all(|h| h.0 == faq),
                "{mode}: {hits:?}"
            );
            assert!(
                search(&idx, mode, q, &["meta.title=No such title"]).is_empty(),
                "{mode}"
            );
        }
        fails_with(
            docqa(&idx).args(["search", q, "--filter", "year>2"]),
            "use source, doc or meta.NAME",
        );
        fails_with(
            docqa(&idx).args(["search", q, "--filter", "meta.x>abc"]),
            "not a number",
        );

        let before_dense = search(&idx, "dense", q, &[]);
        let before_filtered = search(&idx, "dense", q, &[&source_is(&install)]);

        // A store the index does not use is refused with the way to move it.
        fails_with(
            docqa(&idx).args(["--store", &url, "search", q]),
            "store copy --to",
        );
        fails_with(
            docqa(&idx).args(["store", "copy", "--to", "qdrant+grpc://key@h/x"]),
            "QDRANT_API_KEY",
        );

        // Move to the server: no embedding again, checked, the index switches.
        let out = run_ok(docqa(&idx).args(["store", "copy", "--quiet", "--to", &url]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("both hold the same chunks") && text.contains("now uses"),
            "{text}"
        );
        let settings: serde_json::Value =
            serde_json::from_slice(&std::fs::read(idx.join("magpie.json")).unwrap()).unwrap();
        assert!(
            settings["store"]
                .as_str()
                .unwrap()
                .starts_with("qdrant+grpc://"),
            "{settings}"
        );
        let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
        assert_eq!(status["consistent"], true, "{status}");
        assert!(status["chunks"].as_u64().unwrap() > 0, "{status}");
        let text = run_ok(docqa(&idx).arg("status"));
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("in Qdrant: qdrant+grpc://"), "{text}");
        // Copying again into a store that holds chunks needs --replace.
        fails_with(
            docqa(&idx).args([
                "store", "copy", "--quiet", "--from", "embedded", "--to", &url,
            ]),
            "--replace",
        );

        // The same dense results from the server; filters and hybrid (server-side fusion) work.
        assert_eq!(
            search(&idx, "dense", q, &[]),
            before_dense,
            "dense top-5 differs after the move"
        );
        assert_eq!(
            search(&idx, "dense", q, &[&source_is(&install)]),
            before_filtered
        );
        for mode in ["bm25", "hybrid"] {
            let hits = search(&idx, mode, q, &[]);
            assert!(hits.iter().any(|h| h.0 == install), "{mode}: {hits:?}");
            let hits = search(&idx, mode, q, &[&source_is(&faq)]);
            assert!(
                !hits.is_empty() && hits.iter().all(|h| h.0 == faq),
                "{mode}: {hits:?}"
            );
        }

        // Indexing writes to the server: unchanged files embed nothing, a changed one
        // replaces its chunks, a deleted one goes (--sync).
        let again = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus)));
        assert_eq!(again["chunks"], 0, "{again}");
        std::fs::write(
            corpus.join("faq.txt"),
            "Q: What colour is the zebra-finch beak?\nA: Bright orange-red, in males.\n",
        )
        .unwrap();
        std::fs::remove_file(corpus.join("grid.rs")).unwrap();
        let changed = json(&run_ok(
            docqa(&idx).args(["index", "--sync", "--json"]).arg(&corpus),
        ));
        assert_eq!(changed["indexed"], 1, "{changed}");
        assert_eq!(changed["removed"], 1, "{changed}");
        let hits = search(&idx, "hybrid", "zebra finch beak colour", &[]);
        assert_eq!(hits[0].0, faq, "{hits:?}");
        assert!(search(&idx, "bm25", "zebra", &[&source_is(&grid)]).is_empty());
        let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
        assert_eq!(status["consistent"], true, "{status}");

        // A Chinese query with the English-only default model: the server's
        // hybrid gives way to BM25's order (adaptive fusion, dense weight 0).
        std::fs::write(
            corpus.join("changcheng.txt"),
            "长城是中国古代的军事防御工程，长城修筑的历史可上溯到西周时期。",
        )
        .unwrap();
        std::fs::write(
            corpus.join("gugong.txt"),
            "故宫是中国明清两代的皇家宫殿，旧称紫禁城，位于北京中轴线的中心，长城以南。",
        )
        .unwrap();
        run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus));
        let q = "长城修筑的历史";
        let bm25 = search(&idx, "bm25", q, &[]);
        assert_eq!(bm25[0].0, src("changcheng.txt"), "{bm25:?}");
        let hybrid = search(&idx, "hybrid", q, &[]);
        assert_eq!(
            &hybrid[..bm25.len()],
            &bm25[..],
            "hybrid strays from BM25's order"
        );

        // And back to embedded, replacing the stale embedded copy.
        let out =
            run_ok(docqa(&idx).args(["store", "copy", "--quiet", "--to", "embedded", "--replace"]));
        assert!(String::from_utf8_lossy(&out.stdout).contains("now uses embedded"));
        let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
        assert_eq!(status["consistent"], true, "{status}");
        let hits = search(&idx, "bm25", "zebra finch beak", &[]);
        assert_eq!(
            hits[0].0, faq,
            "tantivy was rebuilt from the chunks: {hits:?}"
        );
        assert!(search(&idx, "dense", "zebra", &[&source_is(&grid)]).is_empty());
    }
}

#[test]
fn a_store_that_cannot_be_reached_leaves_no_index_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    fails_with(
        docqa(&idx)
            .args(["--store", "qdrant+grpc://127.0.0.1:1/x", "index"])
            .arg(sample()),
        "127.0.0.1:1",
    );
    assert!(
        !idx.join("magpie.json").exists(),
        "a failed start records no store"
    );
    fails_with(
        docqa(&idx)
            .args(["--store", "qdrant+grpc://h?shards=zero", "index"])
            .arg(sample()),
        "whole number",
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
