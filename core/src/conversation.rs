//! Conversations: who said what, and retrieval that reads the history, so a
//! follow-up ("Or is an installment plan easier?") finds the passages the
//! conversation is about rather than those its last words alone match.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::filter::Filter;
use crate::generate::{ChatMessage, Generator, Role};
use crate::retrieve::reciprocal_rank_fusion;
use crate::traits::Retriever;
use crate::types::Hit;

/// How retrieval reads a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryMode {
    /// The last user message alone (what a stateless search does).
    LastTurn,
    /// The recent user messages joined into one query.
    Joined,
    /// Two searches fused by reciprocal rank: the recent user messages joined
    /// and the last message alone, equal weights, rank constant 2 (the top of
    /// either list leads). The default: joined
    /// alone is best on follow-ups but falls apart when the subject changes;
    /// this keeps most of both (BENCHMARKS.md, "Conversations").
    #[default]
    Fused,
    /// The model's rewrite of the last message as a question that stands
    /// alone ([`crate::condense`]), searched alone; the caller condenses and
    /// hands the rewrite over ([`ConversationRetriever::with_rewrite`]),
    /// else this searches as [`HistoryMode::Fused`].
    Condensed,
    /// The rewrite's search fused with [`HistoryMode::Fused`]'s two, the
    /// rewrite's list first.
    CondensedFused,
}

/// The retrieval queries for a conversation: the last user message, and the
/// recent user messages before it (at most `turns`), oldest first.
pub fn history_queries(messages: &[ChatMessage], turns: usize) -> Option<(String, Vec<String>)> {
    let mut users = messages
        .iter()
        .filter(|m| m.role == Role::User && !m.content.trim().is_empty())
        .map(|m| m.content.trim().to_string())
        .collect::<Vec<_>>();
    let last = users.pop()?;
    let from = users.len().saturating_sub(turns);
    Some((last, users.split_off(from)))
}

/// A retriever that reads a conversation: it answers for the last user
/// message, with the earlier user messages as context, as [`HistoryMode`] says.
/// Built per conversation around any retriever.
pub struct ConversationRetriever {
    inner: Arc<dyn Retriever>,
    history: Vec<String>,
    mode: HistoryMode,
    /// The model's standalone rewrite of the question (condensed modes).
    rewrite: Option<String>,
}

impl ConversationRetriever {
    /// Earlier user messages this many turns back are used.
    pub const DEFAULT_TURNS: usize = 2;
    /// The rank constant of the fusion of the last message's search and the
    /// history's (see `retrieve_filtered`).
    const RRF_K: f32 = 2.0;

    /// Retrieval over `inner` for a conversation whose earlier user messages
    /// are `history` (oldest first; the question comes with each search).
    pub fn new(inner: Arc<dyn Retriever>, history: Vec<String>, mode: HistoryMode) -> Self {
        Self {
            inner,
            history,
            mode,
            rewrite: None,
        }
    }

    /// The model's standalone rewrite of the question ([`crate::condense`]),
    /// which the condensed modes search with.
    pub fn with_rewrite(mut self, rewrite: impl Into<String>) -> Self {
        self.rewrite = Some(rewrite.into());
        self
    }

    /// For the condensed modes, ask `generator` for the question's
    /// standalone rewrite ([`crate::condense`]) and search with it; other
    /// modes, or no history, leave the retriever as it is, and so does a
    /// reply that is no question (the search is then Fused's).
    pub async fn condensed_by(mut self, generator: &dyn Generator, question: &str) -> Result<Self> {
        let condensed = matches!(
            self.mode,
            HistoryMode::Condensed | HistoryMode::CondensedFused
        );
        if condensed && !self.history.is_empty() {
            match crate::condense(generator, &self.history, question).await? {
                Some(rewrite) => {
                    tracing::debug!(%rewrite, "the follow-up condensed by the model");
                    self.rewrite = Some(rewrite);
                }
                None => tracing::debug!("the model's rewrite was no question; searching as fused"),
            }
        }
        Ok(self)
    }

    /// For `messages`: the last user message (the question) and a retriever
    /// that knows the ones before it; `None` without a user message.
    pub fn for_messages(
        inner: Arc<dyn Retriever>,
        messages: &[ChatMessage],
        mode: HistoryMode,
    ) -> Option<(String, Self)> {
        let (last, history) = history_queries(messages, Self::DEFAULT_TURNS)?;
        Some((last, Self::new(inner, history, mode)))
    }

    /// For a question asked after `history` (the conversation so far, oldest
    /// first; the question is not in it): its recent user turns are the context.
    pub fn after(inner: Arc<dyn Retriever>, history: &[ChatMessage], mode: HistoryMode) -> Self {
        Self::new(inner, recent_user_turns(history), mode)
    }
}

/// The last [`ConversationRetriever::DEFAULT_TURNS`] user messages of
/// `history` (the conversation before a question), oldest first.
pub fn recent_user_turns(history: &[ChatMessage]) -> Vec<String> {
    let users: Vec<String> = history
        .iter()
        .filter(|m| m.role == Role::User && !m.content.trim().is_empty())
        .map(|m| m.content.trim().to_string())
        .collect();
    let from = users
        .len()
        .saturating_sub(ConversationRetriever::DEFAULT_TURNS);
    users[from..].to_vec()
}

/// The query that reads the history: the recent user turns and `query`, a
/// line each.
pub fn joined_query(turns: &[String], query: &str) -> String {
    let mut q = turns.join("\n");
    q.push('\n');
    q.push_str(query);
    q
}

#[async_trait]
impl Retriever for ConversationRetriever {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        self.retrieve_filtered(query, k, &Filter::none()).await
    }

    async fn retrieve_filtered(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        if self.history.is_empty() || self.mode == HistoryMode::LastTurn {
            return self.inner.retrieve_filtered(query, k, filter).await;
        }
        let joined = joined_query(&self.history, query);
        if self.mode == HistoryMode::Joined {
            return self.inner.retrieve_filtered(&joined, k, filter).await;
        }
        let deep = (k * 2).max(20);
        let rewrite = match (self.mode, &self.rewrite) {
            (HistoryMode::Condensed, Some(r)) => {
                return self.inner.retrieve_filtered(r, k, filter).await;
            }
            (HistoryMode::CondensedFused, Some(r)) => Some(r),
            _ => None,
        };
        let (last, with_history, rewritten) = futures::join!(
            self.inner.retrieve_filtered(query, deep, filter),
            self.inner.retrieve_filtered(&joined, deep, filter),
            async {
                match rewrite {
                    Some(r) => self
                        .inner
                        .retrieve_filtered(r, deep, filter)
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            }
        );
        // Equal weights and a small rank constant, so the top of either list
        // leads: with the usual 60 every passage in both lists beat one that
        // only the history's list held first, and a follow-up's few generic
        // words ("它是什么？") found enough such passages to push the one the
        // conversation is about out of the top five. Measured on
        // scripts/make_chat_set.py's sets (BENCHMARKS.md, "Conversations");
        // constants 1 to 5 score within 0.01 of 2. The history's list comes
        // first, so a tie goes to what the conversation is about.
        let mut lists = Vec::with_capacity(3);
        if let Some(r) = rewritten? {
            lists.push((1.0, r));
        }
        lists.push((1.0, with_history?));
        lists.push((1.0, last?));
        let mut fused = reciprocal_rank_fusion(&lists, Self::RRF_K);
        fused.truncate(k);
        Ok(fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{chunk_id_for, Chunk};

    /// Ranks fixed passages by the words they share with the query.
    struct Overlap(Vec<(String, String)>);

    impl Overlap {
        fn new(docs: &[(&str, &str)]) -> Self {
            Self(
                docs.iter()
                    .map(|(id, t)| (id.to_string(), t.to_string()))
                    .collect(),
            )
        }
    }

    #[async_trait]
    impl Retriever for Overlap {
        fn name(&self) -> &str {
            "overlap"
        }
        async fn retrieve(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
            let words: std::collections::HashSet<String> = query
                .to_lowercase()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let mut hits: Vec<Hit> = self
                .0
                .iter()
                .map(|(id, text)| {
                    let score = text
                        .to_lowercase()
                        .split_whitespace()
                        .filter(|w| words.contains(*w))
                        .count() as f32;
                    Hit {
                        chunk: Chunk {
                            id: chunk_id_for(id, "h", 0),
                            doc_id: id.to_string(),
                            doc_hash: "h".into(),
                            source: format!("{id}.txt"),
                            index: 0,
                            text: text.clone(),
                            span: Default::default(),
                            heading_path: vec![],
                            title: None,
                            metadata: Default::default(),
                        },
                        score,
                        snippet: None,
                    }
                })
                .filter(|h| h.score > 0.0)
                .collect();
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            hits.truncate(k);
            Ok(hits)
        }
    }

    #[tokio::test]
    async fn a_follow_up_finds_what_the_conversation_is_about() {
        let docs: Arc<dyn Retriever> = Arc::new(Overlap::new(&[
            (
                "magpie",
                "the magpie tail is long and it sounds like a chatter",
            ),
            (
                "faq",
                "what does error E42 mean and what does the server do",
            ),
        ]));
        let convo = [
            ChatMessage::new(Role::User, "how long is the magpie tail"),
            ChatMessage::new(Role::Assistant, "long"),
            ChatMessage::new(Role::User, "what does it sound like"),
        ];
        let top = |mode| {
            let docs = docs.clone();
            let convo = convo.clone();
            async move {
                let (q, r) = ConversationRetriever::for_messages(docs, &convo, mode).unwrap();
                r.retrieve(&q, 2).await.unwrap()[0].chunk.doc_id.clone()
            }
        };
        assert_eq!(top(HistoryMode::LastTurn).await, "faq");
        assert_eq!(top(HistoryMode::Joined).await, "magpie");
        assert_eq!(top(HistoryMode::Fused).await, "magpie");
    }

    /// A follow-up of generic words that many passages share ("what is it
    /// called"): those passages fill the top of both searches, and the one
    /// the conversation is about, first for the history's query alone, must
    /// still make the top five (with rank constant 60 and the last message at
    /// half weight, it did not).
    #[tokio::test]
    async fn generic_follow_up_words_do_not_bury_the_conversation_s_passage() {
        let mut docs: Vec<(String, String)> = (0..8)
            .map(|i| {
                let text = format!("what is it called when form {i} falls due");
                (format!("decoy{i}"), text)
            })
            .collect();
        docs.push((
            "magpie".into(),
            "magpie chatter songs at dawn sound like a rattle".into(),
        ));
        let docs: Arc<dyn Retriever> = Arc::new(Overlap(docs));
        let convo = [
            ChatMessage::new(Role::User, "tell me about magpie chatter songs at dawn"),
            ChatMessage::new(Role::Assistant, "a rattle"),
            ChatMessage::new(Role::User, "what is it called"),
        ];
        let (q, r) = ConversationRetriever::for_messages(docs, &convo, HistoryMode::Fused).unwrap();
        let top: Vec<String> = r
            .retrieve(&q, 5)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.chunk.doc_id)
            .collect();
        assert!(top.iter().any(|d| d == "magpie"), "{top:?}");
    }

    /// The condensed modes search with the model's rewrite, which names what
    /// the history only described: alone, its list as it is; fused, its
    /// passages join the history's and the last message's; without a
    /// rewrite both search as Fused.
    #[tokio::test]
    async fn condensed_modes_search_with_the_rewrite() {
        let docs: Arc<dyn Retriever> = Arc::new(Overlap::new(&[
            ("magpie", "the magpie song sounds like a chatter"),
            ("crow", "crows remember faces and hold grudges"),
            ("faq", "what does error E42 mean and what does it do"),
        ]));
        let convo = [
            ChatMessage::new(Role::User, "which black bird chatters at dawn"),
            ChatMessage::new(Role::Assistant, "the magpie"),
            ChatMessage::new(Role::User, "what does it do"),
        ];
        let top = |mode, rewrite: Option<&str>| {
            let docs = docs.clone();
            let convo = convo.clone();
            let rewrite = rewrite.map(str::to_string);
            async move {
                let (q, mut r) = ConversationRetriever::for_messages(docs, &convo, mode).unwrap();
                if let Some(w) = rewrite {
                    r = r.with_rewrite(w);
                }
                let hits = r.retrieve(&q, 3).await.unwrap();
                hits.into_iter().map(|h| h.chunk.doc_id).collect::<Vec<_>>()
            }
        };
        let rewrite = Some("what does the magpie song sound like");
        assert_eq!(top(HistoryMode::Fused, rewrite).await, ["faq"]);
        assert_eq!(
            top(HistoryMode::Condensed, rewrite).await,
            ["magpie", "faq"]
        );
        assert_eq!(
            top(HistoryMode::CondensedFused, rewrite).await,
            ["faq", "magpie"]
        );
        // no rewrite handed over: the fused search
        assert_eq!(top(HistoryMode::Condensed, None).await, ["faq"]);
        assert_eq!(top(HistoryMode::CondensedFused, None).await, ["faq"]);
    }

    /// `condensed_by` asks the model only in a condensed mode with a
    /// history, and searches with what it wrote.
    #[tokio::test]
    async fn only_condensed_modes_ask_the_model_for_a_rewrite() {
        let docs: Arc<dyn Retriever> = Arc::new(Overlap::new(&[
            ("magpie", "the magpie song sounds like a chatter"),
            ("faq", "what does error E42 mean and what does it do"),
        ]));
        let history = [
            ChatMessage::new(Role::User, "which black bird chatters at dawn"),
            ChatMessage::new(Role::Assistant, "the magpie"),
        ];
        let q = "what does it do";
        for (mode, asked, first) in [
            (HistoryMode::Fused, 0, "faq"),
            (HistoryMode::Condensed, 1, "magpie"),
        ] {
            let model = crate::testing::ScriptedGenerator::new(["how does the magpie song sound"]);
            let r = ConversationRetriever::after(docs.clone(), &history, mode)
                .condensed_by(&model, q)
                .await
                .unwrap();
            assert_eq!(model.prompts().len(), asked, "{mode:?}");
            assert_eq!(r.retrieve(q, 2).await.unwrap()[0].chunk.doc_id, first);
        }
        // no history: nothing to condense
        let model = crate::testing::ScriptedGenerator::new(["anything"]);
        ConversationRetriever::after(docs, &[], HistoryMode::Condensed)
            .condensed_by(&model, q)
            .await
            .unwrap();
        assert!(model.prompts().is_empty());
    }

    #[test]
    fn the_question_is_the_last_user_message_and_history_the_ones_before() {
        let user = |t: &str| ChatMessage::new(Role::User, t);
        let said = |t: &str| ChatMessage::new(Role::Assistant, t);
        let m = vec![
            user("one"),
            said("a"),
            user("two"),
            said("b"),
            user("  "),
            user("three"),
            said("c"),
            user("four"),
        ];
        let (last, hist) = history_queries(&m, 2).unwrap();
        assert_eq!(last, "four");
        assert_eq!(hist, ["two", "three"]);
        assert_eq!(history_queries(&m[..1], 2).unwrap().1, Vec::<String>::new());
        assert!(history_queries(&[said("x")], 2).is_none());
        // The same context when the question is not among the messages.
        let inner: Arc<dyn Retriever> = Arc::new(Overlap::new(&[]));
        let r = ConversationRetriever::after(inner, &m[..m.len() - 1], HistoryMode::Fused);
        assert_eq!(r.history, ["two", "three"]);
    }
}
