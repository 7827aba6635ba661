"""docqa's OpenAI-compatible API through the real `openai` package, unchanged.

Usage: python tests/clients/openai_client.py http://127.0.0.1:PORT/v1
Run by examples/docqa/tests/serve.rs; exits non-zero on the first failed check.
"""

import math
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="not-needed-on-loopback", max_retries=0)


def check(cond, what):
    if not cond:
        raise SystemExit(f"check failed: {what}")
    print(f"ok: {what}")


models = client.models.list()
ids = [m.id for m in models.data]
check(len(ids) == 2, f"models listed: {ids}")

question = "What does error E42 mean?"
messages = [{"role": "user", "content": question}]
whole = client.chat.completions.create(
    model=ids[0], messages=messages, temperature=0, max_tokens=40
)
text = whole.choices[0].message.content
check(whole.object == "chat.completion", "a chat.completion object")
check(bool(text and text.strip()), f"an answer: {text!r}")
check(whole.choices[0].finish_reason in ("stop", "length"), "a finish reason")
check(whole.usage.completion_tokens > 0, "usage is reported")
sources = (whole.model_extra or {}).get("sources") or []
check(any("faq.txt" in s["source"] for s in sources), "the passages come along in `sources`")

# A follow-up: "it" is the magpie of the turn before. Asked alone, the
# question finds the FAQ; in the conversation, the species notes.
follow_up = "What does it sound like?"
alone = client.chat.completions.create(
    model=ids[0], messages=[{"role": "user", "content": follow_up}], temperature=0, max_tokens=8
)
alone_first = ((alone.model_extra or {}).get("sources") or [{}])[0].get("source", "")
check("species-notes" not in alone_first, f"alone, the follow-up finds something else first: {alone_first}")
conversation = [
    {"role": "user", "content": "What colour is the Eurasian magpie's tail?"},
    {"role": "assistant", "content": "Iridescent green-blue."},
    {"role": "user", "content": follow_up},
]
reply = client.chat.completions.create(model=ids[0], messages=conversation, temperature=0, max_tokens=30)
cited = (reply.model_extra or {}).get("sources") or []
check(bool(cited) and "species-notes" in cited[0]["source"], f"the follow-up cites the passage the conversation is about: {[c['source'] for c in cited]}")
check(bool(reply.choices[0].message.content.strip()), "and answers it")

# A question the documents do not cover: said so, with the nearest passages,
# instead of an invention.
off = client.chat.completions.create(
    model=ids[0], messages=[{"role": "user", "content": "What is the capital of Peru?"}], temperature=0, max_tokens=20
)
said = off.choices[0].message.content
check(said.startswith("The documents do not cover this question"), f"an off-topic question is declined: {said!r}")

stream = client.chat.completions.create(
    model=ids[0],
    messages=messages,
    temperature=0,
    max_tokens=40,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage = [], None, None
for chunk in stream:
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.content:
            parts.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
check(len(parts) > 3, f"the answer streamed in {len(parts)} pieces")
check("".join(parts).strip() != "", "the streamed answer has text")
check(finish is not None and usage is not None, "the stream ends with a finish reason and usage")
check(usage.completion_tokens >= len(parts), "each piece is at least one generated token")

# Embeddings: the client asks for base64 by default and decodes it.
emb = client.embeddings.create(
    model=ids[1],
    input=["grid squares group sightings", "sightings are grouped in grid squares", "bake the bread"],
)
vecs = [d.embedding for d in emb.data]
check(len(vecs) == 3 and len(vecs[0]) == 384, "three 384-dimensional embeddings")


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


check(cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.2, "related texts are closer")
floats = client.embeddings.create(model=ids[1], input="bake the bread", encoding_format="float")
check(
    all(abs(x - y) < 1e-5 for x, y in zip(floats.data[0].embedding, vecs[2])),
    "float and base64 encodings agree",
)

# Errors arrive as the client's exceptions.
try:
    client.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": " "}])
    check(False, "an empty question is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "empty" in str(e), "an empty question is a BadRequestError")
