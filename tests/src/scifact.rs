//! BEIR SciFact as one chunk per abstract (title and text), its test queries
//! and judgements: what the store parity test and the store benchmark read.

use std::collections::HashMap;
use std::path::Path;

use magpie_core::{chunk_id_for, Chunk, Span};

/// Judgements: query id → (document id → grade).
pub type Qrels = HashMap<String, HashMap<String, i32>>;

/// The judgements of the test split.
pub fn qrels(dir: &Path) -> Qrels {
    let mut rel: Qrels = HashMap::new();
    for line in std::fs::read_to_string(dir.join("qrels/test.tsv"))
        .expect("qrels/test.tsv")
        .lines()
        .skip(1)
    {
        let c: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if c.len() == 3 {
            rel.entry(c[0].into())
                .or_default()
                .insert(c[1].into(), c[2].trim().parse().unwrap_or(0));
        }
    }
    rel
}

/// The queries that have judgements, as (id, text).
pub fn queries(dir: &Path, rel: &Qrels) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(dir.join("queries.jsonl"))
        .expect("queries.jsonl")
        .lines()
    {
        let q: serde_json::Value = serde_json::from_str(line).expect("a query line");
        let id = q["_id"].as_str().unwrap_or_default().to_string();
        if rel.contains_key(&id) {
            out.push((id, q["text"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

/// The abstracts `keep` accepts (by document id), one chunk each.
pub fn chunks(dir: &Path, mut keep: impl FnMut(&str) -> bool) -> Vec<Chunk> {
    let mut out = Vec::new();
    for line in std::fs::read_to_string(dir.join("corpus.jsonl"))
        .expect("corpus.jsonl")
        .lines()
    {
        let d: serde_json::Value = serde_json::from_str(line).expect("a corpus line");
        let id = d["_id"].as_str().unwrap_or_default().to_string();
        if !keep(&id) {
            continue;
        }
        let text = format!(
            "{}\n{}",
            d["title"].as_str().unwrap_or(""),
            d["text"].as_str().unwrap_or("")
        );
        out.push(Chunk {
            id: chunk_id_for(&id, "scifact", 0),
            doc_id: id.clone(),
            doc_hash: "scifact".into(),
            source: id,
            index: 0,
            span: Span {
                byte_end: text.len(),
                ..Default::default()
            },
            text,
            heading_path: vec![],
            title: None,
            metadata: Default::default(),
        });
    }
    out
}
