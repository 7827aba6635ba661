//! `docqa index`: a directory, a file, a JSONL corpus or a web page/site into
//! the index, once or (`--watch`) on every change.

use std::path::{Path, PathBuf};

use anyhow::Result;
use magpie_core::RunOptions;
use magpie_files::{DirectoryLoader, JsonlLoader};

use crate::flags::{ModelArgs, OpenOptions};
use crate::parse_size;
use magpie::progress;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  docqa index docs/
  docqa index docs/ --include '**/*.md' --exclude drafts/
  docqa index docs/ --sync            also remove documents whose files are gone
  docqa index corpus.jsonl            one document per line: {\"_id\", \"title\", \"text\"}
  docqa index https://example.org/page            one web page
  docqa index https://example.org/docs/ --crawl   the site, same host, robots.txt honoured

Files are read as text, Markdown (heading-aware), HTML (visible text), PDF (text per page;
citations say p. N), Word DOCX (heading styles as headings), EPUB (chapters in reading
order) or source code. Web pages: HTML main text, plain text, Markdown and PDF; a second
run sends conditional requests, so unchanged pages are not downloaded or embedded again.
.gitignore, .ignore and .magpieignore files are honoured. Binary, empty, undecodable
and oversized files are skipped with a reason, and the run goes on.")]
pub struct IndexArgs {
    /// A directory, a file, a .jsonl corpus, or an http(s) URL.
    path: PathBuf,
    /// Remove indexed documents from this path whose sources no longer exist.
    #[arg(long)]
    sync: bool,
    /// Only index files matching this glob (repeatable).
    #[arg(long)]
    include: Vec<String>,
    /// Skip files matching this gitignore-style glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Skip files larger than this (bytes, or with K/M/G suffix).
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    max_file_size: u64,
    /// Chunk size in embedding-model tokens (fixed when the index is created).
    #[arg(long)]
    chunk_tokens: Option<usize>,
    /// Tokens shared by consecutive chunks (fixed when the index is created).
    #[arg(long)]
    overlap: Option<usize>,
    /// Also index hidden files and directories.
    #[arg(long)]
    hidden: bool,
    /// Chunks written between commits: an interrupted run loses at most this much work.
    #[arg(long, default_value_t = 2048)]
    commit_every: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// With a URL: follow links on the same site (robots.txt honoured).
    #[arg(long)]
    crawl: bool,
    /// Keep running: re-index the directory whenever files are created, changed,
    /// renamed or deleted (changes are debounced; Ctrl-C stops).
    #[arg(long)]
    watch: bool,
    /// With --crawl: most pages fetched.
    #[arg(long, default_value_t = 200)]
    max_pages: usize,
    /// With --crawl: most links followed from the start page.
    #[arg(long, default_value_t = 3)]
    max_depth: usize,
    /// With a URL: pause between requests, milliseconds (robots.txt's Crawl-delay may raise it).
    #[arg(long, default_value_t = 250)]
    delay_ms: u64,
}

pub async fn run(args: &IndexArgs, index: &Path, models: &ModelArgs) -> Result<()> {
    let opts = OpenOptions::index().chunking(args.chunk_tokens, args.overlap);
    let engine = crate::flags::open(index, models, opts)?;
    let mut pipeline = engine
        .pipeline()
        .await?
        .commit_chunks(args.commit_every)
        .batch_chunks(args.commit_every.min(256));
    let folder = || {
        DirectoryLoader::new(&args.path)
            .include(args.include.clone())
            .exclude(args.exclude.clone())
            .max_file_size(args.max_file_size)
            .hidden(args.hidden)
            .skip_dir(index)
    };
    let is_jsonl = args.path.extension().is_some_and(|e| e == "jsonl") && args.path.is_file();
    let progress = progress::BarProgress::new(!args.json);
    let opts = RunOptions { sync: args.sync };
    let url = args
        .path
        .to_str()
        .filter(|p| p.starts_with("http://") || p.starts_with("https://"));
    // Watch from before the first run, so no change in between is missed.
    let changes = if args.watch && url.is_none() && !is_jsonl {
        Some(magpie::Changes::new(&args.path, index)?)
    } else {
        None
    };
    let report = if let Some(url) = url {
        let limits = magpie_web::CrawlLimits {
            max_pages: args.max_pages,
            max_depth: args.max_depth,
            delay: std::time::Duration::from_millis(args.delay_ms),
            ..Default::default()
        };
        let loader = magpie_web::WebLoader::new(url)
            .map_err(anyhow::Error::msg)?
            .crawl(args.crawl)
            .limits(limits)
            .map_err(anyhow::Error::msg)?
            .cache(index.join("web-cache.json"));
        pipeline.run(&loader, &opts, &progress).await?
    } else if is_jsonl {
        pipeline
            .run(&JsonlLoader::beir(&args.path), &opts, &progress)
            .await?
    } else {
        pipeline.run(&folder(), &opts, &progress).await?
    };
    progress.finish();
    let counts = (pipeline.catalog().len(), pipeline.catalog().chunk_count());
    print_index_report(&report, counts, index, args.json, args.watch);
    if args.watch {
        anyhow::ensure!(
            url.is_none() && !is_jsonl,
            "--watch follows a directory; a URL or a JSONL corpus cannot be watched"
        );
        let loader = folder();
        let Some(mut changes) = changes else {
            unreachable!("--watch sets up the watcher before the first run")
        };
        eprintln!(
            "Watching {} for changes (Ctrl-C to stop).",
            args.path.display()
        );
        while changes.next_batch().await {
            // Each batch: an incremental run that also drops documents whose
            // files are gone (a rename is a delete and a create).
            match pipeline
                .run(
                    &loader,
                    &RunOptions { sync: true },
                    &magpie_core::NoProgress,
                )
                .await
            {
                Ok(report) => {
                    let counts = (pipeline.catalog().len(), pipeline.catalog().chunk_count());
                    print_index_report(&report, counts, index, args.json, true);
                }
                Err(e) => {
                    tracing::error!("re-indexing failed: {e:#}");
                    eprintln!("re-indexing failed (will retry on the next change): {e:#}");
                }
            }
        }
    }
    Ok(())
}

/// Print what an indexing run did: JSON (one line when `compact`) or words.
fn print_index_report(
    report: &magpie_core::IndexReport,
    (documents, chunks): (usize, usize),
    index: &std::path::Path,
    json: bool,
    compact: bool,
) {
    if json {
        let v = serde_json::json!({
            "sources": report.sources,
            "indexed": report.indexed,
            "unchanged": report.unchanged,
            "chunks": report.chunks,
            "removed": report.removed,
            "repaired_chunks": report.repaired_chunks,
            "repaired_docs": report.repaired_docs,
            "skipped": report.skipped,
            "seconds": report.elapsed.as_secs_f64(),
            "chunks_per_sec": report.chunks_per_sec(),
            "encoder_busy": report.encoder_busy(),
            "documents_in_index": documents,
            "chunks_in_index": chunks,
        });
        if compact {
            println!("{v}");
        } else {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        return;
    }
    if report.repaired_chunks + report.repaired_docs > 0 {
        println!(
            "Repaired an interrupted run: removed {} leftover chunks, re-indexing {} incomplete documents.",
            report.repaired_chunks, report.repaired_docs
        );
    }
    if report.indexed == 0 && report.removed == 0 {
        println!(
            "Index is up to date: {} documents unchanged, nothing to embed.",
            report.unchanged
        );
    } else {
        println!(
            "Indexed {} documents ({} chunks) in {:.1} s, {:.1} chunks/s (the encoder busy {:.0}% of the time).",
            report.indexed,
            report.chunks,
            report.elapsed.as_secs_f64(),
            report.chunks_per_sec(),
            100.0 * report.encoder_busy()
        );
        println!(
            "Unchanged: {}  Removed: {}  Skipped: {}",
            report.unchanged,
            report.removed,
            report.skipped.len()
        );
    }
    for s in &report.skipped {
        println!("  skipped {}: {}", s.uri, s.reason);
    }
    println!(
        "The index at {} holds {documents} documents, {chunks} chunks.",
        index.display()
    );
}
