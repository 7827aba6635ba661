//! Retrieval quality on a BEIR-format dataset (`docqa eval beir`): bm25,
//! dense and hybrid scored by nDCG@10, Recall@100 and MRR@10, with latencies.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use magpie_core::metrics::{docs_by_best_chunk, mrr_at, ndcg_at, recall_at};
use magpie_core::{
    reciprocal_rank_fusion, AdaptiveFusion, Embedder, FusionWeights, Hit, LanguageSupport,
    RunOptions,
};
use magpie_files::JsonlLoader;
use serde::Serialize;

use magpie::progress::{bar, BarProgress};
use magpie::{OpenOptions, SearchMode as Mode};

use crate::Setup;

/// A dataset's name (its folder's) and the index it is evaluated in: the
/// `--index` given, else `.magpie-eval/<name>`.
pub fn dataset_index(dir: &Path, index: Option<&Path>) -> (String, PathBuf) {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "dataset".into());
    let index_dir = index
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".magpie-eval").join(&name));
    (name, index_dir)
}

/// Relevance judgements: query id → (doc id → grade).
pub type Qrels = HashMap<String, HashMap<String, i32>>;

pub fn read_qrels(path: &Path) -> Result<Qrels> {
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut q: Qrels = HashMap::new();
    for (i, line) in raw.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            continue;
        }
        let Ok(score) = cols[2].trim().parse::<i32>() else {
            if i == 0 {
                continue; // header
            }
            bail!(
                "{} line {}: score {:?} is not an integer",
                path.display(),
                i + 1,
                cols[2]
            );
        };
        q.entry(cols[0].to_string())
            .or_default()
            .insert(cols[1].to_string(), score);
    }
    Ok(q)
}

pub fn read_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        let id = match &v["_id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => bail!("{} line {}: no _id", path.display(), i + 1),
        };
        out.push((id, v["text"].as_str().unwrap_or_default().to_string()));
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((v.len() - 1) as f64 * p).round() as usize;
    v[idx]
}

#[derive(Debug, Serialize)]
pub struct ModeScores {
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    #[serde(rename = "recall@100")]
    pub recall100: f64,
    #[serde(rename = "mrr@10")]
    pub mrr10: f64,
    pub queries: usize,
    /// Search latency per query in milliseconds, query embedding excluded.
    pub latency_ms: Latency,
    /// The same with the query embedding included (dense and hybrid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_with_embedding_ms: Option<Latency>,
}

#[derive(clap::Args, Debug)]
pub struct BeirArgs {
    /// Dataset directory: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv (SPLIT: --split).
    pub dir: PathBuf,
    /// Which qrels file to score against.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Modes to score (comma-separated).
    #[arg(long, value_delimiter = ',', default_values = ["bm25", "dense", "hybrid"])]
    pub modes: Vec<Mode>,
    /// Score only the first N judged queries.
    #[arg(long)]
    pub max_queries: Option<usize>,
    /// Chunks retrieved per query before grouping by document.
    #[arg(long, default_value_t = 300)]
    pub chunks: usize,
    /// Weight of title matches relative to body matches in BM25.
    #[arg(long, default_value_t = magpie_tantivy::DEFAULT_TITLE_BOOST)]
    pub title_boost: f32,
    /// Print one JSON object keyed by mode (plus `fusion`, and `languages`
    /// with --langs).
    #[arg(long)]
    pub json: bool,
    /// Also score each query language apart (for mixed corpora).
    #[arg(long)]
    pub langs: bool,
    /// Write one JSON line per query to this file: its id, detected
    /// language, fusion weights and per-mode nDCG@10 (to study fusion).
    #[arg(long, value_name = "FILE")]
    pub per_query: Option<PathBuf>,
    /// Fuse hybrid with plain RRF (both weights 1) instead of the adaptive
    /// weights, to compare.
    #[arg(long)]
    pub fixed_weights: bool,
}

pub async fn run(args: &BeirArgs, index: Option<&Path>, setup: &dyn Setup) -> Result<()> {
    let corpus = args.dir.join("corpus.jsonl");
    let queries_path = args.dir.join("queries.jsonl");
    let qrels_path = args.dir.join("qrels").join(format!("{}.tsv", args.split));
    for p in [&corpus, &queries_path, &qrels_path] {
        if !p.exists() {
            bail!(
                "{} is missing: a BEIR dataset has corpus.jsonl, queries.jsonl and qrels/{}.tsv",
                p.display(),
                args.split
            );
        }
    }
    let (name, index_dir) = dataset_index(&args.dir, index);
    let engine = setup.open(
        &index_dir,
        OpenOptions {
            title_boost: Some(args.title_boost),
            ..OpenOptions::index()
        },
    )?;
    // Index the corpus (a no-op when it is already indexed).
    {
        let mut pipeline = engine.pipeline().await?;
        let loader = JsonlLoader::beir(&corpus);
        let progress = BarProgress::new(!args.json);
        let report = pipeline
            .run(&loader, &RunOptions { sync: true }, &progress)
            .await?;
        progress.finish();
        eprintln!(
            "{name}: {} documents indexed, {} unchanged, {} chunks in {:.1} s ({:.1} chunks/s); index at {}",
            report.indexed,
            report.unchanged,
            report.chunks,
            report.elapsed.as_secs_f64(),
            report.chunks_per_sec(),
            index_dir.display()
        );
    }
    let qrels = read_qrels(&qrels_path)?;
    let mut queries: Vec<(String, String)> = read_queries(&queries_path)?
        .into_iter()
        .filter(|(id, _)| qrels.contains_key(id))
        .collect();
    if let Some(n) = args.max_queries {
        queries.truncate(n);
    }
    if queries.is_empty() {
        bail!(
            "no query in {} has judgements in {}",
            queries_path.display(),
            qrels_path.display()
        );
    }
    let need_dense = args.modes.iter().any(|m| *m != Mode::Bm25);
    let need_bm25 = args.modes.iter().any(|m| *m != Mode::Dense);
    let embedder = engine.embedder.clone();
    let vectors = engine.vectors.clone();
    let keywords = engine.keywords.clone();
    // With a Qdrant store, hybrid is what users get: one request fused by the
    // server (client-side only for a query the embedder does not cover).
    let server_hybrid =
        (engine.remote.is_some() && args.modes.contains(&Mode::Hybrid) && !args.fixed_weights)
            .then(|| engine.retriever_with(magpie::SearchMode::Hybrid, embedder.clone()));

    struct PerQuery {
        bm25: Vec<Hit>,
        dense: Vec<Hit>,
        /// Hybrid as the server fused it (`None`: fused here from the two lists).
        server: Option<(Vec<Hit>, f64)>,
        t_embed: f64,
        t_dense: f64,
        t_bm25: f64,
    }
    let pb = bar(queries.len() as u64, "searching", !args.json);
    let mut results = Vec::with_capacity(queries.len());
    for (_, text) in &queries {
        let mut r = PerQuery {
            bm25: vec![],
            dense: vec![],
            server: None,
            t_embed: 0.0,
            t_dense: 0.0,
            t_bm25: 0.0,
        };
        if need_dense {
            let t = Instant::now();
            let v = embedder.embed_query(text).await?;
            r.t_embed = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            r.dense = vectors.search(&v, args.chunks).await?;
            r.t_dense = t.elapsed().as_secs_f64() * 1e3;
        }
        if need_bm25 {
            let t = Instant::now();
            r.bm25 = keywords.search(text, args.chunks).await?;
            r.t_bm25 = t.elapsed().as_secs_f64() * 1e3;
        }
        if let Some(h) = &server_hybrid {
            let t = Instant::now();
            let hits = h.retrieve(text, args.chunks).await?;
            // Its time without the query embedding, as for the other modes.
            let ms = (t.elapsed().as_secs_f64() * 1e3 - r.t_embed).max(0.0);
            r.server = Some((hits, ms));
        }
        results.push(r);
        pb.inc(1);
    }
    pb.finish_and_clear();

    let fusion = if args.fixed_weights {
        None
    } else {
        Some(AdaptiveFusion::for_embedder(embedder.clone()))
    };
    let weights: Vec<Option<FusionWeights>> = results
        .iter()
        .zip(&queries)
        .map(|(pq, (_, text))| {
            fusion
                .as_ref()
                .filter(|_| args.modes.contains(&Mode::Hybrid))
                .map(|f| f.weigh(text, &pq.dense, &pq.bm25))
        })
        .collect();
    let langs: Vec<String> = queries
        .iter()
        .map(|(_, text)| {
            magpie_core::detect_language(text)
                .map(|d| d.lang)
                .unwrap_or_else(|| "und".into())
        })
        .collect();
    let all: Vec<usize> = (0..queries.len()).collect();
    let score = |subset: &[usize]| -> BTreeMap<&'static str, ModeScores> {
        let mut out = BTreeMap::new();
        for mode in &args.modes {
            let (mut n, mut r, mut m) = (0.0, 0.0, 0.0);
            let mut lat = Vec::new();
            let mut lat_e = Vec::new();
            for &i in subset {
                let (qid, pq) = (&queries[i].0, &results[i]);
                let (hits, t) = match mode {
                    Mode::Bm25 => (pq.bm25.clone(), pq.t_bm25),
                    Mode::Dense => (pq.dense.clone(), pq.t_dense),
                    Mode::Hybrid if pq.server.is_some() => {
                        let (hits, ms) = pq.server.clone().unwrap_or_default();
                        (hits, ms)
                    }
                    Mode::Hybrid => {
                        let t = Instant::now();
                        let (wd, wb) = weights[i]
                            .as_ref()
                            .map(|w| (w.dense, w.bm25))
                            .unwrap_or((1.0, 1.0));
                        let fused = reciprocal_rank_fusion(
                            &[(wd, pq.dense.clone()), (wb, pq.bm25.clone())],
                            60.0,
                        );
                        let fuse = t.elapsed().as_secs_f64() * 1e3;
                        // the two searches run concurrently in HybridRetriever
                        (fused, pq.t_bm25.max(pq.t_dense) + fuse)
                    }
                };
                let ranked = docs_by_best_chunk(&hits);
                let rels = &qrels[qid];
                n += ndcg_at(&ranked, rels, 10);
                r += recall_at(&ranked, rels, 100);
                m += mrr_at(&ranked, rels, 10);
                lat.push(t);
                lat_e.push(t + pq.t_embed);
            }
            let q = subset.len().max(1) as f64;
            out.insert(
                mode.name(),
                ModeScores {
                    ndcg10: n / q,
                    recall100: r / q,
                    mrr10: m / q,
                    queries: subset.len(),
                    latency_ms: Latency {
                        p50: percentile(&mut lat, 0.5),
                        p99: percentile(&mut lat, 0.99),
                    },
                    latency_with_embedding_ms: (*mode != Mode::Bm25).then(|| Latency {
                        p50: percentile(&mut lat_e, 0.5),
                        p99: percentile(&mut lat_e, 0.99),
                    }),
                },
            );
        }
        out
    };
    let out = score(&all);
    if let Some(path) = &args.per_query {
        let mut lines = String::new();
        for (i, (qid, _)) in queries.iter().enumerate() {
            let pq = &results[i];
            let rels = &qrels[qid];
            let ndcg = |hits: &[Hit]| ndcg_at(&docs_by_best_chunk(hits), rels, 10);
            let (wd, wb) = weights[i]
                .as_ref()
                .map(|w| (w.dense, w.bm25))
                .unwrap_or((1.0, 1.0));
            let fused =
                reciprocal_rank_fusion(&[(wd, pq.dense.clone()), (wb, pq.bm25.clone())], 60.0);
            let plain =
                reciprocal_rank_fusion(&[(1.0, pq.dense.clone()), (1.0, pq.bm25.clone())], 60.0);
            let top_scores =
                |hits: &[Hit]| hits.iter().take(10).map(|h| h.score).collect::<Vec<_>>();
            let line = serde_json::json!({
                "id": qid,
                "lang": langs[i],
                "fusion": weights[i],
                "dense_scores": top_scores(&pq.dense),
                "bm25_scores": top_scores(&pq.bm25),
                "ndcg@10": {"bm25": ndcg(&pq.bm25), "dense": ndcg(&pq.dense), "hybrid": ndcg(&fused), "rrf": ndcg(&plain)},
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = FusionSummary::new(fusion.as_ref(), &weights, &langs);
    let mut by_lang: BTreeMap<String, BTreeMap<&'static str, ModeScores>> = BTreeMap::new();
    if args.langs {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, l) in langs.iter().enumerate() {
            groups.entry(l.as_str()).or_default().push(i);
        }
        for (l, idx) in groups {
            by_lang.insert(l.to_string(), score(&idx));
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&out)?;
        v["hybrid_fused_by"] = serde_json::json!(if server_hybrid.is_some() {
            "qdrant"
        } else {
            "magpie"
        });
        v["fusion"] = serde_json::to_value(&summary)?;
        if args.langs {
            v["languages"] = serde_json::to_value(&by_lang)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{name}: {} queries ({} split)", queries.len(), args.split);
        print_table(&out);
        println!("(latencies include query embedding for dense and hybrid)");
        if server_hybrid.is_some() {
            println!("(hybrid: one request fused by the Qdrant server, as a search does)");
        }
        summary.print();
        for (l, scores) in &by_lang {
            println!("\nqueries in {l}:");
            print_table(scores);
        }
    }
    Ok(())
}

fn print_table(out: &BTreeMap<&'static str, ModeScores>) {
    println!(
        "{:<8} {:>8} {:>11} {:>8} {:>12} {:>12} {:>8}",
        "mode", "nDCG@10", "Recall@100", "MRR@10", "p50 ms", "p99 ms", "queries"
    );
    for (mode, s) in out {
        let l = s
            .latency_with_embedding_ms
            .as_ref()
            .unwrap_or(&s.latency_ms);
        println!(
            "{:<8} {:>8.4} {:>11.4} {:>8.4} {:>12.2} {:>12.2} {:>8}",
            mode, s.ndcg10, s.recall100, s.mrr10, l.p50, l.p99, s.queries
        );
    }
}

/// What adaptive fusion did over the queries: the model's declared
/// languages, the queries' detected languages, and the dense weights.
#[derive(Debug, Serialize)]
pub struct FusionSummary {
    /// `adaptive` or `fixed` (plain RRF, `--fixed-weights`).
    pub rule: &'static str,
    /// What the embedding model declares.
    pub model_languages: Option<LanguageSupport>,
    /// Queries per detected language (ISO 639-3; `und` when undetected).
    pub query_languages: BTreeMap<String, usize>,
    /// Mean dense weight per query language (BM25's is always 1).
    pub mean_dense_weight: BTreeMap<String, f32>,
    /// Queries whose dense weight was below 1.
    pub reduced: usize,
}

impl FusionSummary {
    pub fn new(
        fusion: Option<&AdaptiveFusion>,
        weights: &[Option<FusionWeights>],
        langs: &[String],
    ) -> Self {
        let mut query_languages = BTreeMap::new();
        let mut sums: BTreeMap<String, (f32, usize)> = BTreeMap::new();
        let mut reduced = 0;
        for (w, l) in weights.iter().zip(langs) {
            *query_languages.entry(l.clone()).or_insert(0) += 1;
            let d = w.as_ref().map(|w| w.dense).unwrap_or(1.0);
            let e = sums.entry(l.clone()).or_insert((0.0, 0));
            e.0 += d;
            e.1 += 1;
            if d < 1.0 {
                reduced += 1;
            }
        }
        Self {
            rule: if fusion.is_some() {
                "adaptive"
            } else {
                "fixed"
            },
            model_languages: fusion.map(|f| f.support().clone()),
            query_languages,
            mean_dense_weight: sums
                .into_iter()
                .map(|(l, (s, n))| (l, s / n.max(1) as f32))
                .collect(),
            reduced,
        }
    }

    pub fn print(&self) {
        let model = match &self.model_languages {
            None => "plain RRF (--fixed-weights)".to_string(),
            Some(LanguageSupport::Unknown) => "model languages not declared".to_string(),
            Some(LanguageSupport::Multilingual) => "multilingual model".to_string(),
            Some(LanguageSupport::Only(l)) => format!("model declares {}", l.join(", ")),
        };
        let langs: Vec<String> = self
            .query_languages
            .iter()
            .map(|(l, n)| {
                format!(
                    "{l} {n} (dense weight {:.2})",
                    self.mean_dense_weight.get(l).copied().unwrap_or(1.0)
                )
            })
            .collect();
        println!(
            "fusion: {} rule, {model}; queries: {}; {} queries with dense weight below 1",
            self.rule,
            langs.join(", "),
            self.reduced
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qrels_parse_with_header_and_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.tsv");
        std::fs::write(&p, "query-id\tcorpus-id\tscore\r\n1\td1\t1\r\n1\td2\t2\r\n").unwrap();
        let q = read_qrels(&p).unwrap();
        assert_eq!(q["1"]["d2"], 2);
    }
}
