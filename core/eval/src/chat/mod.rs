//! `eval chat`: retrieval in conversations. Each scored turn is
//! searched three ways (the last message alone, the recent user messages
//! joined, and the two fused) and scored against its gold passages: Recall@5
//! and nDCG@10, first turns and follow-ups apart. `--condense N` also asks the
//! model to rewrite N follow-ups as standalone questions and scores searching
//! with the rewrite; `--answers N` answers turns end to end.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use magpie_core::metrics::{docs_by_best_chunk, ndcg_at, recall_at};
use magpie_core::{history_queries, ChatMessage, ConversationRetriever, HistoryMode, RunOptions};
use magpie_files::JsonlLoader;
use serde::{Deserialize, Serialize};

use magpie::progress::{bar, BarProgress};
use magpie::{OpenOptions, SearchMode as Mode};

use crate::Setup;

mod answers;
mod condense;

use answers::answer_turns;
use condense::{condense_turns, CONDENSED_MODES};

/// What `eval chat` scores, and how.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// A folder with corpus.jsonl (BEIR) and conversations.jsonl (one scored
    /// turn per line: id, messages, gold_doc_ids, answerability, answers);
    /// scripts/make_chat_set.py builds one from SQuAD or CMRC 2018.
    pub dir: PathBuf,
    /// Score only the first N turns.
    #[arg(long)]
    pub max_turns: Option<usize>,
    /// Retrieval mode for every search.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub mode: Mode,
    /// Also answer N turns with the language model (a third of them
    /// unanswerable, as far as the set has them): token F1 against the gold
    /// answers, and how often it says it does not know, on unanswerable turns
    /// and, wrongly, on answerable ones. A few seconds per answer.
    #[arg(long, default_value_t = 0)]
    pub answers: usize,
    /// Also condense up to N turns that have a history with the language
    /// model (its standalone rewrite of the last message, as LlamaIndex's
    /// condense-question engine) and score searching with the rewrite, alone
    /// and fused with the history, against the other modes on the same
    /// turns. About a second per turn.
    #[arg(long, default_value_t = 0)]
    pub condense: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// When the answers of --answers abstain: `measured` (the measured
    /// threshold, 0.5), `off`, or an answerability between 0 and 1.
    #[arg(long, default_value = "measured")]
    pub abstain: magpie::AbstainSetting,
    /// Write each answerable and unanswerable turn's retrieval signals (the
    /// question, its history, the top passages with their dense and BM25
    /// scores, each sentence's cosines to the question, and answerability's
    /// two parts and score) to this JSONL file, for calibrating abstention.
    #[arg(long)]
    pub signals: Option<PathBuf>,
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
    #[serde(default)]
    answers: Vec<String>,
    /// For an unanswerable turn, what the set held out: its paragraph (the
    /// rest of the article indexed) or its whole article.
    #[serde(default)]
    held_out: Option<String>,
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

pub async fn run(args: &ChatArgs, index: Option<&Path>, setup: &dyn Setup) -> Result<()> {
    let corpus = args.dir.join("corpus.jsonl");
    let convs = args.dir.join("conversations.jsonl");
    for p in [&corpus, &convs] {
        if !p.is_file() {
            bail!(
                "{} is missing: a chat set holds corpus.jsonl and conversations.jsonl \
                 (scripts/make_chat_set.py builds one from SQuAD or CMRC 2018)",
                p.display()
            );
        }
    }
    let (name, index_dir) = crate::beir::dataset_index(&args.dir, index);
    let engine = setup.open(&index_dir, OpenOptions::index())?;
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
    let inner = engine.retriever(args.mode);
    let dense = engine.retriever(magpie::SearchMode::Dense);
    let bm25 = engine.retriever(magpie::SearchMode::Bm25);
    let embedder: std::sync::Arc<dyn magpie_core::Embedder> = engine.embedder.clone();
    let scorer = magpie_core::Answerability::new(embedder.clone(), Some(engine.keywords.clone()));
    let threshold = scorer
        .can_score()
        .then_some(magpie_core::Answerability::THRESHOLD);
    // Answerability per answerable or unanswerable turn: (what was held out,
    // or "" when answerable; the score, +∞ where none could be read).
    let mut signals: Vec<(String, f32)> = Vec::new();
    // Clarifying questions asked, per group: (turns, asked).
    let mut clarified: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut dump = Vec::new();
    let mut sums = Table::new();
    let pb = bar(turns.len() as u64, "searching", !args.json);
    for t in &turns {
        pb.inc(1);
        let Some((last, history)) =
            history_queries(&t.messages, ConversationRetriever::DEFAULT_TURNS)
        else {
            bail!("turn {}: no user message", t.id);
        };
        let group = group_of(t, history.is_empty());
        let c = clarified.entry(group.to_string()).or_default();
        c.0 += 1;
        c.1 += (history.is_empty() && magpie_core::unresolved_reference(&last).is_some()) as usize;
        if matches!(t.answerability.as_str(), "answerable" | "unanswerable") {
            let r = ConversationRetriever::new(inner.clone(), history.clone(), HistoryMode::Fused);
            let hits = magpie_core::Retriever::retrieve(&r, &last, 8).await?;
            let earlier = &t.messages[..t.messages.len() - 1];
            let parts = scorer.parts(&last, earlier, &hits).await?;
            let score = scorer.combine(parts).unwrap_or(f32::INFINITY);
            let held = match t.answerability.as_str() {
                "unanswerable" => t.held_out.clone().unwrap_or_else(|| "paragraph".into()),
                _ => String::new(),
            };
            signals.push((held, score));
            if args.signals.is_some() {
                let mut v = signal_record(&inner, &dense, &bm25, t, &last, &history).await?;
                v["score"] = serde_json::json!(score.is_finite().then_some(score));
                v["parts"] = serde_json::json!(parts);
                v["sentences"] = sentence_cosines(&embedder, &last, earlier, &hits).await?;
                dump.push(v);
            }
        }
        if t.gold_doc_ids.is_empty() {
            continue; // unanswerable: no passage to find
        }
        let rels: HashMap<String, i32> = t.gold_doc_ids.iter().map(|d| (d.clone(), 1)).collect();
        for (mode, label) in MODES {
            let r = ConversationRetriever::new(inner.clone(), history.clone(), mode);
            score_search(&mut sums, group, label, &r, &last, &rels).await?;
        }
    }
    pb.finish_and_clear();
    average(&mut sums);
    if let Some(path) = &args.signals {
        let text: String = dump.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let curve = abstention_curve(&signals);
    let condensed = if args.condense > 0 {
        Some(condense_turns(setup, &inner, &turns, args.condense, !args.json).await?)
    } else {
        None
    };
    let answered = if args.answers > 0 {
        Some(
            answer_turns(
                setup,
                &inner,
                &turns,
                args.answers,
                engine.abstention(args.abstain),
                !args.json,
            )
            .await?,
        )
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"retrieval": sums, "abstention": curve, "threshold": threshold, "clarified": clarified, "answers": answered, "condensed": condensed})
            )?
        );
        return Ok(());
    }
    if let Some(a) = &answered {
        println!(
            "answers: {} answerable turns, token F1 {:.3}, said it does not know on {:.1}%; \
             {} unanswerable turns, said so on {:.1}%",
            a.answerable,
            a.f1,
            a.false_abstain * 100.0,
            a.unanswerable,
            a.abstain * 100.0
        );
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
    if let Some(f) = sums.get("follow-ups") {
        if let (Some(last), Some(fused)) = (f.get("last turn"), f.get("fused")) {
            if last.recall5 > 0.0 {
                println!(
                    "follow-ups: Recall@5 with the history (fused) is {:.2}× the last turn's alone",
                    fused.recall5 / last.recall5
                );
            }
        }
    }
    if let Some(c) = &condensed {
        let n: usize = c
            .retrieval
            .values()
            .filter_map(|m| m.get("fused"))
            .map(|s| s.turns)
            .sum();
        println!(
            "\ncondensed by the model ({n} turns with a history; {} rewritten, {} replies no \
             usable rewrite, searched as fused):",
            c.rewritten, c.unusable
        );
        for (group, by_mode) in &c.retrieval {
            for (_, label) in CONDENSED_MODES {
                if let Some(s) = by_mode.get(label) {
                    println!(
                        "{group:<30} {label:<10} {:>7} {:>10.4} {:>9.4}",
                        s.turns, s.recall5, s.ndcg10
                    );
                }
            }
        }
        for (q, r) in &c.examples {
            println!("  {q:?} → {r:?}");
        }
    }
    let kinds: Vec<String> = {
        let mut k: Vec<String> = signals
            .iter()
            .filter(|s| !s.0.is_empty())
            .map(|s| s.0.clone())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    println!(
        "\nabstaining below an answerability (the best cosine between the question, alone or \
         with the history, and one sentence of the top passages, with how much of the \
         conversation's rare words one passage holds; ½ at the measured threshold), over {} \
         answerable turns and unanswerable ones by what was held out:",
        signals.iter().filter(|s| s.0.is_empty()).count()
    );
    print!("{:>9} {:>18}", "score <", "false (answerable)");
    for k in &kinds {
        let n = signals.iter().filter(|s| &s.0 == k).count();
        print!(" {:>22}", format!("{k} held out ({n})"));
    }
    let unanswerable = signals.iter().filter(|s| !s.0.is_empty()).count();
    print!(" {:>22}", format!("all unanswerable ({unanswerable})"));
    println!();
    for p in &curve {
        let mark = if threshold.is_some_and(|t| (t - p.threshold).abs() < 1e-4) {
            "  ← the default"
        } else {
            ""
        };
        print!("{:>9.3} {:>18.3}", p.threshold, p.false_abstain);
        for k in &kinds {
            print!(" {:>22.3}", p.abstain.get(k).copied().unwrap_or(0.0));
        }
        print!(" {:>22.3}", p.abstain_all);
        println!("{mark}");
    }
    println!("\nclarifying questions (a pronoun nothing before it names, no history):");
    for (group, (n, asked)) in &clarified {
        println!(
            "{group:<30} {n:>5} turns, asked on {:>5.1}%",
            *asked as f64 * 100.0 / (*n).max(1) as f64
        );
    }
    Ok(())
}

/// group → history mode → scores (sums, then means).
type Table = BTreeMap<String, BTreeMap<&'static str, Scores>>;

/// Search for `last` with `r` and add the result's scores against `rels`
/// to `table` under `group` and `label`.
async fn score_search(
    table: &mut Table,
    group: &str,
    label: &'static str,
    r: &ConversationRetriever,
    last: &str,
    rels: &HashMap<String, i32>,
) -> Result<()> {
    let hits = magpie_core::Retriever::retrieve(r, last, 30).await?;
    let ranked = docs_by_best_chunk(&hits);
    let s = table
        .entry(group.to_string())
        .or_default()
        .entry(label)
        .or_default();
    s.turns += 1;
    s.recall5 += recall_at(&ranked, rels, 5);
    s.ndcg10 += ndcg_at(&ranked, rels, 10);
    Ok(())
}

/// A table's sums turned into means.
fn average(table: &mut Table) {
    for s in table.values_mut().flat_map(|m| m.values_mut()) {
        let n = s.turns.max(1) as f64;
        s.recall5 /= n;
        s.ndcg10 /= n;
    }
}

/// The group a turn is scored in.
fn group_of(t: &Turn, no_history: bool) -> &'static str {
    match (t.kind.as_deref(), no_history, t.answerability.as_str()) {
        (_, _, "underspecified") | (Some("alone"), _, _) => "underspecified (no history)",
        (_, _, "unanswerable") => "unanswerable",
        (Some("shift"), _, _) => "changes of subject",
        (_, true, _) => "first turns",
        (_, false, _) => "follow-ups",
    }
}

/// One turn's retrieval, as JSON: its label, question, history, and the top
/// passages of the fused, dense and BM25 searches with their scores.
async fn signal_record(
    fused: &std::sync::Arc<dyn magpie_core::Retriever>,
    dense: &std::sync::Arc<dyn magpie_core::Retriever>,
    bm25: &std::sync::Arc<dyn magpie_core::Retriever>,
    t: &Turn,
    last: &str,
    history: &[String],
) -> Result<serde_json::Value> {
    use magpie_core::Retriever;
    let mut lists = serde_json::Map::new();
    for (name, r, mode) in [
        ("fused", fused, HistoryMode::Fused),
        ("dense_last", dense, HistoryMode::LastTurn),
        ("dense_joined", dense, HistoryMode::Joined),
        ("bm25_last", bm25, HistoryMode::LastTurn),
        ("bm25_joined", bm25, HistoryMode::Joined),
    ] {
        let c = ConversationRetriever::new(r.clone(), history.to_vec(), mode);
        let hits = c.retrieve(last, 5).await?;
        let v: Vec<_> = hits
            .iter()
            .map(|h| serde_json::json!({"doc": h.chunk.doc_id, "score": h.score, "text": h.chunk.text}))
            .collect();
        lists.insert(name.to_string(), serde_json::Value::Array(v));
    }
    Ok(serde_json::json!({
        "id": t.id, "answerability": t.answerability, "kind": t.kind, "held_out": t.held_out,
        "last": last, "history": history, "gold": t.gold_doc_ids, "answers": t.answers,
        "hits": lists,
    }))
}

/// Every sentence sentence-match reads for a turn, with its cosine to the
/// question alone and to the question joined with the recent user turns.
async fn sentence_cosines(
    embedder: &std::sync::Arc<dyn magpie_core::Embedder>,
    question: &str,
    earlier: &[ChatMessage],
    hits: &[magpie_core::Hit],
) -> Result<serde_json::Value> {
    let texts = magpie_core::abstain::passage_sentences(hits);
    let cosines = magpie_core::SentenceMatch::new(embedder.clone())
        .cosines(question, earlier, &texts)
        .await?;
    Ok(serde_json::Value::Array(
        texts
            .iter()
            .zip(&cosines)
            .map(|(text, [alone, joined])| {
                serde_json::json!({"text": text, "alone": alone, "joined": joined})
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize)]
struct AbstainPoint {
    threshold: f32,
    /// Abstentions on answerable turns.
    false_abstain: f64,
    /// Abstentions on unanswerable turns, by what was held out.
    abstain: BTreeMap<String, f64>,
    /// Abstentions on all unanswerable turns.
    abstain_all: f64,
}

/// Abstention rates for answerability thresholds from 0.20 to 0.80: on
/// answerable turns (false), on unanswerable ones by what was held out, and
/// on all unanswerable ones.
fn abstention_curve(signals: &[(String, f32)]) -> Vec<AbstainPoint> {
    let rate_of = |all: Vec<&(String, f32)>, t: f32| {
        all.iter().filter(|s| s.1 < t).count() as f64 / all.len().max(1) as f64
    };
    let rate = |kind: &str, t: f32| rate_of(signals.iter().filter(|s| s.0 == kind).collect(), t);
    let mut kinds: Vec<&str> = signals
        .iter()
        .map(|s| s.0.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    kinds.sort();
    kinds.dedup();
    (0..=12)
        .map(|i| {
            let t = 0.20 + 0.05 * i as f32;
            AbstainPoint {
                threshold: t,
                false_abstain: rate("", t),
                abstain: kinds.iter().map(|k| (k.to_string(), rate(k, t))).collect(),
                abstain_all: rate_of(signals.iter().filter(|s| !s.0.is_empty()).collect(), t),
            }
        })
        .collect()
}
