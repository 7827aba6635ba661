//! Retrieval metrics as BEIR computes them (trec_eval conventions): graded
//! judgements, documents ranked by their best chunk.

use std::collections::{HashMap, HashSet};

use crate::types::Hit;

/// nDCG@k with linear gains (as trec_eval and BEIR compute it).
pub fn ndcg_at(ranked: &[String], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| rels.get(d).copied().unwrap_or(0).max(0) as f64 / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<i32> = rels.values().copied().filter(|r| *r > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, r)| *r as f64 / ((i + 2) as f64).log2())
        .sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// Share of the relevant documents found in the first `k`.
pub fn recall_at(ranked: &[String], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let relevant: HashSet<&String> = rels
        .iter()
        .filter(|(_, r)| **r > 0)
        .map(|(d, _)| d)
        .collect();
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|d| relevant.contains(d))
        .count();
    found as f64 / relevant.len() as f64
}

/// Reciprocal rank of the first relevant document within the first `k`.
pub fn mrr_at(ranked: &[String], rels: &HashMap<String, i32>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|d| rels.get(d).is_some_and(|r| *r > 0))
        .map(|p| 1.0 / (p + 1) as f64)
        .unwrap_or(0.0)
}

/// Documents ranked by their best chunk.
pub fn docs_by_best_chunk(hits: &[Hit]) -> Vec<String> {
    let mut seen = HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.chunk.doc_id.clone()))
        .map(|h| h.chunk.doc_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, r)| (d.to_string(), *r)).collect()
    }
    fn ranked(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn perfect_ranking_scores_one() {
        let r = rels(&[("a", 1), ("b", 1)]);
        assert!((ndcg_at(&ranked(&["a", "b", "c"]), &r, 10) - 1.0).abs() < 1e-12);
        assert_eq!(recall_at(&ranked(&["a", "b"]), &r, 100), 1.0);
        assert_eq!(mrr_at(&ranked(&["a"]), &r, 10), 1.0);
    }

    #[test]
    fn ndcg_matches_hand_computation() {
        let r = rels(&[("a", 1)]);
        let got = ndcg_at(&ranked(&["x", "a"]), &r, 10);
        assert!((got - 1.0 / 3f64.log2()).abs() < 1e-12);
        assert_eq!(mrr_at(&ranked(&["x", "a"]), &r, 10), 0.5);
        assert_eq!(
            recall_at(&ranked(&["x", "y"]), &rels(&[("a", 1), ("b", 1)]), 100),
            0.0
        );
        assert_eq!(ndcg_at(&ranked(&["x"]), &rels(&[("a", 0)]), 10), 0.0);
    }
}
