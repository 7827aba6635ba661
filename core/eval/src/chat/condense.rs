//! `eval chat --condense`: the model's standalone rewrites of follow-ups,
//! searched alone and fused with the history, against the other modes on
//! the same turns.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use magpie_core::metrics::{docs_by_best_chunk, ndcg_at, recall_at};
use magpie_core::{history_queries, ConversationRetriever, HistoryMode};
use serde::Serialize;

use magpie::progress::bar;

use super::{group_of, Scores, Turn};
use crate::Setup;

/// The modes scored on condensed turns: the three above and the two that
/// search with the model's rewrite.
pub(super) const CONDENSED_MODES: [(HistoryMode, &str); 5] = [
    (HistoryMode::LastTurn, "last turn"),
    (HistoryMode::Joined, "joined"),
    (HistoryMode::Fused, "fused"),
    (HistoryMode::Condensed, "condensed"),
    (HistoryMode::CondensedFused, "cond+fused"),
];

/// Turns condensed by the model, scored in every mode.
#[derive(Debug, Serialize)]
pub(super) struct Condensed {
    /// group → mode → scores, on the condensed turns only.
    pub retrieval: BTreeMap<String, BTreeMap<&'static str, Scores>>,
    /// Turns whose rewrite differs from the message as asked.
    pub rewritten: usize,
    /// Turns whose reply was no usable rewrite (searched as fused).
    pub unusable: usize,
    /// (message, rewrite) of the first few turns, for a look.
    pub examples: Vec<(String, String)>,
}

/// Condense up to `n` answerable turns that have a history and score them.
pub(super) async fn condense_turns(
    setup: &dyn Setup,
    inner: &std::sync::Arc<dyn magpie_core::Retriever>,
    turns: &[Turn],
    n: usize,
    progress: bool,
) -> Result<Condensed> {
    let llm = setup.generator()?;
    let chosen: Vec<(&Turn, String, Vec<String>)> = turns
        .iter()
        .filter(|t| !t.gold_doc_ids.is_empty())
        .filter_map(|t| {
            let (last, history) =
                history_queries(&t.messages, ConversationRetriever::DEFAULT_TURNS)?;
            (!history.is_empty()).then_some((t, last, history))
        })
        .take(n)
        .collect();
    let pb = bar(chosen.len() as u64, "condensing", progress);
    let mut out = Condensed {
        retrieval: BTreeMap::new(),
        rewritten: 0,
        unusable: 0,
        examples: Vec::new(),
    };
    for (t, last, history) in chosen {
        pb.inc(1);
        let rewrite = magpie_core::condense(llm.as_ref(), &history, &last).await?;
        match &rewrite {
            Some(r) => out.rewritten += (*r != last) as usize,
            None => out.unusable += 1,
        }
        if out.examples.len() < 8 {
            let shown = rewrite
                .clone()
                .unwrap_or_else(|| "(no usable rewrite)".into());
            out.examples.push((last.clone(), shown));
        }
        let rels: HashMap<String, i32> = t.gold_doc_ids.iter().map(|d| (d.clone(), 1)).collect();
        for (mode, label) in CONDENSED_MODES {
            let mut r = ConversationRetriever::new(inner.clone(), history.clone(), mode);
            if let Some(w) = &rewrite {
                r = r.with_rewrite(w.clone());
            }
            let hits = magpie_core::Retriever::retrieve(&r, &last, 30).await?;
            let ranked = docs_by_best_chunk(&hits);
            let s = out
                .retrieval
                .entry(group_of(t, false).to_string())
                .or_default()
                .entry(label)
                .or_default();
            s.turns += 1;
            s.recall5 += recall_at(&ranked, &rels, 5);
            s.ndcg10 += ndcg_at(&ranked, &rels, 10);
        }
    }
    pb.finish_and_clear();
    for by_mode in out.retrieval.values_mut() {
        for s in by_mode.values_mut() {
            let n = s.turns.max(1) as f64;
            s.recall5 /= n;
            s.ndcg10 /= n;
        }
    }
    Ok(out)
}
