//! One small trait per pipeline stage; connectors implement them.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::filter::{overfetch, Filter};
use crate::types::{Chunk, Document, Hit};

/// A source a loader found and can load (a file, a URL, a line of a dataset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// The uri documents from this source get (relative path, URL, dataset id).
    pub uri: String,
    /// Where the loader reads it from (absolute path, URL, ...).
    pub locator: String,
    /// Size in bytes, when known.
    pub size: Option<u64>,
}

/// A source that was not indexed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The source's uri or path.
    pub uri: String,
    /// A sentence a user can act on ("binary file", "over the 32 MiB limit: raise --max-file-size").
    pub reason: String,
}

/// What a loader found: sources to load and problems met while looking.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Sources to load, in a stable order.
    pub sources: Vec<SourceRef>,
    /// Entries that could not even be listed (unreadable directories, symlink loops, ...).
    pub skipped: Vec<Skipped>,
}

/// Finds and reads documents.
#[async_trait]
pub trait Loader: Send + Sync {
    /// A name for the set of sources this loader covers (its root); `--sync` only
    /// removes documents of the same origin.
    fn origin(&self) -> String;
    /// Told before [`Loader::list`] what the index holds of this origin (source
    /// uri → content hash, committed), so a loader that fetches conditionally
    /// (ETags) fetches in full whatever the index lacks. Default: ignored.
    fn indexed(&self, _held: &std::collections::HashMap<String, String>) {}
    /// List the sources to load.
    async fn list(&self) -> Result<Listing>;
    /// Load one source; `Err` says why it was skipped.
    async fn load(&self, source: &SourceRef) -> std::result::Result<Document, Skipped>;
}

/// Cuts a document into chunks.
pub trait Splitter: Send + Sync {
    /// Split `doc` into chunks whose spans point into `doc.text`.
    fn split(&self, doc: &Document) -> Vec<Chunk>;
}

/// Counts tokens the way a model does, so chunk sizes are in the model's tokens.
pub trait TokenCounter: Send + Sync {
    /// Byte ranges of each token of `text` (special tokens excluded).
    fn token_offsets(&self, text: &str) -> Vec<(usize, usize)>;
    /// Number of tokens in `text`.
    fn count(&self, text: &str) -> usize {
        self.token_offsets(text).len()
    }
}

/// Turns text into dense vectors.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// Identifies the model (stored with the index so a different model is refused).
    fn model_id(&self) -> &str;
    /// Length of the vectors.
    fn dimension(&self) -> usize;
    /// The languages the model was trained on, as its card declares them
    /// (hybrid search weighs the dense list by them, see [`crate::fusion`]).
    fn languages(&self) -> crate::lang::LanguageSupport {
        crate::lang::LanguageSupport::Unknown
    }
    /// Share of `text`'s tokens the model's vocabulary knows (not the unknown
    /// token), 0 to 1; `None` when the model cannot tell. Used when the
    /// languages are not declared.
    fn token_coverage(&self, _text: &str) -> Option<f32> {
        None
    }
    /// Embed passages (batched by the implementation).
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
    /// Embed a query; models with query prefixes override this.
    async fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        let mut v = self.embed(&[query.to_string()]).await?;
        v.pop()
            .ok_or_else(|| crate::Error::stage("embedder", "no vector returned for the query"))
    }
    /// Embed several queries at once; models whose queries embed like passages
    /// override this with one batched call (see [`crate::BatchingEmbedder`]).
    async fn embed_queries(&self, queries: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            out.push(self.embed_query(q).await?);
        }
        Ok(out)
    }
}

/// Identity of a stored chunk, used to check the stores against each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoredChunk {
    /// Chunk id.
    pub chunk_id: String,
    /// Document id.
    pub doc_id: String,
    /// Content hash of the document version the chunk came from.
    pub doc_hash: String,
}

/// Dense vectors with their chunks.
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Insert or replace chunks with their vectors (same length and order).
    async fn upsert(&self, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()>;
    /// Remove every chunk of these documents.
    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()>;
    /// Remove these chunks.
    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()>;
    /// The `k` nearest chunks to `vector`.
    async fn search(&self, vector: &[f32], k: usize) -> Result<Vec<Hit>>;
    /// The `k` nearest chunks to `vector` among those `filter` accepts. Stores
    /// that filter natively override this; the default asks for more hits and
    /// filters them here.
    async fn search_filtered(&self, vector: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        overfetch(k, filter, |n| self.search(vector, n)).await
    }
    /// Make every write so far durable.
    async fn commit(&self) -> Result<()>;
    /// Every stored chunk's identity.
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>>;
    /// Read back everything stored and check it. The default lists the chunks;
    /// stores that keep checksums or fingerprints check those too.
    async fn verify(&self) -> Result<crate::integrity::StoreHealth> {
        Ok(crate::integrity::StoreHealth::listed(
            self.list_chunks().await?,
        ))
    }
}

/// Full-text (BM25) search over chunks.
#[async_trait]
pub trait KeywordStore: Send + Sync {
    /// Insert or replace chunks.
    async fn upsert(&self, chunks: &[Chunk]) -> Result<()>;
    /// Remove every chunk of these documents.
    async fn delete_docs(&self, doc_ids: &[String]) -> Result<()>;
    /// Remove these chunks.
    async fn delete_chunks(&self, chunk_ids: &[String]) -> Result<()>;
    /// Make every write so far durable and visible.
    async fn commit(&self) -> Result<()>;
    /// The `k` best chunks for `query`, with snippets.
    async fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>>;
    /// The `k` best chunks for `query` among those `filter` accepts (the default
    /// asks for more hits and filters them here).
    async fn search_filtered(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        overfetch(k, filter, |n| self.search(query, n)).await
    }
    /// Every stored chunk's identity.
    async fn list_chunks(&self) -> Result<Vec<StoredChunk>>;
    /// Read back everything stored and check it (see [`VectorStore::verify`]).
    async fn verify(&self) -> Result<crate::integrity::StoreHealth> {
        Ok(crate::integrity::StoreHealth::listed(
            self.list_chunks().await?,
        ))
    }
    /// `text` as this store analyses it (its terms in order: split, stemmed,
    /// stop words dropped), each with its inverse document frequency among
    /// the stored chunks; `None` where the store cannot say (the default).
    /// Answerability weighs a question's words with it
    /// ([`crate::TermCoverage`]).
    fn weighted_terms(&self, _text: &str) -> Option<Vec<(String, f32)>> {
        None
    }
}

/// Finds chunks for a query.
#[async_trait]
pub trait Retriever: Send + Sync {
    /// A short name ("dense", "bm25", "hybrid").
    fn name(&self) -> &str;
    /// The `k` best chunks for `query`, best first.
    async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<Hit>>;
    /// The `k` best chunks for `query` that `filter` accepts, best first.
    /// Retrievers over filtering stores override this; the default asks for
    /// more hits and filters them here.
    async fn retrieve_filtered(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        overfetch(k, filter, |n| self.retrieve(query, n)).await
    }
}

/// Reorders retrieved chunks with a finer (slower) model.
#[async_trait]
pub trait Reranker: Send + Sync {
    /// Score `hits` against `query` and return them best first.
    async fn rerank(&self, query: &str, hits: Vec<Hit>) -> Result<Vec<Hit>>;
}
