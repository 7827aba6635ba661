//! The soak generator as a program, for running it beside a load:
//! `cargo run --example soak -- URL READ_KEY ADMIN_KEY [REQUESTS] [WORKERS]`.
//! Prints what it sent and any answer whose status was not the expected one.

#[allow(dead_code)]
#[path = "../tests/common/soak.rs"]
mod soak;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: soak URL READ_KEY ADMIN_KEY [REQUESTS] [WORKERS]");
        std::process::exit(2);
    }
    let t = soak::Target {
        url: args[0].trim_end_matches('/').to_string(),
        read_key: args[1].clone(),
        admin_key: args[2].clone(),
    };
    let n = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let workers = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(8);
    let r = soak::run(&t, n, workers, 42, Duration::from_secs(120));
    println!(
        "soak: {} requests in {:.1} s ({:.0}/s), slowest {:.2} s, {} uploads acknowledged, \
         {} unexpected statuses, {} without an answer",
        r.requests,
        r.elapsed.as_secs_f64(),
        r.requests as f64 / r.elapsed.as_secs_f64(),
        r.slowest.as_secs_f64(),
        r.uploads_acknowledged,
        r.wrong.len(),
        r.failed.len()
    );
    for w in r.wrong.iter().take(10) {
        println!("  unexpected: {w:?}");
    }
    if !r.wrong.is_empty() || !r.failed.is_empty() {
        std::process::exit(1);
    }
}
