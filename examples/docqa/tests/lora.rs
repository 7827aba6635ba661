//! LoRA adapters through docqa: `model info` of an adapter and of a base with
//! `--lora`, `generate --lora`, and `serve --lora` with each request picking
//! its adapters (`adapters` in /v1/query, `BASE+NAME` as the OpenAI model),
//! bad adapters and unknown names as clear errors while the server keeps
//! serving. The models are tiny random-weight ones the tests write.

mod common;

use std::path::{Path, PathBuf};

use common::server::{body, client, error, Server};
use common::{docqa, index_sample, json, run_ok};
use magpie_tests::tiny::{tiny_vocab_size, write_lora, write_tiny, Tiny, TinyLora, LORA_A, LORA_B};
use serde_json::{json, Value};

struct Files {
    base: PathBuf,
    a: PathBuf,
    b: PathBuf,
    qwen: PathBuf,
}

fn files(dir: &Path) -> Files {
    let gemma = magpie_tests::gemma_path();
    let base = dir.join("tiny-llama.gguf");
    write_tiny(Tiny::Llama, 2, &gemma, &base);
    let lora = |kind: Tiny, spec: TinyLora, name: &str| {
        let p = dir.join(name);
        write_lora(kind, 2, tiny_vocab_size(kind, &gemma), spec, &p);
        p
    };
    Files {
        base,
        a: lora(Tiny::Llama, LORA_A, "law.gguf"),
        b: lora(Tiny::Llama, LORA_B, "med.gguf"),
        qwen: lora(Tiny::Qwen2, LORA_A, "qwen-lora.gguf"),
    }
}

fn arg(name: &str, p: &Path) -> String {
    format!("{name}={}", p.display())
}

#[test]
fn model_info_generate_and_ask_with_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let f = files(tmp.path());
    let idx = tmp.path().join("idx");
    let info = |extra: &[String]| {
        let mut c = docqa(&idx);
        c.args(["model", "info"]).args(extra);
        c.output().unwrap()
    };
    // an adapter alone: its base architecture, rank, targets and size
    let out = info(&[f.a.display().to_string(), "--json".into()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = json(&out);
    assert_eq!(a["arch"], "llama");
    assert_eq!(a["ranks"], json!([8]));
    assert_eq!(a["alpha"], 16.0);
    assert_eq!(a["tensors"], 14);
    for t in [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ] {
        assert!(a["targets"].as_array().unwrap().contains(&json!(t)), "{a}");
    }
    assert!(a["file_bytes"].as_u64().unwrap() > 8 * 256 * 2 * 14, "{a}");
    let out = info(&[f.b.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rank               32") && text.contains("output"),
        "{text}"
    );
    // a base with adapters: which fit it (exit status 1 when one does not)
    let out = info(&[
        f.base.display().to_string(),
        "--lora".into(),
        arg("law", &f.a),
        "--lora".into(),
        arg("q", &f.qwen),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("LoRA adapter law") && text.contains("fits this model"),
        "{text}"
    );
    assert!(
        text.contains("LoRA adapter q") && text.contains("does NOT fit") && text.contains("qwen2"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("q do not fit"));

    // `docqa COMMAND --max-tokens 8 --temperature 0 --llm BASE [--lora …] TEXT`, its stdout
    let greedy = |command: &[&str], loras: &[String], text: &str| {
        let mut c = docqa(&idx);
        c.args(command)
            .args(["--max-tokens", "8", "--temperature", "0", "--llm"])
            .arg(&f.base)
            .args(loras.iter().flat_map(|l| ["--lora".to_string(), l.clone()]))
            .arg(text);
        run_ok(&mut c)
    };
    // generate: the adapter changes the text, and `--lora NAME=PATH:1` is the same as without a scale
    let gen = |loras: &[String]| {
        let out = greedy(&["generate"], loras, "The magpie index keeps chunks in");
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = gen(&[]);
    let law = gen(&[arg("law", &f.a)]);
    assert_ne!(plain, law);
    assert_eq!(law, gen(&[format!("{}:1.0", arg("law", &f.a))]));
    assert_ne!(law, gen(&[format!("{}:0.3", arg("law", &f.a))]));
    // ask: the answer applies every --lora given
    index_sample(&idx);
    let ask = |loras: &[String]| {
        let out = greedy(&["ask", "--json"], loras, "What does error E42 mean?");
        json(&out)["text"].as_str().unwrap().to_string()
    };
    let plain = ask(&[]);
    let law = ask(&[arg("law", &f.a)]);
    assert_ne!(plain, law);
    assert_eq!(law, ask(&[arg("law", &f.a)]));
    // a mismatched adapter and a bad flag: clear errors
    let mut c = docqa(&idx);
    c.args(["generate", "--llm"])
        .arg(&f.base)
        .args(["--lora", &arg("q", &f.qwen), "hello"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("qwen2") && err.contains("--lora q="),
        "{err}"
    );
    let out = docqa(&idx)
        .args(["generate", "--lora", "nameonly", "hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NAME=PATH[:SCALE]"),
        "{err}"
    );
}

#[test]
fn serve_picks_adapters_per_request() {
    let tmp = tempfile::tempdir().unwrap();
    let f = files(tmp.path());
    let idx = tmp.path().join("idx");
    index_sample(&idx);
    let s = Server::start(
        &idx,
        &[
            "--llm",
            f.base.to_str().unwrap(),
            "--lora",
            &arg("law", &f.a),
            "--lora",
            &arg("med", &f.b),
        ],
    );
    let c = client();
    let (st, models) = body(c.get(s.at("/v1/models")).send().unwrap());
    assert_eq!(st, 200);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let base_id = ids[0].to_string();
    assert!(ids.contains(&format!("{base_id}+law").as_str()), "{ids:?}");
    assert!(ids.contains(&format!("{base_id}+med").as_str()), "{ids:?}");

    let question = "What does error E42 mean?";
    let ask = |adapters: Value| -> String {
        let q =
            json!({"question": question, "max_tokens": 8, "temperature": 0, "adapters": adapters});
        let (st, a) = body(c.post(s.at("/v1/query")).json(&q).send().unwrap());
        assert_eq!(st, 200, "{a}");
        a["text"].as_str().unwrap().to_string()
    };
    let sets = [
        json!([]),
        json!(["law"]),
        json!([{"name": "med", "scale": 0.5}]),
        json!(["law", {"name": "med", "scale": 0.5}]),
    ];
    let first: Vec<String> = sets.iter().map(|a| ask(a.clone())).collect();
    assert_ne!(first[0], first[1]);
    assert_ne!(first[1], first[2]);
    assert_ne!(first[1], first[3]);
    // alternating requests: each set answers as it did the first time
    for i in [2, 0, 3, 1, 0, 2] {
        assert_eq!(ask(sets[i].clone()), first[i], "set {}", sets[i]);
    }

    // the OpenAI route: model BASE+NAME is the same answer as adapters [NAME]
    let chat = |model: &str| {
        c.post(s.at("/v1/chat/completions"))
            .json(&json!({"model": model, "max_tokens": 8, "temperature": 0,
                          "messages": [{"role": "user", "content": question}]}))
            .send()
            .unwrap()
    };
    let (st, r) = body(chat(&format!("{base_id}+law")));
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["choices"][0]["message"]["content"].as_str().unwrap(),
        first[1]
    );
    let (st, r) = body(chat(&format!("{base_id}+law+med:0.5")));
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["choices"][0]["message"]["content"].as_str().unwrap(),
        first[3]
    );

    // unknown names and bad scales: 400 with what is loaded, and the server goes on
    let (st, m) = error(chat(&format!("{base_id}+nope")));
    assert_eq!(st, 400);
    assert!(
        m.contains("\"nope\"") && m.contains("loaded: law, med"),
        "{m}"
    );
    let (st, m) = error(chat(&format!("{base_id}+law:x")));
    assert_eq!(st, 400, "{m}");
    // names not loaded and scales out of range are 400; a malformed field is
    // 422, as every body that does not match the API's types
    for (bad, status) in [
        (json!(["nope"]), 400),
        (json!([{"name": "law", "scale": 1e9}]), 400),
        (json!([{"scale": 1}]), 422),
        (json!("law"), 422),
    ] {
        let q = json!({"question": question, "adapters": bad});
        let (st, m) = error(c.post(s.at("/v1/query")).json(&q).send().unwrap());
        assert_eq!(st, status, "{bad}: {m}");
        if status == 422 {
            assert!(m.contains("adapters"), "{m}");
        }
    }
    assert_eq!(ask(json!(["law"])), first[1]);
    assert_eq!(ask(json!([])), first[0]);
}
