//! Input that used to crash, poison or bloat docqa, each built by the test:
//! no-break and ideographic spaces, an index inside the indexed folder, a full
//! disk, a crashing indexing worker, leftover and unfinished uploads.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::server::{body, client, metric, wait_job, Server};
use common::{docqa, json, run_ok};

/// 410 words joined by `sep`, no newline, no sentence punctuation (the report).
fn spaced(sep: &str, topic: &str) -> String {
    (0..410)
        .map(|i| format!("{topic}{i}"))
        .collect::<Vec<_>>()
        .join(sep)
}

#[test]
fn no_break_and_ideographic_spaces_index_and_the_index_inside_the_folder_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("web.txt"), spaced("\u{a0}", "harbour")).unwrap();
    std::fs::write(corpus.join("news.txt"), spaced("\u{3000}", "新闻")).unwrap();
    std::fs::write(
        corpus.join("plain.md"),
        "# Plain\n\nMagpies gather twigs for the nest.\n",
    )
    .unwrap();
    // The index lives inside the folder it indexes, not hidden.
    let idx = corpus.join("my-index");
    let first = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus)));
    assert_eq!(first["indexed"], 3, "{first}");
    assert_eq!(
        first["skipped"].as_array().map(Vec::len),
        Some(0),
        "{first}"
    );
    assert!(first["chunks"].as_u64().unwrap() >= 6, "{first}");
    // Again: nothing changed, and the index's own files never became documents.
    let again = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus)));
    assert_eq!(
        (again["indexed"].clone(), again["unchanged"].clone()),
        (json!(0), json!(3)),
        "{again}"
    );
    let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
    assert_eq!(status["documents"], 3, "{status}");
    assert_eq!(status["consistent"], true);
    let hits = json(&run_ok(docqa(&idx).args([
        "search",
        "--json",
        "--mode",
        "bm25",
        "harbour205",
    ])));
    assert!(
        hits["hits"][0]["chunk"]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("web.txt")),
        "{hits}"
    );
}

/// Mount a tmpfs of `mib` MiB at `dir` (root only); false where that is not allowed.
fn mount_tmpfs(dir: &Path, mib: usize) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    // On a small tmpfs where the test may mount one (root); elsewhere the same
    // check meets a disk whose free space the test sets (MAGPIE_TEST_FREE_BYTES,
    // honoured by debug builds only).
    let mounted = mount_tmpfs(&disk, 160);
    let _unmount = mounted.then(|| Unmount(&disk));
    if !mounted {
        eprintln!("tmpfs not allowed here: the disk's free space is simulated");
        std::fs::create_dir_all(&disk).unwrap();
    }
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for i in 0..4 {
        std::fs::write(
            corpus.join(format!("d{i}.txt")),
            format!("Document {i} about magpies and their nests."),
        )
        .unwrap();
    }
    let idx = disk.join("idx");
    let first = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus)));
    assert_eq!(first["indexed"], 4);

    // More to index: about 120 chunks.
    for i in 4..44 {
        std::fs::write(
            corpus.join(format!("d{i}.txt")),
            format!("Document {i} says that crows and magpies are clever birds. ").repeat(60),
        )
        .unwrap();
    }
    let filler = disk.join("filler");
    // Leave `mib` MiB free (on the tmpfs), or tell docqa so (simulated).
    let index_with_free = |mib: u64| {
        let mut cmd = docqa(&idx);
        cmd.args(["index", "--json"]).arg(&corpus);
        if mounted {
            let _ = std::fs::remove_file(&filler);
            let free = free_bytes(&disk);
            let want = free.saturating_sub(mib << 20);
            let mut w = std::io::BufWriter::new(std::fs::File::create(&filler).unwrap());
            let block = vec![7u8; 1 << 16];
            let mut written = 0u64;
            use std::io::Write;
            while written + block.len() as u64 <= want {
                w.write_all(&block).unwrap();
                written += block.len() as u64;
            }
            w.flush().unwrap();
        } else {
            cmd.env("MAGPIE_TEST_FREE_BYTES", (mib << 20).to_string());
        }
        cmd.output().unwrap()
    };
    // Too full to open the index: refused before the stores map anything.
    let out = index_with_free(4);
    assert_eq!(out.status.code(), Some(1), "not a clean error: {out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("opening the index") && err.contains("free some space"),
        "{err}"
    );
    // Enough to open, not enough for the new chunks: refused before writing them.
    let out = index_with_free(66);
    assert_eq!(out.status.code(), Some(1), "not a clean error: {out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("writing") && err.contains("free some space"),
        "{err}"
    );
    // Space again: nothing that was committed is lost, and the run completes.
    let _ = std::fs::remove_file(&filler);
    let status = json(&run_ok(docqa(&idx).args(["status", "--json"])));
    assert_eq!(status["consistent"], true, "{status}");
    assert!(status["documents"].as_u64().unwrap() >= 4, "{status}");
    let done = json(&run_ok(docqa(&idx).args(["index", "--json"]).arg(&corpus)));
    assert_eq!(
        done["indexed"].as_u64().unwrap() + done["unchanged"].as_u64().unwrap(),
        44,
        "{done}"
    );
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

fn upload(c: &reqwest::blocking::Client, s: &Server, name: &str, text: &str) -> String {
    let (st, v) = body(
        c.post(s.at("/v1/documents"))
            .json(&json!({"text": text, "name": name}))
            .send()
            .unwrap(),
    );
    assert_eq!(st, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn serve_indexes_odd_spaces_survives_a_crashing_worker_and_sets_poison_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    let c = client();
    {
        // Debug builds panic the worker on an upload named like this, standing in
        // for any bug a document could hit.
        let s = Server::start_with(&idx, &[], &[("DOCQA_TEST_CRASH_ON", "poison")]);
        for (name, text) in [
            ("web.txt", spaced("\u{a0}", "harbour")),
            ("news.txt", spaced("\u{3000}", "新闻")),
        ] {
            let job = upload(&c, &s, name, &text);
            let v = wait_job(&c, &s, &job);
            assert_eq!(v["status"], "done", "{name}: {v}");
        }
        let job = upload(&c, &s, "poison.txt", "any text");
        let v = wait_job(&c, &s, &job);
        assert_eq!(v["status"], "failed", "{v}");
        assert!(v["error"].as_str().unwrap().contains("crashed"), "{v}");
        // The worker was restarted: the next upload is indexed, and the server is ready.
        let job = upload(&c, &s, "after.txt", "Magpies gather twigs.");
        assert_eq!(wait_job(&c, &s, &job)["status"], "done");
        assert_eq!(metric(&c, &s, "docqa_indexer_restarts"), 1.0);
        assert_eq!(metric(&c, &s, "docqa_indexing_up"), 1.0);
        let (st, _) = body(c.get(s.at("/readyz")).send().unwrap());
        assert_eq!(st, 200);
        // The failed upload is kept aside with its reason, not in the queue.
        let failed = idx
            .join("failed-uploads")
            .join(job_dir_of(&idx, "poison.txt"));
        assert!(failed.join(".reason").is_file(), "{}", failed.display());
        // Crashing again and again (five within a minute): indexing stops, and
        // the server says so instead of queueing what it cannot index.
        for i in 2..=5 {
            let job = upload(&c, &s, &format!("poison{i}.txt"), "any text");
            assert_eq!(wait_job(&c, &s, &job)["status"], "failed");
        }
        let t0 = Instant::now();
        while metric(&c, &s, "docqa_indexing_up") != 0.0 {
            assert!(t0.elapsed() < Duration::from_secs(30), "indexing still up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (st, v) = body(c.get(s.at("/readyz")).send().unwrap());
        assert_eq!(st, 503, "{v}");
        let (st, v) = body(
            c.post(s.at("/v1/documents"))
                .json(&json!({"text": "more", "name": "more.txt"}))
                .send()
                .unwrap(),
        );
        assert_eq!(
            (st.as_u16(), v["error"]["type"].as_str()),
            (503, Some("indexing_down"))
        );
        // Search goes on.
        let (st, _) = body(c.get(s.at("/v1/search?q=magpies")).send().unwrap());
        assert_eq!(st, 200);
        s.stop();
    }
    // A restart: the set-aside upload stays a failed job, not retried.
    let s = Server::start(&idx, &[]);
    let (_, docs) = body(c.get(s.at("/v1/documents")).send().unwrap());
    assert_eq!(docs["count"], 3, "{docs}");
    let (_, jobs) = body(c.get(s.at("/v1/jobs")).send().unwrap());
    let failed: Vec<&Value> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 5, "{jobs}");
    assert!(failed
        .iter()
        .all(|j| j["error"].as_str().unwrap().contains("crashed")));
    let (st, _) = body(c.get(s.at("/readyz")).send().unwrap());
    assert_eq!(st, 200, "a restart brings indexing back");
    s.stop();
}

/// The upload directory (job id) under failed-uploads/ holding `name`.
fn job_dir_of(idx: &Path, name: &str) -> String {
    std::fs::read_dir(idx.join("failed-uploads"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().join(name).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("{name} not in failed-uploads"))
}

#[test]
fn leftover_uploads_resume_in_any_number_and_unfinished_ones_are_not_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    // An index to start from, then what a crash with a full queue leaves behind.
    // A SIGTERM the moment the server says it listens is a graceful stop (the
    // handlers are installed before that line is printed).
    let st = Server::start(&idx, &[]).stop();
    assert!(st.success(), "a stop right after start: {st:?}");
    let uploads = idx.join("uploads");
    let n = 4200;
    for i in 0..n {
        let dir = uploads.join(format!("00000000-0000-4000-8000-{i:012}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("note{i}.txt")),
            format!("Leftover note {i}."),
        )
        .unwrap();
    }
    // A write that never finished: only the temporary file.
    let half = uploads.join("ffffffff-0000-4000-8000-000000000000");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join(".report.txt.tmp"), "half a docu").unwrap();
    // An upload whose indexing took the server down three times.
    let poison = uploads.join("eeeeeeee-0000-4000-8000-000000000000");
    std::fs::create_dir_all(&poison).unwrap();
    std::fs::write(poison.join("pill.txt"), "whatever kills the server").unwrap();
    std::fs::write(poison.join(".attempts"), "3").unwrap();

    let c = client();
    let s = Server::start(&idx, &[]);
    let (st, ready) = body(c.get(s.at("/readyz")).send().unwrap());
    assert_eq!(st, 200, "{ready}");
    assert!(!half.exists(), "the unfinished upload was not cleaned up");
    assert!(!poison.exists(), "the poison pill was queued again");
    let pill = idx.join("failed-uploads").join(poison.file_name().unwrap());
    let reason = std::fs::read_to_string(pill.join(".reason")).unwrap();
    assert!(reason.contains("3 times"), "{reason}");
    // All of them are queued, and indexing goes on.
    let queued = metric(&c, &s, "docqa_indexing_jobs_queued")
        + metric(&c, &s, "docqa_indexing_jobs_running");
    let indexed = metric(&c, &s, "docqa_index_documents");
    assert!(
        queued + indexed >= n as f64,
        "queued {queued} + indexed {indexed} < {n}"
    );
    let t0 = Instant::now();
    while metric(&c, &s, "docqa_index_documents") < 20.0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "indexing stalled");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, docs) = body(c.get(s.at("/v1/documents")).send().unwrap());
    assert!(
        !docs["documents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["source"].as_str().unwrap_or("").contains("report")),
        "a temporary file was indexed"
    );
    s.stop();
}

/// Chunk ids of the top hits, dense and BM25, for a few questions.
fn rankings(idx: &Path) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for q in [
        "how do I upgrade without losing data",
        "observer code error",
    ] {
        for mode in ["dense", "bm25"] {
            let v = json(&run_ok(
                docqa(idx).args(["search", "--json", "-k", "5", "--mode", mode, q]),
            ));
            out.push(
                v["hits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["chunk"]["id"].as_str().unwrap().to_string())
                    .collect(),
            );
        }
    }
    out
}

/// The one file under `dir` whose path ends with `suffix`.
fn file_ending(dir: &Path, suffix: &str) -> std::path::PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                found.push(p);
            }
        }
    }
    assert_eq!(found.len(), 1, "{suffix}: {found:?}");
    found.pop().unwrap()
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().filter_map(|e| e.ok()) {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A process that ended by itself (an error is fine; a signal or a panic is not).
fn exited_cleanly(out: &std::process::Output, what: &str) {
    assert!(
        matches!(out.status.code(), Some(0..=3)),
        "{what}: {:?}\n{}",
        out.status,
        stderr(out)
    );
    assert!(!stderr(out).contains("panicked"), "{what}: {}", stderr(out));
}

#[test]
fn every_class_of_damaged_index_file_is_found_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    run_ok(docqa(&pristine).arg("index").arg(common::sample()));
    let want = rankings(&pristine);
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage)> = vec![
        ("catalog: a count changed, still valid JSON", |i| {
            edit(&i.join("catalog.json"), |b| {
                let s = String::from_utf8(b.clone()).unwrap();
                let at = s.find("\"chunks\":").unwrap() + 9;
                b[at] = if b[at] == b'9' { b'8' } else { b[at] + 1 };
            })
        }),
        ("settings file cut short", |i| {
            edit(&i.join("magpie.json"), |b| b.truncate(b.len() / 2))
        }),
        ("keyword store file cut short (footer)", |i| {
            edit(&file_ending(&i.join("keywords"), ".store"), |b| {
                b.truncate(b.len() / 2)
            })
        }),
        ("keyword term dictionary overwritten (checksum)", |i| {
            edit(&file_ending(&i.join("keywords"), ".term"), |b| {
                for x in b.iter_mut().take(64) {
                    *x ^= 0xA5;
                }
            })
        }),
        ("keyword meta file lost", |i| {
            std::fs::remove_file(i.join("keywords/meta.json")).unwrap()
        }),
        (
            "vector id mapping with a huge internal id (used to abort)",
            |i| {
                edit(
                    &file_ending(&i.join("vectors"), "mutable_id_tracker.mappings"),
                    |b| b[20] = 0xFF,
                )
            },
        ),
        (
            "vector payload index page overwritten (used to panic)",
            |i| {
                edit(
                    &file_ending(&i.join("vectors"), "doc_id-map/page_0.dat"),
                    |b| {
                        for x in b.iter_mut().take(64) {
                            *x ^= 0xA5;
                        }
                    },
                )
            },
        ),
        ("vector status file cut short (used to panic)", |i| {
            edit(
                &file_ending(
                    &i.join("vectors"),
                    "vector_storage-dense/vectors/status.dat",
                ),
                |b| b.truncate(b.len() / 2),
            )
        }),
        (
            "vectors with flipped exponent bits (used to change results silently)",
            |i| {
                edit(&file_ending(&i.join("vectors"), "chunk_0.mmap"), |b| {
                    for v in [0usize, 3, 7] {
                        b[v * 384 * 4 + 4 * 11 + 3] ^= 0x40;
                    }
                })
            },
        ),
    ];
    for (name, damage) in cases {
        let idx = tmp
            .path()
            .join(name.replace([' ', ':', '(', ')', ','], "_"));
        copy_dir(&pristine, &idx);
        damage(&idx);
        let verify = docqa(&idx).args(["status", "--verify"]).output().unwrap();
        exited_cleanly(&verify, name);
        assert_ne!(verify.status.code(), Some(0), "{name}: not found");
        for args in [&["status"][..], &["search", "--mode", "dense", "upgrade"]] {
            exited_cleanly(&docqa(&idx).args(args).output().unwrap(), name);
        }
        let repair = docqa(&idx).arg("repair").output().unwrap();
        assert!(repair.status.success(), "{name}: {}", stderr(&repair));
        let healthy = docqa(&idx).args(["status", "--verify"]).output().unwrap();
        assert!(
            healthy.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&healthy.stdout)
        );
        assert_eq!(rankings(&idx), want, "{name}: results changed");
    }

    // Both stores lost: nothing to rebuild from, so the documents to index
    // again are named, and the index works (empty) until they are.
    let idx = tmp.path().join("both");
    copy_dir(&pristine, &idx);
    std::fs::remove_file(idx.join("keywords/meta.json")).unwrap();
    edit(
        &file_ending(&idx.join("vectors"), "mutable_id_tracker.mappings"),
        |b| b[20] = 0xFF,
    );
    let out = run_ok(docqa(&idx).args(["repair", "--json"]));
    let v = json(&out);
    assert_eq!(v["reindex"].as_array().map(Vec::len), Some(7), "{v}");
    assert_eq!(v["healthy"], true);
    let again = json(&run_ok(
        docqa(&idx).args(["index", "--json"]).arg(common::sample()),
    ));
    assert_eq!(again["indexed"], 7, "{again}");
    assert_eq!(rankings(&idx), want);
}
