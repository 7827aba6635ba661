//! `docqa eval chat <dir>`: retrieval in conversations. Each scored turn is
//! searched three ways (the last message alone, the recent user messages
//! joined, and the two fused) and scored against its gold passages: Recall@5
//! and nDCG@10, first turns and follow-ups apart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use magpie_core::metrics::{docs_by_best_chunk, ndcg_at, recall_at};
use magpie_core::{history_queries, ChatMessage, ConversationRetriever, HistoryMode, RunOptions};
use magpie_files::JsonlLoader;
use serde::{Deserialize, Serialize};

use crate::engine::{Mode, ModelArgs, OpenOptions};
use crate::progress::{bar, BarProgress};

/// `docqa eval chat`.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// A folder with corpus.jsonl (BEIR) and conversations.jsonl (one scored
    /// turn per line: id, messages, gold_doc_ids, answerability, answers);
    /// scripts/make_chat_set.py builds one from SQuAD.
    pub dir: PathBuf,
    /// Score only the first N turns.
    #[arg(long)]
    pub max_turns: Option<usize>,
    /// Retrieval mode for every search.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub mode: Mode,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One scored turn.
#[derive(Debug, Deserialize)]
struct Turn {
    id: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    gold_doc_ids: Vec<String>,
    #[serde(default)]
    answerability: String,
    /// first, follow-up, shift (a new subject mid-conversation) or alone.
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Scores {
    turns: usize,
    #[serde(rename = "recall@5")]
    recall5: f64,
    #[serde(rename = "ndcg@10")]
    ndcg10: f64,
}

const MODES: [(HistoryMode, &str); 3] = [
    (HistoryMode::LastTurn, "last turn"),
    (HistoryMode::Joined, "joined"),
    (HistoryMode::Fused, "fused"),
];

pub async fn run(args: &ChatArgs, index: Option<&Path>, models: &ModelArgs) -> Result<()> {
    let corpus = args.dir.join("corpus.jsonl");
    let convs = args.dir.join("conversations.jsonl");
    for p in [&corpus, &convs] {
        if !p.is_file() {
            bail!(
                "{} is missing: a chat set holds corpus.jsonl and conversations.jsonl \
                 (scripts/make_chat_set.py builds one from SQuAD)",
                p.display()
            );
        }
    }
    let name = args
        .dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "chat".into());
    let index_dir = index
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".magpie-eval").join(&name));
    let engine = crate::engine::open(&index_dir, models, OpenOptions::index())?;
    {
        let mut pipeline = engine.pipeline().await?;
        let progress = BarProgress::new(!args.json);
        let report = pipeline
            .run(
                &JsonlLoader::beir(&corpus),
                &RunOptions { sync: true },
                &progress,
            )
            .await?;
        progress.finish();
        eprintln!(
            "{name}: {} documents indexed, {} unchanged; index at {}",
            report.indexed,
            report.unchanged,
            index_dir.display()
        );
    }
    let mut turns = Vec::new();
    let raw =
        std::fs::read_to_string(&convs).with_context(|| format!("reading {}", convs.display()))?;
    for (i, line) in raw
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let t: Turn = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", convs.display(), i + 1))?;
        turns.push(t);
    }
    if let Some(n) = args.max_turns {
        turns.truncate(n);
    }
    let inner = engine.retriever(args.mode.into());
    // group → history mode → sums
    let mut sums: BTreeMap<String, BTreeMap<&'static str, Scores>> = BTreeMap::new();
    let pb = bar(turns.len() as u64, "searching", !args.json);
    for t in &turns {
        pb.inc(1);
        if t.gold_doc_ids.is_empty() {
            continue; // unanswerable: no passage to find
        }
        let Some((last, history)) =
            history_queries(&t.messages, ConversationRetriever::DEFAULT_TURNS)
        else {
            bail!("turn {}: no user message", t.id);
        };
        let group = match (
            t.kind.as_deref(),
            history.is_empty(),
            t.answerability.as_str(),
        ) {
            (_, _, "underspecified") | (Some("alone"), _, _) => "underspecified (no history)",
            (Some("shift"), _, _) => "changes of subject",
            (_, true, _) => "first turns",
            (_, false, _) => "follow-ups",
        };
        let rels: HashMap<String, i32> = t.gold_doc_ids.iter().map(|d| (d.clone(), 1)).collect();
        for (mode, label) in MODES {
            let r = ConversationRetriever::new(inner.clone(), history.clone(), mode);
            let hits = magpie_core::Retriever::retrieve(&r, &last, 30).await?;
            let ranked = docs_by_best_chunk(&hits);
            let s = sums
                .entry(group.to_string())
                .or_default()
                .entry(label)
                .or_default();
            s.turns += 1;
            s.recall5 += recall_at(&ranked, &rels, 5);
            s.ndcg10 += ndcg_at(&ranked, &rels, 10);
        }
    }
    pb.finish_and_clear();
    for by_mode in sums.values_mut() {
        for s in by_mode.values_mut() {
            let n = s.turns.max(1) as f64;
            s.recall5 /= n;
            s.ndcg10 /= n;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sums)?);
        return Ok(());
    }
    println!(
        "{name}: {} turns, {} retrieval",
        turns.len(),
        args.mode.name()
    );
    println!(
        "{:<30} {:<10} {:>7} {:>10} {:>9}",
        "turns", "history", "count", "Recall@5", "nDCG@10"
    );
    for (group, by_mode) in &sums {
        for (_, label) in MODES {
            if let Some(s) = by_mode.get(label) {
                println!(
                    "{group:<30} {label:<10} {:>7} {:>10.4} {:>9.4}",
                    s.turns, s.recall5, s.ndcg10
                );
            }
        }
    }
    Ok(())
}
