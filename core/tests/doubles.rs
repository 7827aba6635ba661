//! The indexing pipeline after a crash at every commit it makes, its sync
//! and replace paths, and answering with a scripted model, on the in-memory
//! test doubles (`magpie_core::testing`): milliseconds each, no model, no
//! files but the catalog.
//!
//! A crash is a store failing at its n-th commit as if the process died
//! there; the next process finds each store as of its last commit and the
//! catalog as last saved. Whatever the crash point, the next run repairs the
//! stores and leaves every document indexed exactly once.

use std::path::Path;
use std::sync::Arc;

use magpie_core::testing::{
    chunks_by_doc, HashingEmbedder, MemoryLoader, MemoryStore, WordSplitter,
};
use magpie_core::{
    doc_id_for, Catalog, IndexingPipeline, KeywordStore, NoProgress, RunOptions, VectorStore,
};

const DOCS: usize = 12;
const WORDS_PER_CHUNK: usize = 10;

/// Twelve documents of 25 words (3 chunks each), each with a word of its own.
fn corpus() -> MemoryLoader {
    MemoryLoader::new((0..DOCS).map(|i| {
        let text: Vec<String> = (0..25)
            .map(|w| {
                if w == 7 {
                    format!("unique{i}")
                } else {
                    format!("w{}", (i * 31 + w) % 40)
                }
            })
            .collect();
        (format!("doc{i}.txt"), text.join(" "))
    }))
}

fn pipeline(dir: &Path, vectors: &MemoryStore, keywords: &MemoryStore) -> IndexingPipeline {
    IndexingPipeline::new(
        Arc::new(WordSplitter::new(WORDS_PER_CHUNK)),
        Arc::new(HashingEmbedder::new(32)),
        Arc::new(vectors.clone()),
        Arc::new(keywords.clone()),
        Catalog::open(dir.join("catalog.json")).unwrap(),
    )
    // Small batches and commits: a run makes many commits to crash at.
    .batch_chunks(4)
    .commit_chunks(4)
    .concurrency(2)
}

/// Both stores hold exactly the catalog's chunks, each document's own word
/// finds it, and nothing is stored twice.
async fn assert_whole(dir: &Path, vectors: &MemoryStore, keywords: &MemoryStore, what: &str) {
    let p = pipeline(dir, vectors, keywords);
    let c = p.check().await.unwrap();
    assert!(c.is_consistent(), "{what}: {c:?}");
    assert_eq!(c.documents, DOCS, "{what}: {c:?}");
    assert_eq!(c.chunks, DOCS * 3, "{what}: {c:?}");
    let v = chunks_by_doc(&VectorStore::list_chunks(vectors).await.unwrap());
    let k = chunks_by_doc(&KeywordStore::list_chunks(keywords).await.unwrap());
    assert_eq!(v, k, "{what}: the stores differ");
    for i in 0..DOCS {
        let hits = KeywordStore::search(keywords, &format!("unique{i}"), 5)
            .await
            .unwrap();
        assert_eq!(hits.len(), 1, "{what}: unique{i}: {hits:?}");
        assert_eq!(
            hits[0].chunk.doc_id,
            doc_id_for(&format!("doc{i}.txt")),
            "{what}"
        );
    }
}

/// The corpus with every other document rewritten.
fn edited() -> MemoryLoader {
    let loader = corpus();
    for i in (0..DOCS).step_by(2) {
        let words: Vec<String> = (0..24).map(|w| format!("v2w{w}")).collect();
        loader.set(
            &format!("doc{i}.txt"),
            &format!("edited{i} {}", words.join(" ")),
        );
    }
    loader
}

/// Index the corpus; then crash the vector store (or the keyword store) at
/// commit `n` of a run over the edited corpus; restart, and index the
/// original corpus again (the edits were undone meanwhile), so the half-written
/// second versions are left for repair to find.
async fn crash_and_recover(crash_vectors: bool, n: usize) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    pipeline(dir.path(), &vectors, &keywords)
        .run(&corpus(), &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let crashing = if crash_vectors { &vectors } else { &keywords };
    let before = crashing.commits();
    crashing.crash_at_commit(before + n);
    let second = pipeline(dir.path(), &vectors, &keywords)
        .run(&edited(), &RunOptions::default(), &NoProgress)
        .await;
    if second.is_ok() {
        // The run made fewer than n commits: nothing to crash at.
        assert!(crashing.commits() < before + n);
        return false;
    }
    let (vectors, keywords) = (vectors.restarted(), keywords.restarted());
    let report = pipeline(dir.path(), &vectors, &keywords)
        .run(&corpus(), &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.indexed + report.unchanged, DOCS, "{report:?}");
    let what = format!(
        "crash of the {} store at commit {n} of the second run",
        if crash_vectors { "vector" } else { "keyword" }
    );
    assert_whole(dir.path(), &vectors, &keywords, &what).await;
    assert!(
        KeywordStore::search(&keywords, "edited0 edited2", 5)
            .await
            .unwrap()
            .is_empty(),
        "{what}: a second version survived"
    );
    true
}

#[tokio::test]
async fn a_crash_at_any_commit_of_either_store_is_repaired_by_the_next_run() {
    // How many commits the second run makes.
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    let mut p = pipeline(dir.path(), &vectors, &keywords);
    p.run(&corpus(), &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let first = vectors.commits();
    p.run(&edited(), &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let commits = vectors.commits() - first;
    assert_eq!(keywords.commits(), vectors.commits());
    assert!(commits >= 3, "only {commits} commits: too few crash points");
    for crash_vectors in [true, false] {
        for n in 1..=commits {
            assert!(
                crash_and_recover(crash_vectors, n).await,
                "commit {n} of {commits} was never reached"
            );
        }
        assert!(!crash_and_recover(crash_vectors, commits + 1).await);
    }
}

#[tokio::test]
async fn stores_ahead_of_the_catalog_are_repaired() {
    // The crash between the stores' commit and the catalog's save: the stores
    // hold a second run's changes, the catalog is the first run's.
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    let loader = corpus();
    pipeline(dir.path(), &vectors, &keywords)
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let saved = std::fs::read(dir.path().join("catalog.json")).unwrap();
    loader.set("doc3.txt", "unique3 rewritten into one short chunk");
    loader.set("doc12.txt", "a new document");
    pipeline(dir.path(), &vectors, &keywords)
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    std::fs::write(dir.path().join("catalog.json"), saved).unwrap();

    let mut p = pipeline(dir.path(), &vectors, &keywords);
    let c = p.check().await.unwrap();
    assert!(!c.is_consistent(), "the stores should be ahead: {c:?}");
    assert!(c.orphans > 0, "{c:?}");
    let report = p
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert!(
        report.repaired_chunks > 0 || report.repaired_docs > 0,
        "{report:?}"
    );
    let c = p.check().await.unwrap();
    assert!(c.is_consistent(), "{c:?}");
    assert_eq!(c.documents, DOCS + 1);
    let hits = KeywordStore::search(&keywords, "rewritten", 5)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
}

#[tokio::test]
async fn replace_and_sync_keep_one_version_of_each_document() {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    let loader = corpus();
    let mut p = pipeline(dir.path(), &vectors, &keywords);
    let first = p
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((first.indexed, first.chunks), (DOCS, DOCS * 3));

    // Unchanged: nothing embedded again.
    let again = p
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((again.indexed, again.unchanged, again.chunks), (0, DOCS, 0));

    // Replace: a changed document's old chunks go, its new ones come.
    let old: Vec<String> = Catalog::open(dir.path().join("catalog.json"))
        .unwrap()
        .get(&doc_id_for("doc5.txt"))
        .unwrap()
        .chunk_ids(&doc_id_for("doc5.txt"))
        .collect();
    loader.set("doc5.txt", "unique5 now holds only these few words");
    let changed = p
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!((changed.indexed, changed.chunks), (1, 1), "{changed:?}");
    let held = VectorStore::list_chunks(&vectors).await.unwrap();
    assert!(
        held.iter().all(|c| !old.contains(&c.chunk_id)),
        "old chunks left"
    );
    assert_eq!(held.len(), (DOCS - 1) * 3 + 1);
    let hits = KeywordStore::search(&keywords, "few", 5).await.unwrap();
    assert_eq!(hits[0].chunk.doc_id, doc_id_for("doc5.txt"));

    // Without sync a vanished document stays; with sync it goes from both stores.
    loader.remove("doc0.txt");
    let kept = p
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(kept.removed, 0);
    assert_eq!(p.check().await.unwrap().documents, DOCS);
    let synced = p
        .run(&loader, &RunOptions { sync: true }, &NoProgress)
        .await
        .unwrap();
    assert_eq!(synced.removed, 1, "{synced:?}");
    let c = p.check().await.unwrap();
    assert!(c.is_consistent(), "{c:?}");
    assert_eq!(c.documents, DOCS - 1);
    assert!(KeywordStore::search(&keywords, "unique0", 5)
        .await
        .unwrap()
        .is_empty());
    assert!(VectorStore::list_chunks(&vectors)
        .await
        .unwrap()
        .iter()
        .all(|c| c.doc_id != doc_id_for("doc0.txt")));
}

#[tokio::test]
async fn dense_search_over_the_hashing_embedder_finds_shared_words() {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    let loader = MemoryLoader::new([
        ("birds.txt", "magpies and crows are clever birds"),
        ("rust.txt", "the borrow checker keeps memory safe"),
    ]);
    pipeline(dir.path(), &vectors, &keywords)
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let e = HashingEmbedder::new(32);
    let hits = VectorStore::search(&vectors, &e.vector("clever magpies"), 2)
        .await
        .unwrap();
    assert_eq!(hits[0].chunk.source, "birds.txt", "{hits:?}");
    let hits = VectorStore::search(&vectors, &e.vector("memory safe borrow"), 2)
        .await
        .unwrap();
    assert_eq!(hits[0].chunk.source, "rust.txt", "{hits:?}");
}

#[tokio::test]
async fn answers_cite_the_passages_a_scripted_model_names() {
    use magpie_core::testing::ScriptedGenerator;
    use magpie_core::{AnswerOptions, KeywordRetriever, Prompt, QueryPipeline};
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    let loader = MemoryLoader::new([
        (
            "birds.txt",
            "magpies collect shiny objects and recognise faces",
        ),
        ("cats.txt", "cats sleep for most of the day"),
    ]);
    pipeline(dir.path(), &vectors, &keywords)
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let llm = ScriptedGenerator::new(["Magpies collect shiny objects [1]."]);
    let answer = QueryPipeline::new(Arc::new(KeywordRetriever::new(Arc::new(keywords))))
        .top_k(2)
        .answer("what do magpies collect?", &llm, &AnswerOptions::default())
        .await
        .unwrap();
    assert_eq!(answer.text, "Magpies collect shiny objects [1].");
    assert_eq!(answer.citations.len(), 1, "{answer:?}");
    assert_eq!(answer.citations[0].source, "birds.txt");
    // The prompt carried the passage it cites.
    let prompts = llm.prompts();
    let text = match &prompts[0] {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(m) => m.iter().map(|m| m.content.clone()).collect(),
    };
    assert!(text.contains("magpies collect shiny objects"), "{text}");
}

#[tokio::test]
async fn a_conversation_carries_its_recent_turns_into_the_prompt() {
    use magpie_core::testing::ScriptedGenerator;
    use magpie_core::{AnswerOptions, ChatMessage, KeywordRetriever, Prompt, QueryPipeline, Role};
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    let loader = MemoryLoader::new([("birds.txt", "magpies build domed nests of sticks")]);
    pipeline(dir.path(), &vectors, &keywords)
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    // A window of 400 words: a quarter of it holds the two recent turns, not
    // the long first one.
    let llm = ScriptedGenerator::new(["Sticks [1]."]).context_length(400);
    let long = "word ".repeat(150);
    let opts = AnswerOptions {
        history: vec![
            ChatMessage::new(Role::User, format!("an old question {long}")),
            ChatMessage::new(Role::Assistant, "an old answer"),
            ChatMessage::new(Role::User, "where do magpies nest?"),
            ChatMessage::new(Role::Assistant, "in trees"),
        ],
        generation: magpie_core::GenerationOptions {
            max_tokens: 20,
            ..AnswerOptions::default().generation
        },
        ..AnswerOptions::default()
    };
    QueryPipeline::new(Arc::new(KeywordRetriever::new(Arc::new(keywords))))
        .top_k(2)
        .answer("what are they made of?", &llm, &opts)
        .await
        .unwrap();
    let text = match &llm.prompts()[0] {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(m) => m.iter().map(|m| m.content.clone()).collect(),
    };
    assert!(
        text.contains("where do magpies nest?") && text.contains("in trees"),
        "{text}"
    );
    assert!(
        !text.contains("an old question") && !text.contains("an old answer"),
        "{text}"
    );
    let (turns, question) = (
        text.find("in trees").unwrap(),
        text.find("what are they made of?").unwrap(),
    );
    assert!(
        turns < question,
        "the turns come before the question: {text}"
    );
}

/// A scorer that gives every question the same answerability.
struct Fixed(Option<f32>);

#[async_trait::async_trait]
impl magpie_core::AnswerabilityScorer for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    async fn score(
        &self,
        _: &str,
        _: &[magpie_core::ChatMessage],
        _: &[magpie_core::Hit],
    ) -> magpie_core::Result<Option<f32>> {
        Ok(self.0)
    }
}

/// Declining to answer (below the policy's threshold, or a pronoun with
/// nothing before it) runs no model: the reply says why and names the
/// nearest passages, which stay in the answer's sources; above the threshold,
/// or when the scorer cannot tell, the model answers.
#[tokio::test]
async fn declined_answers_never_reach_the_model() {
    use magpie_core::testing::ScriptedGenerator;
    use magpie_core::{
        AbstentionPolicy, AnswerOptions, ChatMessage, Decision, KeywordRetriever, QueryPipeline,
        Role,
    };
    let dir = tempfile::tempdir().unwrap();
    let (vectors, keywords) = (MemoryStore::new(), MemoryStore::new());
    let loader = MemoryLoader::new([
        ("nests.txt", "magpies build domed nests of sticks and mud"),
        ("tails.txt", "the magpie tail is long and iridescent"),
    ]);
    pipeline(dir.path(), &vectors, &keywords)
        .run(&loader, &RunOptions::default(), &NoProgress)
        .await
        .unwrap();
    let pipe = QueryPipeline::new(Arc::new(KeywordRetriever::new(Arc::new(keywords)))).top_k(2);
    let with = |score: Option<f32>| AnswerOptions {
        abstention: Some(AbstentionPolicy::new(Arc::new(Fixed(score)), 0.5)),
        ..AnswerOptions::default()
    };
    let llm = ScriptedGenerator::new(["Sticks and mud [1]."]);
    let mut streamed = String::new();
    let low = pipe
        .answer_streaming(
            "what are magpie nests made of?",
            &llm,
            &with(Some(0.2)),
            |t| streamed.push_str(t),
        )
        .await
        .unwrap();
    assert!(llm.prompts().is_empty(), "the model ran");
    assert!(matches!(low.decision, Decision::Abstain { threshold, .. } if threshold == 0.5));
    assert_eq!(streamed, low.text);
    assert!(low.text.contains("nests.txt"), "{}", low.text);
    assert!(low.citations.is_empty() && !low.sources.is_empty());
    assert_eq!(low.usage.completion_tokens, 0);
    // Nothing found at all: declined too.
    let none = pipe
        .answer("zebra quantum?", &llm, &with(Some(0.9)))
        .await
        .unwrap();
    assert!(
        matches!(none.decision, Decision::Abstain { .. }),
        "{none:?}"
    );
    // A first question's "they", with nothing before it.
    let vague = pipe
        .answer("what are they made of?", &llm, &with(Some(0.9)))
        .await
        .unwrap();
    assert_eq!(
        vague.decision,
        Decision::Clarify {
            pronoun: "they".into()
        }
    );
    assert!(llm.prompts().is_empty(), "the model ran");
    // Inside a conversation the same question is answered.
    let mut opts = with(Some(0.9));
    opts.history = vec![
        ChatMessage::new(Role::User, "where do magpies nest?"),
        ChatMessage::new(Role::Assistant, "in domed nests"),
    ];
    let answered = pipe
        .answer("what are they made of?", &llm, &opts)
        .await
        .unwrap();
    assert_eq!(answered.decision, Decision::Answer);
    assert_eq!(answered.text, "Sticks and mud [1].");
    assert_eq!(llm.prompts().len(), 1);
    // A scorer that cannot tell does not decline.
    let llm = ScriptedGenerator::new(["Sticks."]);
    let unsure = pipe
        .answer("what are magpie nests made of?", &llm, &with(None))
        .await
        .unwrap();
    assert_eq!(unsure.decision, Decision::Answer);
}
