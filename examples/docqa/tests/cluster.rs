//! A three-node Qdrant cluster on loopback (the real server, started by
//! `scripts/qdrant_cluster.sh`; skipped loudly without it): a collection of 3
//! shards, replication 2, write consistency 2. `docqa index` of generated
//! documents goes on while one node is killed with SIGKILL and restarted;
//! afterwards every acknowledged document is stored exactly once and `docqa
//! status` is consistent; searches during the outage succeed. A node that
//! stays down past the retries stops a run with a clear error and no catalog
//! entry for what was not stored.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{docqa, json, root, run_ok};

const DOCS: usize = 3000;

struct Cluster {
    dir: PathBuf,
    rest: String,
}

impl Cluster {
    fn script(args: &[&str]) -> String {
        let out = Command::new(root().join("scripts/qdrant_cluster.sh"))
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "qdrant_cluster.sh {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn kill(&self, node: usize) {
        Self::script(&["kill", self.dir.to_str().unwrap(), &node.to_string()]);
    }

    fn restart(&self, node: usize) {
        Self::script(&["restart", self.dir.to_str().unwrap(), &node.to_string()]);
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.rest))
            .json(&body)
            .send()
            .unwrap();
        r.json().unwrap()
    }

    /// Points in `collection`, counted exactly.
    fn count(&self, collection: &str) -> u64 {
        self.post(
            &format!("/collections/{collection}/points/count"),
            json!({"exact": true}),
        )["result"]["count"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every point's source, by scrolling the collection.
    fn sources(&self, collection: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut offset = Value::Null;
        loop {
            let page = self.post(
                &format!("/collections/{collection}/points/scroll"),
                json!({"limit": 1000, "offset": offset, "with_payload": ["source"], "with_vector": false}),
            );
            for p in page["result"]["points"].as_array().unwrap() {
                out.push(p["payload"]["source"].as_str().unwrap().to_string());
            }
            offset = page["result"]["next_page_offset"].clone();
            if offset.is_null() {
                return out;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/qdrant_cluster.sh"))
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}

fn tools_present() -> bool {
    let start = std::env::var_os("MAGPIE_QDRANT_START")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/tools/qdrant/start.sh"));
    if start.is_file() {
        return true;
    }
    let msg = format!(
        "\n*** SKIPPED: no Qdrant server to start ({} is missing), so the cluster test did not \
         run. scripts/test.sh runs it when ../shared/tools/qdrant is there. ***\n",
        start.display()
    );
    println!("{msg}");
    eprintln!("{msg}");
    false
}

/// Small documents, each with a word no other has (`zq<i>x`).
fn write_docs(dir: &Path, from: usize, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let birds = ["heron", "magpie", "kingfisher", "wren", "swift", "plover"];
    for i in from..from + n {
        let text = format!(
            "Survey record {i}. A {} was seen near square {} at dawn; marker zq{i}x.\n",
            birds[i % birds.len()],
            i % 97
        );
        std::fs::write(dir.join(format!("rec{i:05}.txt")), text).unwrap();
    }
}

fn search_ok(idx: &Path, word: &str) -> Value {
    json(&run_ok(docqa(idx).args([
        "search", "--json", "--mode", "bm25", "-k", "1", word,
    ])))
}

#[test]
fn a_node_killed_during_indexing_loses_no_acknowledged_write() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = 17400 + (std::process::id() % 100) * 40;
    let dir = tmp.path().join("cluster");
    let grpc = Cluster::script(&["start", dir.to_str().unwrap(), "3", &base.to_string()]);
    let cluster = Cluster {
        dir,
        rest: format!("http://127.0.0.1:{base}"),
    };
    let collection = "survey";
    let host = grpc.trim_start_matches("http://");
    let url =
        format!("qdrant+grpc://{host}/{collection}?shards=3&replication=2&write_consistency=2");
    let docs = tmp.path().join("docs");
    write_docs(&docs, 0, DOCS);
    let idx = tmp.path().join("idx");

    // Index in the background; kill node 2 once a few hundred points are in.
    let mut child = docqa(&idx)
        .args(["--store", &url, "index", "--json", "--commit-every", "256"])
        .arg(&docs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while cluster.count(collection) < 300 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "indexing ended before the kill"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "indexing does not progress"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(2);
    let killed_at = cluster.count(collection);
    assert!(
        child.try_wait().unwrap().is_none(),
        "indexing ended before the node went down"
    );
    // Searches while the node is down.
    for word in ["zq7x", "zq150x"] {
        let hits = search_ok(&idx, word);
        assert_eq!(hits["hits"].as_array().unwrap().len(), 1, "{hits}");
    }
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(2);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "indexing did not ride out the outage:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let retried = String::from_utf8_lossy(&out.stderr)
        .matches("retrying")
        .count();
    eprintln!(
        "node 2 killed with {killed_at} points stored; the run: {} indexed in {:.1}s, \
         {retried} requests retried",
        report["indexed"],
        t0.elapsed().as_secs_f64()
    );
    assert!(
        retried > 0,
        "the outage was never felt: the test proves nothing"
    );
    assert_eq!(report["indexed"], DOCS, "{report}");
    assert_eq!(report["skipped"], json!([]), "{report}");

    // Every document exactly once, and the catalog agrees.
    let sources = cluster.sources(collection);
    let unique: std::collections::HashSet<&String> = sources.iter().collect();
    assert_eq!(sources.len(), DOCS, "points stored");
    assert_eq!(unique.len(), DOCS, "a document stored twice");
    let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
    assert_eq!(status["consistent"], true, "{status}");
    assert_eq!(status["documents"], DOCS, "{status}");
    for i in [0, DOCS / 2, DOCS - 1] {
        let hits = search_ok(&idx, &format!("zq{i}x"));
        let source = hits["hits"][0]["chunk"]["source"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(source.ends_with(&format!("rec{i:05}.txt")), "{hits}");
    }

    // A node that stays down past the retries: a clear error, and no catalog
    // entry for what was not stored.
    cluster.kill(2);
    let more = tmp.path().join("more");
    write_docs(&more, DOCS, 40);
    let impatient = format!("{url}&retries=2");
    let out = docqa(&idx)
        .args(["--store", &impatient, "index", "--json"])
        .arg(&more)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "indexing with a node down succeeded");
    assert!(
        err.contains("still failing after 2 retries") && err.contains("run again"),
        "{err}"
    );
    cluster.restart(2);
    let status = json(&docqa(&idx).args(["status", "--json"]).output().unwrap());
    assert_eq!(
        status["documents"], DOCS,
        "a partial catalog entry: {status}"
    );
    // Run again with the node back: the new documents go in, and the index is
    // whole (what the failed run stored is taken over, not duplicated).
    let report = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(&more)));
    assert_eq!(report["indexed"], 40, "{report}");
    let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
    assert_eq!(status["consistent"], true, "{status}");
    assert_eq!(status["documents"], DOCS + 40, "{status}");
}
