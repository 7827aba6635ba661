//! What a plugin may call on the host: logging always, the document index
//! and HTTP only when the operator granted them.

use crate::wit;
use crate::State;

/// Most log text one call may write; the rest is dropped.
const MAX_LOG_BYTES: usize = 64 << 10;

impl wit::log::Host for State {
    async fn log(&mut self, level: wit::log::Level, message: String) {
        if self.logged > MAX_LOG_BYTES {
            return;
        }
        self.logged += message.len();
        let name = &self.shared.name;
        let message: String = message.chars().take(2000).collect();
        use wit::log::Level as L;
        match level {
            L::Trace => tracing::trace!(plugin = %name, "{message}"),
            L::Debug => tracing::debug!(plugin = %name, "{message}"),
            L::Info => tracing::info!(plugin = %name, "{message}"),
            L::Warn => tracing::warn!(plugin = %name, "{message}"),
            L::Error => tracing::error!(plugin = %name, "{message}"),
        }
    }
}

impl wit::search::Host for State {
    async fn search(&mut self, query: String, k: u32) -> Result<Vec<wit::search::Hit>, String> {
        let s = &self.shared;
        if !s.grants.search {
            return Err(format!(
                "capability `search` is not granted to plugin {}; the operator grants it in the plugin configuration",
                s.name
            ));
        }
        let backend = s
            .search
            .clone()
            .ok_or("this host has no document index to search")?;
        if query.trim().is_empty() {
            return Err("the query is empty".into());
        }
        let k = (k as usize).clamp(1, s.max_search_k);
        let hits = tokio::time::timeout(s.search_timeout, backend.search(&query, k))
            .await
            .map_err(|_| format!("search did not finish within {:?}", s.search_timeout))??;
        Ok(hits
            .into_iter()
            .take(k)
            .map(|h| wit::search::Hit {
                text: h.text,
                source: h.source,
                doc_id: h.doc_id,
                score: h.score,
            })
            .collect())
    }
}

impl wit::http::Host for State {
    async fn send(&mut self, request: wit::http::Request) -> Result<wit::http::Response, String> {
        let s = &self.shared;
        let Some(client) = s.http.as_ref() else {
            return Err(format!(
                "capability `http` is not granted to plugin {}; the operator grants it with a list of hosts",
                s.name
            ));
        };
        let method = match request.method {
            wit::http::Method::Get => reqwest::Method::GET,
            wit::http::Method::Post => reqwest::Method::POST,
        };
        let r = client
            .send(method, &request.url, &request.headers, request.body)
            .await?;
        Ok(wit::http::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

impl wit::types::Host for State {}
