//! A `docqa serve` process for tests, and the HTTP helpers that talk to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

use super::{docqa, root};

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(index: &Path, extra: &[&str]) -> Self {
        Self::start_with(index, extra, &[])
    }

    /// Start with extra environment variables.
    pub fn start_with(index: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = docqa(index);
        cmd.args(["serve", "--bind", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .arg("--plugins")
            .arg(root().join("plugins/dist"))
            .args(extra);
        Self::spawn(cmd)
    }

    /// Start a `docqa … serve` command made by the caller, and wait for its
    /// address.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("docqa listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server did not start listening");
        Self { child, url }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

pub fn body(r: reqwest::blocking::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// The status and the message of a JSON error.
pub fn error(r: reqwest::blocking::Response) -> (StatusCode, String) {
    let (s, v) = body(r);
    let m = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {v}"))
        .to_string();
    assert_eq!(v["error"]["code"], s.as_u16(), "{v}");
    (s, m)
}

pub fn wait_job(c: &Client, s: &Server, job: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (st, v) = body(c.get(s.at(&format!("/v1/jobs/{job}"))).send().unwrap());
        assert_eq!(st, 200, "{v}");
        match v["status"].as_str().unwrap() {
            "done" | "failed" => return v,
            _ => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "job {job} stuck: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gauge or counter from `/metrics` (with `key`, for a keyed server).
pub fn metric_as(c: &Client, s: &Server, key: Option<&str>, name: &str) -> f64 {
    let mut req = c.get(s.at("/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let text = req.send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A gauge or counter from `/metrics` of a server without keys.
pub fn metric(c: &Client, s: &Server, name: &str) -> f64 {
    metric_as(c, s, None, name)
}
