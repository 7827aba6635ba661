//! The README's library quickstart: index a folder into the embedded stores, then
//! run a hybrid (dense + BM25) search.
//!
//! cargo run -p magpie-quickstart -- examples/docqa/sample "what does error E42 mean?"

use std::sync::Arc;

use magpie_candle::BertEmbedder;
use magpie_core::{
    AdaptiveFusion, Catalog, DenseRetriever, HybridRetriever, IndexingPipeline, KeywordRetriever,
    NoProgress, QueryPipeline, Retriever, RunOptions,
};
use magpie_files::{DirectoryLoader, TokenSplitter};
use magpie_qdrant::EdgeStore;
use magpie_tantivy::TantivyStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let folder = args
        .next()
        .unwrap_or_else(|| "examples/docqa/sample".into());
    let question = args
        .next()
        .unwrap_or_else(|| "what does error E42 mean?".into());
    let index = std::path::Path::new("target/quickstart-index");

    // Models and stores: all in-process, data under one directory.
    let embedder = Arc::new(BertEmbedder::load("models/all-MiniLM-L6-v2")?);
    let vectors = Arc::new(EdgeStore::open(index.join("vectors"), 384)?);
    let keywords = Arc::new(TantivyStore::open(index.join("keywords"))?);

    // Index: load → split (in the embedder's tokens) → embed → both stores.
    let splitter = Arc::new(TokenSplitter::new(embedder.token_counter()));
    let catalog = Catalog::open(index.join("catalog.json"))?;
    let mut indexing = IndexingPipeline::new(
        splitter,
        embedder.clone(),
        vectors.clone(),
        keywords.clone(),
        catalog,
    );
    let report = indexing
        .run(
            &DirectoryLoader::new(&folder),
            &RunOptions::default(),
            &NoProgress,
        )
        .await?;
    println!(
        "indexed {} documents ({} chunks)",
        report.indexed, report.chunks
    );

    // Query: dense and BM25 in parallel, fused by reciprocal rank, the dense
    // list weighed by the languages the model covers.
    let hybrid = HybridRetriever::new(vec![
        Arc::new(DenseRetriever::new(embedder.clone(), vectors)) as Arc<dyn Retriever>,
        Arc::new(KeywordRetriever::new(keywords)),
    ])
    .adaptive(AdaptiveFusion::for_embedder(embedder));
    let result = QueryPipeline::new(Arc::new(hybrid))
        .top_k(3)
        .search(&question)
        .await?;
    for hit in result.hits {
        let c = &hit.chunk;
        println!(
            "{}:{}-{}  {:.4}",
            c.source, c.span.line_start, c.span.line_end, hit.score
        );
    }
    Ok(())
}
