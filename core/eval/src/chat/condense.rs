//! `eval chat --condense`: the model's standalone rewrites of follow-ups,
//! searched alone and fused with the history, against the other modes on
//! the same turns.

use std::collections::HashMap;

use anyhow::Result;
use magpie_core::{history_queries, ConversationRetriever, HistoryMode};
use serde::Serialize;

use magpie::progress::bar;

use super::{average, group_of, score_search, Table, Turn};
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
    pub retrieval: Table,
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
        retrieval: Table::new(),
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
            score_search(
                &mut out.retrieval,
                group_of(t, false),
                label,
                &r,
                &last,
                &rels,
            )
            .await?;
        }
    }
    pb.finish_and_clear();
    average(&mut out.retrieval);
    Ok(out)
}
