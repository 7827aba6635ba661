//! Two `docqa serve` processes on different ports and index directories, one
//! Qdrant collection (the real server; skipped loudly without one): both
//! answer, an upload to one is searchable from the other, its job is visible
//! from both, and indexing from either skips unchanged documents.

use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::server::{body, client, wait_job, Server};
use common::{docqa, json, run_ok, sample};

#[test]
fn two_servers_share_one_collection() {
    let collection = format!("docqa_shared_{}", std::process::id());
    let Some((_, url)) = qdrant_standin::real_qdrant(&collection) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ia, ib) = (tmp.path().join("a"), tmp.path().join("b"));
    let first = json(&run_ok(
        docqa(&ia)
            .args(["--store", &url, "index", "--json"])
            .arg(sample()),
    ));
    assert_eq!(first["indexed"], 7, "{first}");
    // The second place knows nothing but the store: it finds the index there.
    let again = json(&run_ok(
        docqa(&ib)
            .args(["--store", &url, "index", "--json"])
            .arg(sample()),
    ));
    assert_eq!(
        (again["indexed"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(7)),
        "{again}"
    );

    let sa = Server::start(&ia, &[]);
    let sb = Server::start(&ib, &[]);
    let c = client();
    let (_, la) = body(c.get(sa.at("/v1/documents")).send().unwrap());
    let (_, lb) = body(c.get(sb.at("/v1/documents")).send().unwrap());
    assert_eq!(la["count"], 7, "{la}");
    assert_eq!(la, lb);

    // An upload to A: searchable from B, its job visible from B.
    let text = "Lighthouse keepers wound the clockwork lamp every four hours.";
    let (st, job) = body(
        c.post(sa.at("/v1/documents"))
            .json(&json!({"text": text, "name": "lighthouse"}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(wait_job(&c, &sa, &id)["status"], "done");
    let t0 = Instant::now();
    loop {
        let (st, j) = body(c.get(sb.at(&format!("/v1/jobs/{id}"))).send().unwrap());
        if st == 200 && j["status"] == "done" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "B never saw job {id}: {st} {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in [&sb, &sa] {
        let (st, v) = body(
            c.post(s.at("/v1/search"))
                .json(&json!({"query": "who wound the clockwork lamp?", "k": 3}))
                .send()
                .unwrap(),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["hits"][0]["source"], "lighthouse.txt", "{v}");
    }
    let (_, lb) = body(c.get(sb.at("/v1/documents")).send().unwrap());
    assert_eq!(lb["count"], 8, "{lb}");

    // Both answer questions.
    for s in [&sa, &sb] {
        let (st, a) = body(
            c.post(s.at("/v1/query"))
                .json(&json!({"question": "How often was the clockwork lamp wound?", "max_tokens": 24}))
                .send()
                .unwrap(),
        );
        assert_eq!(st, 200, "{a}");
        assert!(!a["text"].as_str().unwrap().trim().is_empty(), "{a}");
    }

    // A delete on B reaches A.
    let doc = lb["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"] == "lighthouse.txt")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = body(
        c.delete(sb.at(&format!("/v1/documents/{doc}")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 200, "{v}");
    let (st, _) = body(
        c.get(sa.at(&format!("/v1/documents/{doc}")))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 404);
    drop((sa, sb));
    let status = json(&run_ok(docqa(&ia).args(["status", "--json"])));
    assert_eq!(status["consistent"], true, "{status}");
    assert_eq!(status["documents"], 7, "{status}");
}
