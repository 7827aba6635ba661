//! `docqa bench embed`: embedding throughput on a file of sentences.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::engine::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct EmbedBenchArgs {
    /// A text file with one sentence per line (see scripts/bench_embed.sh).
    #[arg(long)]
    pub sentences: PathBuf,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Use only the first N sentences.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

#[derive(Serialize)]
struct EmbedBench {
    runtime: String,
    sentences: usize,
    batch: usize,
    seconds: Vec<f64>,
    sentences_per_sec: f64,
}

pub fn embed(args: &EmbedBenchArgs, models: &ModelArgs) -> Result<()> {
    let raw = std::fs::read_to_string(&args.sentences)
        .with_context(|| format!("reading {}", args.sentences.display()))?;
    let mut sentences: Vec<String> = raw
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(n) = args.limit {
        sentences.truncate(n);
    }
    if sentences.is_empty() {
        bail!("{} has no sentences", args.sentences.display());
    }
    let spec = models.embed_spec();
    let emb = magpie_candle::BertEmbedder::builder(spec)
        .batch_size(args.batch)
        .build()?;
    // warm-up
    emb.embed_blocking(&sentences[..sentences.len().min(args.batch)])?;
    let mut secs = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let t = Instant::now();
        // All sentences in one call, as sentence-transformers' encode() takes them:
        // both sort by length and run `batch` sentences per forward pass.
        emb.embed_blocking(&sentences)?;
        secs.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = secs.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    let out = EmbedBench {
        runtime: format!("magpie ({})", emb.backend()),
        sentences: sentences.len(),
        batch: args.batch,
        seconds: secs,
        sentences_per_sec: sentences.len() as f64 / median,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
