//! `eval qa`: answer quality on a QA set in the BEIR layout whose
//! queries carry gold answers (`metadata.answers`), e.g. the SQuAD v1.1 dev view.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use magpie_core::{AnswerOptions, GenerationOptions, QueryPipeline, RunOptions};
use magpie_files::JsonlLoader;
use serde::Serialize;

use magpie::{OpenOptions, SearchMode as Mode};

use crate::beir::{read_qrels, FusionSummary};
use crate::Setup;
use magpie::progress::{bar, BarProgress};

#[derive(clap::Args, Debug)]
pub struct QaArgs {
    /// Dataset directory: corpus.jsonl, queries.jsonl (with metadata.answers), qrels/test.tsv.
    pub dir: PathBuf,
    /// Index only the first N documents of the corpus (questions are drawn from them).
    #[arg(long, default_value_t = 200)]
    pub docs: usize,
    /// Questions to answer, spread evenly over those documents.
    #[arg(long, default_value_t = 50)]
    pub questions: usize,
    /// Retrieval mode.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub mode: Mode,
    /// Passages retrieved per question.
    #[arg(short, default_value_t = 4)]
    pub k: usize,
    /// Most answer tokens.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Print the summary (and every answer) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also score each question language apart (for mixed corpora).
    #[arg(long)]
    pub langs: bool,
}

#[derive(Serialize)]
struct QaRow {
    id: String,
    question: String,
    gold: Vec<String>,
    answer: String,
    exact_match: bool,
    f1: f64,
    gold_passage_retrieved: bool,
    gold_passage_cited: bool,
    prompt_tokens: usize,
    time_to_first_token_ms: f64,
    /// The question's detected language (ISO 639-3; `und` when undetected).
    language: String,
    /// How hybrid fusion weighed the dense list for it (1 outside hybrid).
    dense_weight: f32,
}

#[derive(Serialize)]
struct QaSummary {
    model: String,
    questions: usize,
    documents: usize,
    mode: &'static str,
    exact_match: f64,
    f1: f64,
    retrieval_hit_rate: f64,
    citation_hit_rate: f64,
    mean_prompt_tokens: f64,
    mean_time_to_first_token_ms: f64,
    mean_answer_seconds: f64,
    fusion: FusionSummary,
    /// Exact match and F1 per question language (with --langs).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    languages: std::collections::BTreeMap<String, serde_json::Value>,
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// SQuAD normalisation: lowercase, no punctuation (ASCII or CJK), no English
/// articles, single spaces; Chinese characters become one token each (as the
/// CMRC 2018 evaluation scores them).
pub fn normalize(s: &str) -> String {
    let mut spaced = String::new();
    for c in s.to_lowercase().chars() {
        if c.is_ascii_punctuation() || !(c.is_alphanumeric() || c.is_whitespace()) {
            spaced.push(' ');
        } else if is_cjk(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    spaced
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Token-overlap F1 after normalisation.
pub fn token_f1(pred: &str, gold: &str) -> f64 {
    let p: Vec<String> = normalize(pred)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    let g: Vec<String> = normalize(gold)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    if p.is_empty() || g.is_empty() {
        return (p.is_empty() && g.is_empty()) as u8 as f64;
    }
    let mut pool = g.clone();
    let mut common = 0usize;
    for w in &p {
        if let Some(i) = pool.iter().position(|x| x == w) {
            pool.swap_remove(i);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let prec = common as f64 / p.len() as f64;
    let rec = common as f64 / g.len() as f64;
    2.0 * prec * rec / (prec + rec)
}

fn strip_citations(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

pub async fn run(args: &QaArgs, setup: &dyn Setup) -> Result<()> {
    let corpus = args.dir.join("corpus.jsonl");
    let queries = args.dir.join("queries.jsonl");
    let qrels = args.dir.join("qrels/test.tsv");
    for p in [&corpus, &queries, &qrels] {
        if !p.exists() {
            bail!(
                "{} is missing: a QA set has corpus.jsonl, queries.jsonl (with metadata.answers) \
                 and qrels/test.tsv",
                p.display()
            );
        }
    }
    let name = args
        .dir
        .canonicalize()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "qa".into());
    let work = PathBuf::from(".magpie-eval").join(format!("{name}-qa-{}", args.docs));
    std::fs::create_dir_all(&work)?;
    // the corpus subset
    let raw = std::fs::read_to_string(&corpus)
        .with_context(|| format!("reading {}", corpus.display()))?;
    let lines: Vec<&str> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(args.docs)
        .collect();
    let mut doc_ids = HashSet::new();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l)?;
        doc_ids.insert(v["_id"].as_str().unwrap_or_default().to_string());
    }
    let subset = work.join("corpus.jsonl");
    std::fs::write(&subset, lines.join("\n") + "\n")?;
    let engine = setup.open(&work.join("index"), OpenOptions::index())?;
    {
        let mut pipeline = engine.pipeline().await?;
        let progress = BarProgress::new(!args.json);
        pipeline
            .run(
                &JsonlLoader::beir(&subset),
                &RunOptions { sync: true },
                &progress,
            )
            .await?;
        progress.finish();
    }
    // questions whose gold paragraph is in the subset, spread evenly
    let qrels = read_qrels(&qrels)?;
    let mut pool = Vec::new();
    for line in std::fs::read_to_string(&queries)?
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let id = v["_id"].as_str().unwrap_or_default().to_string();
        let Some(gold_docs) = qrels.get(&id) else {
            continue;
        };
        if !gold_docs.keys().any(|d| doc_ids.contains(d)) {
            continue;
        }
        let answers: Vec<String> = v["metadata"]["answers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if answers.is_empty() {
            continue;
        }
        let gold: HashSet<String> = gold_docs.keys().cloned().collect();
        pool.push((
            id,
            v["text"].as_str().unwrap_or_default().to_string(),
            answers,
            gold,
        ));
    }
    if pool.is_empty() {
        bail!(
            "no question with gold answers refers to the first {} documents",
            args.docs
        );
    }
    let n = args.questions.min(pool.len()).max(1);
    let step = pool.len() as f64 / n as f64;
    let picked: Vec<_> = (0..n)
        .map(|i| pool[(i as f64 * step) as usize].clone())
        .collect();

    let llm = setup.generator()?;
    let llm = llm.as_ref();
    let pipeline = QueryPipeline::new(engine.retriever(args.mode)).top_k(args.k);
    let opts = AnswerOptions {
        k: args.k,
        max_context_tokens: 1000,
        few_shot: true,
        generation: GenerationOptions {
            max_tokens: args.max_tokens,
            ..GenerationOptions::greedy()
        },
        history: Vec::new(),
        // SQuAD's questions lean on the article's title ("What did he do
        // with Wardenclyffe?"): answer them as asked.
        clarify: false,
        abstention: None,
    };
    let fusion = (args.mode == Mode::Hybrid).then(|| engine.hybrid_with(engine.embedder.clone()));
    let pb = bar(n as u64, "answering", !args.json);
    let mut rows = Vec::new();
    let mut weights = Vec::new();
    let t0 = std::time::Instant::now();
    for (id, question, answers, gold) in &picked {
        let ans = pipeline.answer(question, llm, &opts).await?;
        // The weights fusion gave this question (the same retrieval again,
        // explained; cheap beside the answer).
        let w = match &fusion {
            Some(h) => {
                h.retrieve_explained(question, args.k, &magpie_core::Filter::none())
                    .await?
                    .1
            }
            None => None,
        };
        let language = magpie_core::detect_language(question)
            .map(|d| d.lang)
            .unwrap_or_else(|| "und".into());
        let text = strip_citations(&ans.text);
        let em = answers.iter().any(|g| normalize(g) == normalize(&text));
        let f1 = answers
            .iter()
            .map(|g| token_f1(&text, g))
            .fold(0.0, f64::max);
        let doc_of = |s: &magpie_core::Source| s.doc_id.clone();
        let retrieved = ans
            .sources
            .iter()
            .any(|s| gold.contains(&doc_of(s)) || gold.contains(&s.source));
        let cited = ans
            .citations
            .iter()
            .any(|s| gold.contains(&doc_of(s)) || gold.contains(&s.source));
        rows.push(QaRow {
            id: id.clone(),
            question: question.clone(),
            gold: answers.clone(),
            answer: ans.text.clone(),
            exact_match: em,
            f1,
            gold_passage_retrieved: retrieved,
            gold_passage_cited: cited,
            prompt_tokens: ans.usage.prompt_tokens,
            time_to_first_token_ms: ans.timings.time_to_first_token_ms,
            language,
            dense_weight: w.as_ref().map(|w| w.dense).unwrap_or(1.0),
        });
        weights.push(w);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let nf = rows.len() as f64;
    let mean = |f: &dyn Fn(&QaRow) -> f64| rows.iter().map(f).sum::<f64>() / nf;
    let summary = QaSummary {
        model: llm.model_id().to_string(),
        questions: rows.len(),
        documents: lines.len(),
        mode: args.mode.name(),
        exact_match: mean(&|r| r.exact_match as u8 as f64),
        f1: mean(&|r| r.f1),
        retrieval_hit_rate: mean(&|r| r.gold_passage_retrieved as u8 as f64),
        citation_hit_rate: mean(&|r| r.gold_passage_cited as u8 as f64),
        mean_prompt_tokens: mean(&|r| r.prompt_tokens as f64),
        mean_time_to_first_token_ms: mean(&|r| r.time_to_first_token_ms),
        mean_answer_seconds: t0.elapsed().as_secs_f64() / nf,
        fusion: FusionSummary::new(
            fusion
                .as_ref()
                .map(|_| magpie_core::AdaptiveFusion::for_embedder(engine.embedder.clone()))
                .as_ref(),
            &weights,
            &rows.iter().map(|r| r.language.clone()).collect::<Vec<_>>(),
        ),
        languages: if args.langs {
            by_language(&rows)
        } else {
            Default::default()
        },
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"summary": summary, "answers": rows})
            )?
        );
    } else {
        let mut o = std::io::stdout();
        writeln!(
            o,
            "{} questions over {} documents ({} retrieval, model {})",
            summary.questions, summary.documents, summary.mode, summary.model
        )?;
        writeln!(o, "  exact match        {:.3}", summary.exact_match)?;
        writeln!(o, "  token F1           {:.3}", summary.f1)?;
        writeln!(o, "  gold passage given {:.3}", summary.retrieval_hit_rate)?;
        writeln!(o, "  gold passage cited {:.3}", summary.citation_hit_rate)?;
        writeln!(
            o,
            "  mean prompt {:.0} tokens, first token after {:.0} ms, {:.1} s per answer",
            summary.mean_prompt_tokens,
            summary.mean_time_to_first_token_ms,
            summary.mean_answer_seconds
        )?;
        summary.fusion.print();
        for (lang, v) in &summary.languages {
            writeln!(
                o,
                "  {lang}: {} questions, exact match {:.3}, token F1 {:.3}, gold passage given {:.3}",
                v["questions"], v["exact_match"].as_f64().unwrap_or(0.0),
                v["f1"].as_f64().unwrap_or(0.0),
                v["retrieval_hit_rate"].as_f64().unwrap_or(0.0)
            )?;
        }
    }
    Ok(())
}

/// Exact match, F1 and retrieval hit rate per question language.
fn by_language(rows: &[QaRow]) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut groups: std::collections::BTreeMap<String, Vec<&QaRow>> = Default::default();
    for r in rows {
        groups.entry(r.language.clone()).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(lang, rs)| {
            let n = rs.len() as f64;
            let mean = |f: &dyn Fn(&QaRow) -> f64| rs.iter().map(|r| f(r)).sum::<f64>() / n;
            let v = serde_json::json!({
                "questions": rs.len(),
                "exact_match": mean(&|r| r.exact_match as u8 as f64),
                "f1": mean(&|r| r.f1),
                "retrieval_hit_rate": mean(&|r| r.gold_passage_retrieved as u8 as f64),
                "mean_dense_weight": mean(&|r| r.dense_weight as f64),
            });
            (lang, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation_and_f1() {
        assert_eq!(normalize("The  Denver Broncos!"), "denver broncos");
        assert_eq!(token_f1("Denver Broncos", "the Denver Broncos"), 1.0);
        assert!((token_f1("the Broncos won", "Denver Broncos") - 0.5).abs() < 1e-9);
        assert_eq!(token_f1("Paris", "London"), 0.0);
        assert_eq!(
            strip_citations("Denver Broncos [1, 2]."),
            "Denver Broncos ."
        );
        // Chinese is scored by characters, CJK punctuation dropped
        assert_eq!(normalize("喜鹊，的巢。"), "喜 鹊 的 巢");
        assert!((token_f1("喜鹊的巢", "喜鹊") - 2.0 / 3.0).abs() < 1e-9);
        assert!(token_f1("张世昌是足球运动员，司职守门员", "足球运动员") > 0.4);
    }
}
