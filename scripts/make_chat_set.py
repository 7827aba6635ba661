#!/usr/bin/env python3
"""Build a multi-turn conversation set for `docqa eval chat` from a SQuAD-layout file.

    scripts/make_chat_set.py ../shared/data/squad-v1.1-dev/dev-v1.1.json target/chat-squad
    scripts/make_chat_set.py ../shared/data/cmrc2018-dev/cmrc2018_dev.json target/chat-cmrc

SQuAD asks many questions of each paragraph, and most name their subject (the
article's title: "the Normans", "Super Bowl 50"). A conversation here is such a
chain on one paragraph: the first turn is a question as written; each follow-up
is another question on the same paragraph with its subject replaced by a
pronoun ("When did they conquer England?"), so it depends on the earlier turns
by construction: alone, it names no subject. Earlier turns carry their gold
answer as the assistant's reply.

Labels (the `answerability` field):
- answerable: the paragraph is in the corpus;
- unanswerable: the paragraph was held out of the corpus (a fixed share of
  paragraphs, chosen by the seed): the topic is there, the answer is not
  (`held_out`: "paragraph"); or its whole article was (a few articles): the
  documents do not cover the topic at all (`held_out`: "article");
- underspecified: a follow-up asked as the first turn, with no history to
  say what "it" is.

Some conversations then change the subject: a question as written about a
paragraph of another article (kind "shift"), where the history is noise. Each
turn's `kind` says which it is: first, follow-up, shift, alone.

Writes OUT/corpus.jsonl (BEIR: _id, title, text) and OUT/conversations.jsonl
(one line per scored turn: id, messages, gold_doc_ids, answerability,
answers), and prints counts. Deterministic for a given seed.

A Chinese file (CMRC 2018: one paragraph per article, and three questions in
four name the article's title) gets the same construction in Chinese: the
title, with its 《》 if it has them, becomes 它 (他 or 她 for a person: a
transliterated name with ·, or a passage whose opening gives a lifespan, a
courtesy name, a home town, a birth, a parent, a spouse or a trade), as a
Chinese speaker continuing the conversation would say
it ("它常用的节奏型称为什么？"). Every held-out paragraph is then a whole
article. (Where the name modified a noun, "它海军" should read "它的海军": a
few percent of follow-ups; telling them apart needs a word segmenter.)
"""

import argparse
import json
import os
import random
import re

PERSONS = {"Nikola Tesla", "Martin Luther", "Genghis Khan"}
FUNCTION_WORDS = set(
    "the a an did does do was is were are has have had be been being can could would will should "
    "may might must of in on at to for from with by about that which and or but when where how why "
    "what who whom whose during after before since into within without under over between against "
    "among through than as if become became use used make made get got take took".split()
)


def aliases(title):
    """Names a question may use for the article's subject, longest first."""
    t = title.replace("_", " ")
    out = {t}
    base = re.split(r"\s*[(,]", t)[0].strip()
    out.add(base)
    if t in PERSONS:
        out.add(t.split()[-1])
    return sorted((a for a in out if len(a) >= 3), key=len, reverse=True)


def pronoun(title):
    t = title.replace("_", " ")
    if t in PERSONS:
        return "he", "his", "him"
    base = re.split(r"\s*[(,]", t)[0].strip()
    if base.endswith("s") and not base.endswith("ss"):
        return "they", "their", "them"
    return "it", "its", "it"


def pronominalize(question, title):
    """The question with its subject replaced by a pronoun, or None when it does
    not name the subject."""
    subj, poss, obj = pronoun(title)
    for a in aliases(title):
        pat = re.compile(r"(?i)\b(the\s+)?" + re.escape(a) + r"('s|’s|')?(?=\W|$)")
        m = pat.search(question)
        if not m:
            continue
        start = m.start()
        # Only where the name is a noun phrase of its own: not "the Super Bowl
        # 50 game" or "the innate immune system", which a pronoun cannot replace.
        before = question[:start].rstrip().split()
        prev = before[-1].lower().strip(",") if before else ""
        rest = question[m.end():]
        if rest and not (rest[0].isspace() or rest[0] in "?,.;:!)'’\""):
            return None  # part of a longer token: "Sky+HD"
        after = rest.lstrip()
        nxt = re.split(r"\W", after.lower(), maxsplit=1)[0] if after and after[0].isalnum() else ""
        if prev and prev not in FUNCTION_WORDS:
            return None
        if nxt and nxt not in FUNCTION_WORDS and not nxt.endswith("ed"):
            return None
        if m.group(2):
            word = poss
        else:
            # A preposition takes the object form ("other than him"); a name
            # that a verb follows ("that he believed", "Edison and he were"),
            # or that opens the question or follows an auxiliary, is the
            # subject; elsewhere the object form reads better.
            verbs = {"did", "does", "do", "was", "is", "were", "are", "has", "have", "had"}
            aux = verbs | {"can", "could", "would", "will", "should", "may", "might", "must"}
            preps = {"of", "in", "on", "at", "to", "for", "from", "with", "by", "about", "than",
                     "into", "within", "without", "under", "over", "between", "against", "among",
                     "through", "during", "after", "before", "since"}
            verb_next = nxt in aux or (nxt.endswith("ed") and nxt not in preps)
            if prev in preps and not (prev == "since" and verb_next):
                word = obj
            elif verb_next or not before or prev in verbs:
                word = subj
            else:
                word = obj
        out = question[:start] + word + question[m.end():]
        out = re.sub(r"\s+", " ", out).strip()
        if out and out[0].islower() and start == 0:
            out = out[0].upper() + out[1:]
        # The subject must be gone entirely (a question naming it twice is skipped).
        if any(re.search(r"(?i)\b" + re.escape(x) + r"\b", out) for x in aliases(title)):
            return None
        return out
    return None


CJK = re.compile(r"[\u4e00-\u9fff]")


PERSON_CUES_ZH = [
    r"[（(][^）)]{0,15}(\d{3,4}年[^）)]{0,10}[－—–-]|[－—–-][^）)]{0,4}\d{3,4}年)",  # a lifespan
    r"[，,）)]字[\u4e00-\u9fff]{1,3}[，。；]",  # a courtesy name: ，字子文，
    r"^[^。]{0,60}[）)，,][^。，、]{2,30}人[。，；]",  # a home town: （），广东开平人。
    r"^[^。]{0,40}(出生|(?<!发)生于)",
    r"之子|之女|之妻|生母|第[一二三四五六七八九十]+子|她",
]
WOMAN_CUES_ZH = r"之女|之妻|皇后|夫人|妃|女演员|女歌手|女子|她"
PERSON_TRADES_ZH = (
    "演员|歌手|运动员|球员|作家|政治家|画家|诗人|导演|主持人|模特|艺人|教练|将领|官员|学者|"
    "科学家|哲学家|政治人物|人物"
)


def person_pronoun_zh(title, context):
    """他 or 她 when the article is about a person (a transliterated name with
    ·; in its opening a lifespan, courtesy name, home town, birth, parent or
    spouse, or a trade ending a clause), else None."""
    head = context[:80]
    trade = re.search(r"(" + PERSON_TRADES_ZH + r")[。，；]", context[:60] + "。")
    if "·" in title or trade or any(re.search(c, head) for c in PERSON_CUES_ZH):
        early = context[:300]
        woman = re.search(WOMAN_CUES_ZH, head) or ("她" in early and "他" not in early)
        return "她" if woman else "他"
    return None


def pronominalize_zh(question, title, context):
    """The Chinese question with the article's name replaced by 它/他/她, or
    None when it does not name it exactly once."""
    base = re.split(r"\s*[(（]", title)[0].strip()
    word = person_pronoun_zh(title, context) or "它"
    for a in sorted({title, base}, key=len, reverse=True):
        if len(a) < 2 or a not in question:
            continue
        quoted = f"《{a}》"
        name = quoted if quoted in question else a
        if question.count(name) != 1:
            return None
        out = question.replace(name, word)
        return out if base not in out else None
    return None


def refer(question, title, context):
    """The follow-up form of a question: its subject as a pronoun."""
    if CJK.search(title):
        return pronominalize_zh(question, title, context)
    return pronominalize(question, title)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("squad", help="a SQuAD-layout JSON file (dev-v1.1.json)")
    ap.add_argument("out", help="the folder to write")
    ap.add_argument("--holdout", type=float, default=0.08, help="share of paragraphs held out (unanswerable)")
    ap.add_argument("--holdout-articles", type=int, default=3, help="whole articles held out (unanswerable, off the corpus's topics)")
    ap.add_argument("--followups", type=int, default=2, help="follow-up turns per conversation, at most")
    ap.add_argument("--shift", type=float, default=0.3, help="share of conversations that change the subject at the end")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--articles", type=int, default=0, help="only the first N articles (0: all; small sets for tests)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    data = json.load(open(args.squad, encoding="utf-8"))["data"]
    if args.articles:
        data = data[: args.articles]
    os.makedirs(args.out, exist_ok=True)
    corpus, turns = [], []
    held_set = set()
    hold_rng = random.Random(args.seed + 2)
    for ai, article in enumerate(data):
        for pi, _ in enumerate(article["paragraphs"]):
            if hold_rng.random() < args.holdout:
                held_set.add(f"{ai}-{pi}")
    held_articles = set(random.Random(args.seed + 3).sample(range(len(data)), args.holdout_articles))
    for ai in held_articles:
        held_set.update(f"{ai}-{pi}" for pi in range(len(data[ai]["paragraphs"])))
    counts = {"answerable": 0, "unanswerable": 0, "underspecified": 0, "follow-ups": 0, "shifts": 0}
    # Standalone questions on paragraphs kept in the corpus, by article, for subject changes.
    pool = []
    for ai, article in enumerate(data):
        for pi, para in enumerate(article["paragraphs"]):
            for q in para["qas"]:
                if q["answers"]:
                    pool.append((ai, f"{ai}-{pi}", q))
    shift_rng = random.Random(args.seed + 1)
    for ai, article in enumerate(data):
        title = article["title"]
        for pi, para in enumerate(article["paragraphs"]):
            doc_id = f"{ai}-{pi}"
            held_out = doc_id in held_set
            if not held_out:
                corpus.append({"_id": doc_id, "title": title.replace("_", " "), "text": para["context"]})
            qas = [q for q in para["qas"] if q["answers"]]
            named = [q for q in qas if refer(q["question"], title, para["context"])]
            if not named:
                continue
            first = rng.choice(qas)
            rest = [q for q in named if q is not first]
            rng.shuffle(rest)
            follow = rest[: args.followups]
            label = "unanswerable" if held_out else "answerable"
            whole = ai in held_articles or len(article["paragraphs"]) == 1
            held = ({"held_out": "article" if whole else "paragraph"} if held_out else {})
            gold = [] if held_out else [doc_id]
            answers = lambda q: [] if held_out else sorted({a["text"] for a in q["answers"]})
            messages = [{"role": "user", "content": first["question"]}]
            turns.append({"id": f"{first['id']}-t1", "messages": list(messages), "gold_doc_ids": gold,
                          "answerability": label, "answers": answers(first), "turn": 1, "kind": "first", **held})
            counts[label] += 1
            prev = first
            for k, q in enumerate(follow, start=2):
                messages = messages + [
                    {"role": "assistant", "content": prev["answers"][0]["text"]},
                    {"role": "user", "content": refer(q["question"], title, para["context"])},
                ]
                turns.append({"id": f"{q['id']}-t{k}", "messages": list(messages), "gold_doc_ids": gold,
                              "answerability": label, "answers": answers(q), "turn": k, "kind": "follow-up", **held})
                counts[label] += 1
                counts["follow-ups"] += 1
                prev = q
            # A change of subject: a question on another article's paragraph.
            if follow and not held_out and shift_rng.random() < args.shift:
                while True:
                    oa, other_doc, oq = shift_rng.choice(pool)
                    if oa != ai and other_doc not in held_set:
                        break
                messages = messages + [
                    {"role": "assistant", "content": prev["answers"][0]["text"]},
                    {"role": "user", "content": oq["question"]},
                ]
                turns.append({"id": f"{oq['id']}-shift", "messages": list(messages), "gold_doc_ids": [other_doc],
                              "answerability": "answerable", "answers": sorted({a["text"] for a in oq["answers"]}),
                              "turn": len(follow) + 2, "kind": "shift"})
                counts["answerable"] += 1
                counts["shifts"] += 1
            # The same follow-up with no history: nothing says what it refers to.
            if follow and not held_out and rng.random() < 0.25:
                q = follow[0]
                turns.append({"id": f"{q['id']}-alone", "messages": [{"role": "user", "content": refer(q["question"], title, para["context"])}],
                              "gold_doc_ids": gold, "answerability": "underspecified",
                              "answers": sorted({a["text"] for a in q["answers"]}), "turn": 1, "kind": "alone"})
                counts["underspecified"] += 1
    with open(os.path.join(args.out, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for d in corpus:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    with open(os.path.join(args.out, "conversations.jsonl"), "w", encoding="utf-8") as f:
        for t in turns:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    print(f"{len(corpus)} passages, {len(turns)} scored turns: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
