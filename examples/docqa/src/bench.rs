//! `docqa bench embed`: embedding throughput on a file of sentences.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::flags::{ModelArgs, OpenOptions};

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
        .int8(models.embed_precision == "int8")
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

#[derive(clap::Args, Debug)]
pub struct IngestBenchArgs {
    /// A BEIR-style corpus.jsonl (`_id`, `title`, `text` per line), such as
    /// ../shared/data/scifact/corpus.jsonl.
    pub corpus: PathBuf,
    /// Use only the first N documents.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Chunk size in tokens (default: docqa's, 200).
    #[arg(long)]
    pub chunk_tokens: Option<usize>,
    /// Overlap between chunks in tokens (default: docqa's, 40).
    #[arg(long)]
    pub overlap: Option<usize>,
}

#[derive(Serialize)]
struct IngestBench {
    #[serde(rename = "impl")]
    runtime: String,
    docs: usize,
    chunks: usize,
    seconds: f64,
    docs_per_s: f64,
    chunks_per_s: f64,
    /// Share of the run's wall time the encoder was working.
    encoder_busy: f64,
    peak_rss_mib: f64,
}

/// Index the corpus into a fresh temporary index, from loading the models to
/// the last commit, and print one JSON line (scripts/bench_ingest.sh runs
/// LlamaIndex on the same documents beside it).
pub async fn ingest(args: &IngestBenchArgs, models: &ModelArgs) -> Result<()> {
    let tmp = tempfile::tempdir().context("creating a temporary index directory")?;
    let corpus = tmp.path().join("corpus.jsonl");
    let raw = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("reading {}", args.corpus.display()))?;
    let lines: Vec<&str> = raw
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    if lines.is_empty() {
        bail!("{} has no documents", args.corpus.display());
    }
    std::fs::write(&corpus, lines.join("\n") + "\n")?;
    let t = Instant::now();
    let opts = OpenOptions::index().chunking(args.chunk_tokens, args.overlap);
    let engine = crate::flags::open(&tmp.path().join("index"), models, opts)?;
    let backend = engine.embedder.backend();
    let mut pipeline = engine.pipeline().await?;
    let report = pipeline
        .run(
            &magpie_files::JsonlLoader::beir(&corpus),
            &magpie_core::RunOptions::default(),
            &magpie_core::NoProgress,
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    if !report.skipped.is_empty() {
        tracing::warn!(count = report.skipped.len(), "documents skipped");
    }
    let out = IngestBench {
        runtime: format!("magpie ({backend})"),
        docs: report.indexed,
        chunks: report.chunks,
        seconds: secs,
        docs_per_s: report.indexed as f64 / secs,
        chunks_per_s: report.chunks as f64 / secs,
        encoder_busy: report.encoder_busy(),
        peak_rss_mib: magpie_core::guard::peak_rss_mib().unwrap_or(0.0),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct MemoryBenchArgs {
    /// Buffer size in MiB (well past the last-level cache).
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Passes; the best is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

/// Read and copy bandwidth with one thread and with every core, as JSON lines.
pub fn memory(args: &MemoryBenchArgs) -> Result<()> {
    anyhow::ensure!(args.mib > 0, "--mib must be at least 1");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1];
    if cores > 1 {
        counts.push(cores);
    }
    for threads in counts {
        let b = magpie_candle::measure_bandwidth(args.mib << 20, threads, args.repeat);
        println!("{}", serde_json::to_string(&b)?);
    }
    Ok(())
}
