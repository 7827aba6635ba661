//! `docqa search`: one query against the index, printed or as JSON.

use std::time::Instant;

use anyhow::Result;
use magpie_core::{Filter, FusionWeights, QueryPipeline, SearchResult};

use crate::flags::{Mode, ModelArgs, OpenOptions};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  docqa search \"vitamin d fractures\"
  docqa search \"北京是哪个国家的首都\" --explain      why hybrid weighed dense and BM25 as it did
  docqa search \"install\" --filter source=README.md --json

Hybrid search weighs the dense list per query: a query (or hits) in a language
the embedding model does not declare counts the dense list only as far as it
agrees with BM25 (README: \"How hybrid search weighs its parts\").")]
pub struct SearchArgs {
    /// What to look for.
    pub query: String,
    /// Retrieval mode.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub mode: Mode,
    /// Number of results.
    #[arg(short, default_value_t = 5)]
    pub k: usize,
    /// Only chunks that pass: `source=PATH`, `doc=ID`, `meta.NAME=V` (`a|b` for any
    /// of), `meta.NAME>=N` (also >, <, <=). Repeat to require several.
    #[arg(long = "filter", value_name = "CLAUSE")]
    pub filters: Vec<String>,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Say how hybrid search weighed its parts: the query's detected
    /// language, the model's declared languages, the agreement between the
    /// lists and the weight each got.
    #[arg(long)]
    pub explain: bool,
}

pub async fn run(args: &SearchArgs, index: &std::path::Path, models: &ModelArgs) -> Result<()> {
    let filter = Filter::parse_all(&args.filters)?;
    let engine = crate::flags::open(index, models, OpenOptions::search())?;
    let mut fusion: Option<FusionWeights> = None;
    let result = if args.explain && args.mode == Mode::Hybrid {
        let hybrid = engine.hybrid_with(engine.embedder.clone());
        let t = Instant::now();
        let (hits, weights) = hybrid
            .retrieve_explained(&args.query, args.k, &filter)
            .await?;
        fusion = weights;
        SearchResult {
            query: args.query.clone(),
            hits,
            retrieval: t.elapsed(),
            rerank: None,
        }
    } else {
        QueryPipeline::new(engine.retriever(args.mode))
            .top_k(args.k)
            .filter(filter)
            .search(&args.query)
            .await?
    };
    if args.json {
        let mut v = serde_json::to_value(&result)?;
        if args.explain {
            v["fusion"] = serde_json::to_value(&fusion)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(w) = &fusion {
        let lang = w
            .query_language
            .as_ref()
            .map(|d| {
                format!(
                    "{} ({} script, confidence {:.2})",
                    d.lang, d.script, d.confidence
                )
            })
            .unwrap_or_else(|| "not detected".into());
        println!(
            "fusion: dense weight {:.2}, bm25 weight {:.2}; query language {lang}; \
             agreement {:.2} (top {} shared)",
            w.dense,
            w.bm25,
            w.agreement,
            magpie_core::fusion::AGREEMENT_DEPTH
        );
        for r in &w.reasons {
            println!("  {r}");
        }
        println!();
    } else if args.explain {
        println!(
            "fusion: only hybrid search fuses lists (this is {}).\n",
            args.mode.name()
        );
    }
    if result.hits.is_empty() {
        println!(
            "No results for {:?} ({} search).",
            args.query,
            args.mode.name()
        );
    }
    for (i, h) in result.hits.iter().enumerate() {
        let c = &h.chunk;
        let heading = crate::heading_suffix(&c.heading_path);
        println!(
            "{}. {}{}  score {:.4}{}",
            i + 1,
            c.source,
            c.span.cite_suffix(),
            h.score,
            heading
        );
        let text = h
            .snippet
            .clone()
            .unwrap_or_else(|| crate::preview(&c.text, 240));
        for line in text.lines().filter(|l| !l.trim().is_empty()).take(4) {
            println!("   {}", line.trim());
        }
    }
    tracing::info!(ms = result.retrieval.as_secs_f64() * 1e3, "search took");
    Ok(())
}
