//! Answerability by the question's words: how much of the question (with the
//! conversation's recent user turns), each word weighed by its rarity in the
//! index, one passage found holds. A passage that only shares the question's
//! topic holds its common words (the article's name, found everywhere) but
//! not the rare ones that say what is asked; a question about something the
//! documents never name finds its name nowhere.

use crate::traits::KeywordStore;

/// The largest share of the terms of `asked`, weighed by their inverse
/// document frequency in `store`, that any one of `texts` holds (each term
/// counted once); `None` when the store cannot analyse text. A question with
/// no term the store keeps (only stop words) is fully covered: nothing in it
/// can be missing.
pub fn term_coverage(store: &dyn KeywordStore, asked: &str, texts: &[&str]) -> Option<f32> {
    let mut asked = store.weighted_terms(asked)?;
    asked.sort_by(|a, b| a.0.cmp(&b.0));
    asked.dedup_by(|a, b| a.0 == b.0);
    let total: f32 = asked.iter().map(|(_, w)| w.max(0.0)).sum();
    if asked.is_empty() || total <= 0.0 {
        return Some(1.0);
    }
    let mut best = 0.0f32;
    for s in texts {
        let held: std::collections::HashSet<String> = store
            .weighted_terms(s)?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let share = asked
            .iter()
            .filter(|(t, _)| held.contains(t))
            .map(|(_, w)| w.max(0.0))
            .sum::<f32>()
            / total;
        best = best.max(share);
    }
    Some(best)
}

/// An in-memory keyword store holding `texts` (chunks `c0`, `c1`, …), and a
/// hit on each, for tests.
#[cfg(test)]
pub(super) async fn indexed(texts: &[&str]) -> (crate::testing::MemoryStore, Vec<crate::Hit>) {
    let store = crate::testing::MemoryStore::new();
    let hits: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| crate::types::test_hit(&format!("c{i}"), t))
        .collect();
    let chunks: Vec<_> = hits.iter().map(|h| h.chunk.clone()).collect();
    KeywordStore::upsert(&store, &chunks).await.unwrap();
    (store, hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rare_words_weigh_more_than_the_topic() {
        let (store, _) = indexed(&[
            "Tesla built a tower at Wardenclyffe.",
            "Tesla was born in Smiljan.",
            "Tesla moved to New York.",
            "Tesla worked for Edison.",
        ])
        .await;
        // (this store keeps every word: a question of content words only)
        let q = "tower Tesla built";
        let on = term_coverage(&store, q, &["Tesla built a tower at Wardenclyffe."]).unwrap();
        let topic_only = term_coverage(&store, q, &["Tesla moved to New York."]).unwrap();
        let off = term_coverage(&store, q, &["Magpies eat beetles."]).unwrap();
        assert!(on > 0.99, "{on}");
        // "Tesla" is in every chunk: holding it alone is worth little
        assert!(topic_only < 0.2 && topic_only > 0.0, "{topic_only}");
        assert_eq!(off, 0.0);
        // the best sentence counts, wherever it is
        let best =
            term_coverage(&store, q, &["Magpies eat beetles.", "A tower stood there."]).unwrap();
        assert!(best > topic_only, "{best} vs {topic_only}");
        assert_eq!(term_coverage(&store, "?", &["anything"]), Some(1.0));
    }
}
