//! Prometheus metrics in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds of the latency histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Counters, gauges and histograms the server keeps.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub answers: AtomicU64,
    pub rejected: AtomicU64,
    pub embedded_texts: AtomicU64,
}

/// The metrics label of an HTTP method: the standard ones, else "other".
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// One finished request.
    pub fn request(&self, method: &str, route: &str, status: u16, secs: f64) {
        // Labels from a fixed set: a client must not grow the exposition.
        let method = method_label(method);
        *self
            .requests
            .lock()
            .unwrap()
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let mut l = self.latency.lock().unwrap();
        let h = l.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The exposition text; `gauges` are values read at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut s = String::new();
        s.push_str("# HELP docqa_http_requests_total HTTP requests by method, route and status.\n");
        s.push_str("# TYPE docqa_http_requests_total counter\n");
        for ((m, r, st), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                s,
                "docqa_http_requests_total{{method=\"{m}\",route=\"{}\",status=\"{st}\"}} {n}",
                escape(r)
            );
        }
        s.push_str("# HELP docqa_http_request_duration_seconds Time to the response head.\n");
        s.push_str("# TYPE docqa_http_request_duration_seconds histogram\n");
        for (r, h) in self.latency.lock().unwrap().iter() {
            let r = escape(r);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "docqa_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "docqa_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                s,
                "docqa_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                s,
                "docqa_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        for (name, help, v) in [
            (
                "docqa_llm_prompt_tokens_total",
                "Prompt tokens given to the model.",
                &self.prompt_tokens,
            ),
            (
                "docqa_llm_generated_tokens_total",
                "Tokens the model generated.",
                &self.generated_tokens,
            ),
            (
                "docqa_llm_answers_total",
                "Answers generated.",
                &self.answers,
            ),
            (
                "docqa_llm_rejected_total",
                "Requests turned away because the model's queue was full.",
                &self.rejected,
            ),
            (
                "docqa_embedded_texts_total",
                "Texts embedded for /v1/embeddings.",
                &self.embedded_texts,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
        }
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("GET", "/healthz", 200, 0.003);
        m.request("GET", "/healthz", 200, 2.0);
        let t = m.render(&[("docqa_index_documents", "Documents.", 3.0)]);
        assert!(t.contains(
            "docqa_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2"
        ));
        assert!(t.contains("route=\"/healthz\",le=\"0.005\"} 1"), "{t}");
        assert!(t.contains("route=\"/healthz\",le=\"5\"} 2"), "{t}");
        assert!(t.contains("le=\"+Inf\"} 2"));
        assert!(t.contains("docqa_index_documents 3"));
    }
}
