#!/usr/bin/env python3
"""Build Flare's real cross-lingual classification data from the Debian SWORD Bibles.

Task: the genre of a verse's book, six classes (Law, History, Wisdom, Prophets, Gospels and Acts,
Letters and Revelation; protestant canon). English from the World English Bible (engWEB2015eb),
Spanish from the Reina-Valera 1909 (spaRV1909eb), joined on the `Book C:V` reference. Splits are
whole chapters chosen with a fixed seed; a verse whose neighbour (the last verse of the chapter
before, or the first of the chapter after) lies in another split is dropped, so no verse and no
neighbouring verse is in two splits. Classes are balanced by sampling verses within each split.

Written to Fixtures/data/bible/ (JSONL, one example a line; the reader of flare-train ignores the
fields it does not use):

  train.en        English training verses            {"text", "label", "ref"}
  valid.en        English validation verses          {"text", "label", "ref"}
  train.es-mt     train.en translated by Apertium eng-spa  {"text", "label", "ref", "source": English}
  valid.es-mt     valid.en translated by Apertium eng-spa  {"text", "label", "ref", "source": English}
  test.es         human Spanish (RV1909) test verses {"text", "label", "ref", "source": Apertium spa-eng}
  test.es-oracle  the same, "source" = the human English (WEB) parallel
  test.en-mt      translate-test: the Apertium English of test.es  {"text", "label", "ref"}
  test.en         the human English parallels of the test verses   {"text", "label", "ref"}
  lm-train.jsonl  causal-LM text: English verses of training chapters   {"text"}
  lm-valid.jsonl  causal-LM text: English verses of validation chapters {"text"}
  chapters.tsv    every chapter used: book, chapter, genre, split
  manifest.json   seed, package versions, counts per split and class, sha256 of every file

Usage: python3 scripts/build-bible-data.py [--out DIR] [--seed N] [--no-install]
Needs only the Python standard library and the Debian packages diatheke, sword-text-web,
sword-text-sparv, apertium and apertium-eng-spa (installed with apt-get when missing).
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EN_MODULE = "engWEB2015eb"
ES_MODULE = "spaRV1909eb"
PACKAGES = ["diatheke", "sword-text-web", "sword-text-sparv", "apertium", "apertium-eng-spa"]

# Book names as diatheke prints them, in canon order, with their genre.
GENRES = [
    ("Law", ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy"]),
    ("History", ["Joshua", "Judges", "Ruth", "I Samuel", "II Samuel", "I Kings", "II Kings",
                 "I Chronicles", "II Chronicles", "Ezra", "Nehemiah", "Esther"]),
    ("Wisdom", ["Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon"]),
    ("Prophets", ["Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel",
                  "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah",
                  "Haggai", "Zechariah", "Malachi"]),
    ("Gospels and Acts", ["Matthew", "Mark", "Luke", "John", "Acts"]),
    ("Letters and Revelation", ["Romans", "I Corinthians", "II Corinthians", "Galatians",
                                "Ephesians", "Philippians", "Colossians", "I Thessalonians",
                                "II Thessalonians", "I Timothy", "II Timothy", "Titus",
                                "Philemon", "Hebrews", "James", "I Peter", "II Peter", "I John",
                                "II John", "III John", "Jude", "Revelation of John"]),
]
# Verses per class and split (balanced).
QUOTA = {"train": 800, "valid": 150, "test": 250}
LM_LINES = {"train": 600, "valid": 150}


def ensure_packages(install):
    missing = []
    for pkg in PACKAGES:
        ok = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                            text=True).stdout.endswith("installed")
        if not ok:
            missing.append(pkg)
    if not missing:
        return
    if not install:
        sys.exit(f"missing Debian packages: {' '.join(missing)} (run without --no-install)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, check=True)


def package_version(pkg):
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                          text=True).stdout.strip()


TAG = re.compile(r"<[^>]*>")
STRONGS = re.compile(r"<[GH]\d+>")


def clean(text):
    """Markup-free, single-spaced verse text. Words that sit in adjacent <w> elements with no
    space between them (the WEB's `God</w><w…>created`) are kept apart; pilcrows and Strong's
    markers are dropped."""
    # What follows the book's last verse (the WEB appends its glossary there), and headings and
    # notes, which are not verse text.
    text = re.split(r'<div[^>]*type="(?:book|glossary)"', text)[0]
    text = re.sub(r"<(title|note)\b[^>]*>.*?</\1>", " ", text)
    text = re.sub(r"</(w|transChange)>(?=<(w|transChange)[ >])", r"</\1> ", text)
    text = STRONGS.sub("", text)
    text = TAG.sub("", text)
    text = text.replace("\u00b6", " ")
    # A comma or semicolon glued to the next word ("Jude,a servant").
    text = re.sub(r"([,;])(?=[^\W\d_])", r"\1 ", text)
    return re.sub(r"\s+", " ", text).strip()


def sentence_case_opening(text):
    """RV1909 writes a chapter's first word in capitals ("EN el principio"): "En el principio"."""
    m = re.match(r"([^\W\d_]{2,})(\s)", text)
    if m and m.group(1).isupper() and not text[m.end():].split(" ")[0].isupper():
        return m.group(1).capitalize() + text[len(m.group(1)):]
    return text


def read_book(module, book):
    """{(book, chapter, verse): text} from diatheke with OSIS markup, verses joined across
    output lines (a verse starts with `Book C:V: `; the last line names the module)."""
    out = subprocess.run(["diatheke", "-b", module, "-k", book], capture_output=True,
                         text=True, check=True).stdout
    # A verse line can start with markup diatheke repeats before the reference (a psalm's
    # <title>, <lg>/<l> milestones); that prefix is not verse text.
    head = re.compile(r"(?:^|>)" + re.escape(book) + r" (\d+):(\d+): ?(.*)$")
    verses, key = {}, None
    for line in out.split("\n"):
        if line.strip() == f"({module})":
            break
        m = head.search(line)
        if m:
            key = (book, int(m.group(1)), int(m.group(2)))
            verses[key] = m.group(3)
        elif key is not None:
            verses[key] += " " + line
    verses = {k: clean(v) for k, v in verses.items()}
    for k, v in verses.items():
        if len(v) > 2000:
            sys.exit(f"{module} {k[0]} {k[1]}:{k[2]}: {len(v)} characters; the verse split failed")
    return verses


def apertium(direction, lines):
    """One apertium process for all lines; one line in gives one line out."""
    if any("\n" in s for s in lines):
        raise ValueError("a line holds a newline")
    res = subprocess.run(["apertium", "-u", direction], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, check=True)
    out = res.stdout.split("\n")
    if out and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        raise RuntimeError(f"apertium {direction}: {len(lines)} lines in, {len(out)} out")
    return [re.sub(r"\s+", " ", s).strip() for s in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "Fixtures" / "data" / "bible"))
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--no-install", action="store_true", help="fail instead of installing")
    args = ap.parse_args()
    ensure_packages(not args.no_install)
    rng = random.Random(args.seed)

    # Parallel verses with text on both sides.
    genre_of, verses = {}, {}
    for genre, books in GENRES:
        for book in books:
            genre_of[book] = genre
            en, es = read_book(EN_MODULE, book), read_book(ES_MODULE, book)
            if not en or not es:
                sys.exit(f"diatheke returned no verses for {book}")
            for key in en.keys() & es.keys():
                if en[key] and es[key]:
                    verses[key] = (en[key], sentence_case_opening(es[key]))
    chapters = {}
    for key in sorted(verses):
        chapters.setdefault((key[0], key[1]), []).append(key)

    # Whole chapters to splits: shuffled per class; test, then valid filled to 1.4x their quota
    # (room for the boundary drops and the sampling), the rest train.
    split_of = {}
    for genre, books in GENRES:
        chs = [c for c in chapters if c[0] in books]
        chs.sort(key=lambda c: (books.index(c[0]), c[1]))
        rng.shuffle(chs)
        filled = {"test": 0, "valid": 0}
        for ch in chs:
            for split in ("test", "valid"):
                if filled[split] < QUOTA[split] * 1.4:
                    split_of[ch] = split
                    filled[split] += len(chapters[ch])
                    break
            else:
                split_of[ch] = "train"

    # Drop a verse whose neighbour across a chapter boundary lies in another split.
    def neighbour_split(book, chapter):
        return split_of.get((book, chapter))

    pools = {s: {g: [] for g, _ in GENRES} for s in QUOTA}
    for (book, chapter), keys in chapters.items():
        split = split_of[(book, chapter)]
        keep = list(keys)
        prev, nxt = neighbour_split(book, chapter - 1), neighbour_split(book, chapter + 1)
        if prev is not None and prev != split:
            keep = keep[1:]
        if nxt is not None and nxt != split:
            keep = keep[:-1]
        pools[split][genre_of[book]].extend(keep)

    # Formulaic verses recur word for word ("Yahweh spoke to Moses, saying,"): a validation or
    # test verse whose English or Spanish text stands anywhere in the training chapters is dropped.
    train_texts = {t for g in pools["train"].values() for k in g for t in verses[k]}
    chosen = {}
    for split, quota in QUOTA.items():
        rows = []
        for genre, _ in GENRES:
            pool = sorted(k for k in pools[split][genre]
                          if split == "train" or not (set(verses[k]) & train_texts))
            if len(pool) < quota:
                sys.exit(f"{split}/{genre}: {len(pool)} verses, fewer than {quota}")
            rows.extend(rng.sample(pool, quota))
        rng.shuffle(rows)
        chosen[split] = rows

    def ref(key):
        return f"{key[0]} {key[1]}:{key[2]}"

    train_en = [verses[k][0] for k in chosen["train"]]
    valid_en = [verses[k][0] for k in chosen["valid"]]
    test_es = [verses[k][1] for k in chosen["test"]]
    test_en = [verses[k][0] for k in chosen["test"]]
    train_mt = apertium("eng-spa", train_en)
    valid_mt = apertium("eng-spa", valid_en)
    test_en_mt = apertium("spa-eng", test_es)

    def rows(keys, texts, sources=None):
        out = []
        for i, key in enumerate(keys):
            row = {"text": texts[i], "label": genre_of[key[0]], "ref": ref(key)}
            if sources is not None:
                row["source"] = sources[i]
            out.append(row)
        return out

    files = {
        "train.en": rows(chosen["train"], train_en),
        "valid.en": rows(chosen["valid"], valid_en),
        "train.es-mt": rows(chosen["train"], train_mt, train_en),
        "valid.es-mt": rows(chosen["valid"], valid_mt, valid_en),
        "test.es": rows(chosen["test"], test_es, test_en_mt),
        "test.es-oracle": rows(chosen["test"], test_es, test_en),
        "test.en-mt": rows(chosen["test"], test_en_mt),
        "test.en": rows(chosen["test"], test_en),
    }
    # Causal-LM text: running English verses of training and validation chapters, in order.
    for split, count in LM_LINES.items():
        keys = sorted(k for ks in pools[split].values() for k in ks)
        start = rng.randrange(0, len(keys) - count)
        files[f"lm-{split}.jsonl"] = [{"text": verses[k][0]} for k in keys[start:start + count]]

    out = Path(args.out)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    digests = {}
    for name, data in files.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
        (stage / name).write_text(text, encoding="utf-8")
        digests[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    with open(stage / "chapters.tsv", "w", encoding="utf-8") as f:
        f.write("book\tchapter\tgenre\tsplit\n")
        for (book, chapter) in sorted(split_of, key=lambda c: ([b for _, bs in GENRES for b in bs]
                                                                .index(c[0]), c[1])):
            f.write(f"{book}\t{chapter}\t{genre_of[book]}\t{split_of[(book, chapter)]}\n")
    manifest = {
        "task": "genre of the verse's book (six classes, protestant canon)",
        "labels": [g for g, _ in GENRES],
        "seed": args.seed,
        "modules": {"english": EN_MODULE, "spanish": ES_MODULE},
        "packages": {p: package_version(p) for p in PACKAGES},
        "apertium": {"translate-train": "apertium -u eng-spa", "translate-test": "apertium -u spa-eng"},
        "balanced": True,
        "per_class": QUOTA,
        "counts": {name: len(data) for name, data in files.items()},
        "sha256": digests,
        "script": "scripts/build-bible-data.py",
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    for name, data in files.items():
        print(f"{name}: {len(data)} lines")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
