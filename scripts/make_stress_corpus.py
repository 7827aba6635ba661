#!/usr/bin/env python3
"""Write a corpus of N files that mixes good documents with every kind of bad
input docqa must survive, and a manifest of which files are bad.

    python3 scripts/make_stress_corpus.py OUT_DIR [N]

Good files: short English and Chinese texts, Markdown, HTML, some spaced with
U+00A0 / U+3000 / other Unicode spaces, combining marks, emoji, RTL marks, a BOM
mid-text, text without any whitespace. Bad files (about 1 in 10): empty, only
whitespace, binary, undecodable bytes, over the size limit, a truncated PDF, a
PDF decompression bomb behind two Flate layers, a DOCX that is not a ZIP, a ZIP
bomb DOCX, an unknown binary format, a symlink loop, an index directory inside
the corpus. The manifest (OUT_DIR.manifest.json) lists the bad files, so a run
can be checked: every bad file reported, every good one indexed.
"""

import io
import json
import os
import random
import sys
import zipfile
import zlib

WORDS = ("magpie nest twig mud egg clutch chatter harbour crow raven feather wing "
         "river bridge market winter summer station library garden").split()
HANZI = "喜鹊筑巢树枝泥土鸟蛋叫声港口乌鸦羽毛翅膀河流桥梁市场冬天夏天车站图书馆花园新闻报道"
SPACES = ["\u00a0", "\u3000", "\u2002", "\u2003", "\u2009", "\u202f", "\u205f", " "]
ODD = ["e\u0301", "\U0001F469\u200d\U0001F469\u200d\U0001F467", "\u200f", "\u200e",
       "\ufeff", "\U0001D518", "\r", "\u2028", "\u0301"]


def english(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chinese(rng, n):
    return "".join(rng.choice(HANZI) for _ in range(n))


def good(rng, i):
    kind = rng.randrange(8)
    if kind == 0:
        sep = rng.choice(SPACES)
        return f"g{i}.txt", sep.join(rng.choice(WORDS) + str(j) for j in range(rng.randrange(20, 400)))
    if kind == 1:
        sep = rng.choice(["\u3000", "，", ""])
        return f"g{i}.txt", sep.join(chinese(rng, rng.randrange(5, 30)) for _ in range(rng.randrange(2, 12)))
    if kind == 2:
        text = english(rng, 80)
        odd = "".join(rng.choice(ODD) for _ in range(10))
        pos = rng.randrange(len(text))
        return f"g{i}.txt", text[:pos] + odd + text[pos:]
    if kind == 3:
        return f"g{i}.md", f"# Title {i}\n\n## Part\n\n{english(rng, 60)}\n\n## 第二部分\n\n{chinese(rng, 80)}\n"
    if kind == 4:
        return f"g{i}.html", (f"<html><head><title>Page {i}</title></head><body><nav>menu</nav>"
                              f"<h1>Heading</h1><p>{english(rng, 70)}</p><script>x()</script></body></html>")
    if kind == 5:
        return f"g{i}.txt", rng.choice(WORDS) * rng.randrange(1, 300)  # no whitespace at all
    return f"g{i}.txt", english(rng, rng.randrange(5, 80))


def flate(data):
    return zlib.compress(data, 9)


def pdf_with_stream(dict_entries, data):
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>",
            b"<< " + dict_entries + b" /Length " + str(len(data)).encode() + b" >>\nstream\n"
            + data + b"\nendstream"]
    out = io.BytesIO()
    out.write(b"%PDF-1.5\n")
    offsets = []
    for n, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode())
    for o in offsets:
        out.write(f"{o:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def bad_files(rng, root, n_each, zero_mib):
    bad = []

    def put(name, data, reason):
        path = os.path.join(root, "bad", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        bad.append({"path": path, "kind": reason})

    bomb2 = flate(flate(b"\0" * (zero_mib << 20)))
    zipbomb = io.BytesIO()
    with zipfile.ZipFile(zipbomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (zero_mib << 20))
    zipbomb = zipbomb.getvalue()
    for i in range(n_each):
        put(f"empty{i}.txt", b"", "empty")
        put(f"blank{i}.txt", " \n\t \u3000\u00a0".encode(), "whitespace only")
        put(f"binary{i}.txt", bytes(rng.randrange(256) for _ in range(2048)) + b"\0", "binary")
        put(f"latin{i}.xyz", b"\x00\x01\x02\xff\xfe" * 300, "binary")
        put(f"trunc{i}.pdf", pdf_with_stream(b"/Filter /FlateDecode", flate(b"BT (hi) Tj ET"))[:120], "truncated PDF")
        put(f"bomb{i}.pdf", pdf_with_stream(b"/Filter [/FlateDecode /FlateDecode]", bomb2), "PDF bomb")
        put(f"notzip{i}.docx", b"this is not a zip", "not a DOCX")
        put(f"image{i}.png", b"\x89PNG\r\n\x1a\n" + bytes(100), "unsupported format")
        put(f"nul{i}.txt", b"text with a NUL\0 inside", "binary")
    for i in range(3):  # large ones: a few are enough
        put(f"huge{i}.txt", b"word " * (7 << 20), "over the size limit")
        put(f"zipbomb{i}.docx", zipbomb, "DOCX bomb")
    loop = os.path.join(root, "bad", "loop")
    os.makedirs(loop, exist_ok=True)
    try:
        os.symlink("..", os.path.join(loop, "up"))
        bad.append({"path": os.path.join(loop, "up"), "kind": "symlink loop"})
    except OSError:
        pass
    # An index inside the corpus: skipped as a whole, its files are no documents.
    inner = os.path.join(root, "old-index")
    os.makedirs(inner, exist_ok=True)
    with open(os.path.join(inner, "magpie.json"), "w") as f:
        f.write("{}")
    with open(os.path.join(inner, "catalog.json"), "w") as f:
        f.write("{}")
    return bad


def main():
    root = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    rng = random.Random(15)
    os.makedirs(root, exist_ok=True)
    n_bad_each = max(1, n // 100)
    bad = bad_files(rng, root, n_bad_each, 300)
    n_good = n - len(bad)
    for i in range(n_good):
        name, text = good(rng, i)
        sub = os.path.join(root, "good", f"{i // 1000:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, name), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    with open(root.rstrip("/") + ".manifest.json", "w") as f:
        json.dump({"good": n_good, "bad": bad}, f, indent=1)
    print(f"{n_good} good and {len(bad)} bad files in {root}")


if __name__ == "__main__":
    main()
