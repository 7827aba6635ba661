//! The OpenAI-compatible client against a scripted server on loopback: what it
//! sends, how it reads streams cut anywhere, and how server errors reach the user.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use magpie_core::{
    ChatMessage, Embedder, FinishReason, GenerationEvent, GenerationOptions, Generator, Prompt,
    Role,
};
use magpie_openai::{OpenAiConfig, OpenAiEmbedder, OpenAiGenerator};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server got: (path, authorization header, JSON body).
type Seen = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

/// Answers each request with `reply(path, body)`: raw bytes, written in small
/// pieces so events are split at arbitrary places.
async fn server(reply: fn(&str, &Value) -> Vec<u8>) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = sock.read(&mut tmp).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut tmp).await.unwrap();
                    buf.extend_from_slice(&tmp[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap().to_string();
                let auth = head
                    .lines()
                    .find(|l| l.to_lowercase().starts_with("authorization:"))
                    .map(|l| l[14..].trim().to_string());
                let body: Value = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
                seen.lock()
                    .unwrap()
                    .push((path.clone(), auth, body.clone()));
                let out = reply(&path, &body);
                for piece in out.chunks(7) {
                    if sock.write_all(piece).await.is_err() {
                        return;
                    }
                    sock.flush().await.unwrap();
                }
            });
        }
    });
    (url, seen)
}

fn sse(events: &[&str]) -> Vec<u8> {
    let mut body = String::new();
    for e in events {
        body.push_str(&format!("data: {e}\n\n"));
    }
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json_reply(status: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn scripted(path: &str, body: &Value) -> Vec<u8> {
    match path {
        "/v1/chat/completions" if body["messages"][0]["content"] == "fail" => json_reply(
            "429 Too Many Requests",
            r#"{"error":{"message":"the model is busy","type":"rate_limit_error","code":429}}"#,
            "retry-after: 7\r\n",
        ),
        "/v1/chat/completions" if body["messages"][0]["content"] == "cut" => {
            // the stream ends without a finish reason or [DONE]
            sse(&[r#"{"choices":[{"index":0,"delta":{"content":"half"}}]}"#])
        }
        "/v1/chat/completions" => sse(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Héron"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"s nest in trees."},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}}"#,
            "[DONE]",
        ]),
        "/v1/embeddings" => {
            let n = body["input"].as_array().map(|a| a.len()).unwrap_or(0);
            // returned out of order, as servers may
            let data: Vec<Value> = (0..n)
                .rev()
                .map(|i| serde_json::json!({"object":"embedding","index":i,"embedding":[i as f32, 1.0, 0.5]}))
                .collect();
            json_reply(
                "200 OK",
                &serde_json::json!({"object":"list","data":data}).to_string(),
                "",
            )
        }
        _ => json_reply(
            "404 Not Found",
            r#"{"error":{"message":"no such route"}}"#,
            "",
        ),
    }
}

#[tokio::test]
async fn a_remote_generator_streams_and_reports_errors() {
    let (url, seen) = server(scripted).await;
    let g = OpenAiGenerator::new(OpenAiConfig::new(&url, "remote-model").api_key("sk-test-123"))
        .unwrap();
    let opts = GenerationOptions {
        max_tokens: 20,
        temperature: 0.0,
        stop: vec!["\n\n".into()],
        seed: Some(7),
        ..Default::default()
    };
    let prompt = Prompt::Chat(vec![
        ChatMessage::new(Role::System, "Be brief."),
        ChatMessage::new(Role::User, "Where do herons nest?"),
    ]);
    let mut s = g.generate(prompt, opts.clone()).await.unwrap();
    let mut text = String::new();
    let mut summary = None;
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            GenerationEvent::Delta { text: t } => text.push_str(&t),
            GenerationEvent::Done(d) => summary = Some(d),
        }
    }
    assert_eq!(text, "Hérons nest in trees.");
    let summary = summary.unwrap();
    assert_eq!(summary.finish_reason, FinishReason::Length);
    assert_eq!(summary.usage.total_tokens, 15);
    let (path, auth, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(auth.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(body["model"], "remote-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "Where do herons nest?");
    assert_eq!(body["max_tokens"], 20);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["stop"][0], "\n\n");

    // A server error is an error that says what the server said.
    let e = g
        .complete(Prompt::Text("fail".into()), opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("429") && e.contains("busy") && e.contains("retry after 7"),
        "{e}"
    );
    // A stream cut short is an error, not a short answer.
    let e = g
        .complete(Prompt::Text("cut".into()), opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ended before"), "{e}");
    // A wrong base URL says so.
    let wrong = OpenAiGenerator::new(OpenAiConfig::new(url.replace("/v1", "/v2"), "m")).unwrap();
    let e = wrong
        .complete(Prompt::Text("x".into()), opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("base URL"), "{e}");
}

#[tokio::test]
async fn a_remote_embedder_keeps_input_order_across_batches() {
    let (url, seen) = server(scripted).await;
    let e = OpenAiEmbedder::connect(OpenAiConfig::new(&url, "remote-embed"))
        .await
        .unwrap();
    assert_eq!(e.dimension(), 3);
    let texts: Vec<String> = (0..150).map(|i| format!("text {i}")).collect();
    let v = e.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 150);
    // index i of each batch of 64 comes back as its first component
    assert_eq!(v[0][0], 0.0);
    assert_eq!(v[63][0], 63.0);
    assert_eq!(v[64][0], 0.0);
    assert_eq!(v[149][0], 21.0);
    // probe + 3 batches
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(seen.lock().unwrap()[1].2["encoding_format"], "float");
    // Nothing listening: the error names the address.
    let dead = OpenAiEmbedder::connect(OpenAiConfig::new("http://127.0.0.1:9/v1", "m"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(dead.contains("cannot reach"), "{dead}");
}

/// The chat completions API has no per-request adapters: a call naming some
/// is refused before anything is sent, with the model name that picks them
/// on a server that hosts them.
#[tokio::test]
async fn adapters_are_refused_with_the_model_name_to_use() {
    let (url, seen) = server(scripted).await;
    let g = OpenAiGenerator::new(OpenAiConfig::new(&url, "remote-model")).unwrap();
    let opts = GenerationOptions {
        adapters: vec![magpie_core::AdapterChoice::new("law")],
        ..Default::default()
    };
    let e = g
        .generate(Prompt::Text("hello".into()), opts)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("remote-model+law"), "{e}");
    assert!(seen.lock().unwrap().is_empty());
    assert!(g.adapters().is_empty());
}
