#!/usr/bin/env python3
"""HF folders whose tokenizer is a SentencePiece model (`tokenizer.model`), and the GGUF
tokenizer keys llama.cpp's converter writes from them.

  spm-gemma3/, spm-gemma2/, spm-llama2/
      config.json and model.safetensors: a one-block model of the family with seeded random
      weights (transformers' <Family>ForCausalLM from a config; vocab_size a little larger than
      the SentencePiece model, so the converter pads the vocabulary); tokenizer.model: a BPE
      SentencePiece model trained here by the `sentencepiece` library on the Bible verses of
      Fixtures/data/bible, Gemma's way (no dummy prefix, ids pad 0, eos 1, bos 2, unk 3, byte
      fallback, user-defined and control pieces) or Llama 2's (dummy prefix, unk 0, bos 1, eos 2);
      tokenizer.json, tokenizer_config.json (with `added_tokens_decoder`) and
      special_tokens_map.json as transformers' GemmaTokenizer / LlamaTokenizer save them from that
      model, plus a chat template (Gemma 3) and an added_tokens.json (Llama 2).

  spm-golden.json, per folder:
      "gguf": every `tokenizer.*` key of the GGUF llama.cpp's converter (convert_hf_to_gguf.py of
        the llama-cpp-python 0.3.36 sdist) writes from the folder;
      "ids": sentencepiece's ids (no BOS) for Fixtures/tokenizers/hf-golden.json's strings;
      "hf_tokenizer_model_crc32": the CRC-32 of the tokenizer.model the GGUF → HF conversion
        is to write back from that GGUF: pieces (text, score, type; Gemma's tokens of spaces
        spelled with "▁"; the unknown token typed unknown), a BPE trainer spec with byte
        fallback, an identity normalizer with the GGUF's add_space_prefix. Built here with
        sentencepiece's own protobuf module and checked: sentencepiece loads it and gives the
        same ids as the trained model on every string;
      "hf_tokenizer_model_ids": those ids.

  gemma3-270m-spm.json (with --gemma3 PATH to the Q4_K_M GGUF): the same CRC-32 for the real
      Gemma 3 270M file, and the ids sentencepiece gives with that tokenizer.model for the
      strings (to equal llama.cpp's, recorded in gemma3-270m.json).

Oracles: sentencepiece 0.2, transformers 5.25.0, torch 2.15 (CPU), gguf 0.19, llama.cpp's
converter from the llama-cpp-python 0.3.36 sdist (scripts/fetch-tokenizer-tests.sh downloads it
to $FLARE_CACHE/downloads).

    python3 Fixtures/families/make_spm_fixtures.py [--gemma3 PATH]

Deterministic: sentencepiece trains single-threaded, torch is seeded.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib

import numpy as np
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("FLARE_CACHE", os.path.expanduser("~/.cache/flare"))
SDIST = os.path.join(CACHE, "downloads", "llama_cpp_python-0.3.36.tar.gz")

STYLES = {
    "gemma3": dict(gemma=True, vocab=460),
    "gemma2": dict(gemma=True, vocab=460),
    "llama2": dict(gemma=False, vocab=440),
}
PIECES = 400


def strings():
    with open(os.path.join(ROOT, "Fixtures/tokenizers/hf-golden.json"), encoding="utf-8") as f:
        return json.load(f)["strings"]


def corpus(path):
    lines = []
    for name in ("train.en", "train.es-mt"):
        with open(os.path.join(ROOT, "Fixtures/data/bible", name), encoding="utf-8") as f:
            lines += [line.rstrip("\n") for line in f][:400]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def train(prefix, text, gemma):
    common = dict(
        input=text, model_prefix=prefix, model_type="bpe", vocab_size=PIECES,
        character_coverage=1.0, byte_fallback=True, num_threads=1, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, minloglevel=2,
    )
    if gemma:
        spm.SentencePieceTrainer.train(
            **common, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
            control_symbols=["<mask>", "[@BOS@]", "<unused0>"],
            user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "\n", "▁▁", "▁▁▁"],
        )
    else:
        spm.SentencePieceTrainer.train(
            **common, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        )
    # The trainer records where it ran (the corpus path, the output prefix): left out.
    proto = sp_pb2.ModelProto()
    with open(prefix + ".model", "rb") as f:
        proto.ParseFromString(f.read())
    proto.trainer_spec.ClearField("input")
    proto.trainer_spec.ClearField("model_prefix")
    with open(prefix + ".model", "wb") as f:
        f.write(proto.SerializeToString())


def model_folder(style, folder, spec):
    torch.manual_seed(7)
    import transformers as tf
    common = dict(
        vocab_size=spec["vocab"], hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
    )
    if style == "gemma3":
        config = tf.Gemma3TextConfig(**common, sliding_window=4, query_pre_attn_scalar=8,
                                     pad_token_id=0, eos_token_id=1, bos_token_id=2)
        model = tf.Gemma3ForCausalLM(config)
    elif style == "gemma2":
        config = tf.Gemma2Config(**common, sliding_window=4, query_pre_attn_scalar=8,
                                 pad_token_id=0, eos_token_id=1, bos_token_id=2)
        model = tf.Gemma2ForCausalLM(config)
    else:
        config = tf.LlamaConfig(**common, bos_token_id=1, eos_token_id=2)
        model = tf.LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        path = os.path.join(folder, extra)
        if os.path.exists(path):
            os.remove(path)


def tokenizer_files(style, folder, model_file):
    """tokenizer.json from transformers; tokenizer_config.json in the form the hub's Gemma and
    Llama 2 folders have (add_bos_token, added_tokens_decoder; Llama 2's special tokens as
    AddedToken objects); tokenizer.model."""
    import transformers as tf
    gemma = style.startswith("gemma")
    cls = tf.GemmaTokenizer if gemma else tf.LlamaTokenizer
    tokenizer = cls(vocab_file=model_file, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(folder)
    shutil.copyfile(model_file, os.path.join(folder, "tokenizer.model"))
    for name in ("special_tokens_map.json", "chat_template.jinja"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
    proto = sp_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    decoder = {}
    for i, piece in enumerate(proto.pieces):
        if piece.type in (sp_pb2.ModelProto.SentencePiece.CONTROL,
                          sp_pb2.ModelProto.SentencePiece.UNKNOWN,
                          sp_pb2.ModelProto.SentencePiece.USER_DEFINED):
            special = piece.type != sp_pb2.ModelProto.SentencePiece.USER_DEFINED or \
                piece.piece.endswith("_of_turn>")
            decoder[str(i)] = {
                "content": piece.piece, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": special,
            }

    def token(text):
        if gemma:
            return text
        return {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False}

    config = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder}
    if gemma:
        config.update(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                      unk_token="<unk>", mask_token="<mask>", tokenizer_class="GemmaTokenizer")
    else:
        config.update(bos_token=token("<s>"), eos_token=token("</s>"), pad_token=None,
                      unk_token=token("<unk>"), legacy=False, add_prefix_space=None,
                      tokenizer_class="LlamaTokenizer")
    config.update(clean_up_tokenization_spaces=False, model_max_length=2048,
                  spaces_between_special_tokens=False)
    if style == "gemma3":
        config["chat_template"] = (
            "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
            "<end_of_turn>\n{% endfor %}"
        )
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    if style == "llama2":
        # An added token beyond the SentencePiece model, the way older Llama 2 folders list them.
        with open(os.path.join(folder, "added_tokens.json"), "w", encoding="utf-8") as f:
            json.dump({"<extra_0>": PIECES}, f)


def converter(work):
    root = os.path.join(work, "llama.cpp")
    if not os.path.isdir(root):
        with tarfile.open(SDIST, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if "/vendor/llama.cpp/" in m.name and (
                           m.name.endswith("convert_hf_to_gguf.py")
                           or "/vendor/llama.cpp/conversion/" in m.name
                           or "/vendor/llama.cpp/gguf-py/" in m.name)]
            tar.extractall(work, members=members, filter="data")
        top = os.path.join(work, os.listdir(work)[0], "vendor", "llama.cpp")
        shutil.move(top, root)
    return root


def convert(root, folder, out):
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "gguf-py"))
    subprocess.run(
        [sys.executable, os.path.join(root, "convert_hf_to_gguf.py"), folder,
         "--outfile", out, "--outtype", "f32"],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tokenizer_keys(path):
    import gguf
    reader = gguf.GGUFReader(path)
    keys = {}
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        value = field.contents()
        if isinstance(value, list) and value and isinstance(value[0], float):
            value = [float(np.float32(v)) for v in value]
        keys[name] = value
    return keys


def hf_model_file(keys, gemma):
    """The tokenizer.model the GGUF → HF conversion writes for these GGUF keys."""
    tokens = keys["tokenizer.ggml.tokens"]
    scores = keys["tokenizer.ggml.scores"]
    types = list(keys["tokenizer.ggml.token_type"])
    unk = keys.get("tokenizer.ggml.unknown_token_id")
    if unk is not None:
        types[unk] = 2
    proto = sp_pb2.ModelProto()
    for token, score, kind in zip(tokens, scores, types):
        if gemma and len(token) >= 2 and set(token) == {" "}:
            token = "▁" * len(token)
        piece = proto.pieces.add()
        piece.piece = token
        piece.score = score
        piece.type = kind
    proto.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = 6 in types
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = keys.get("tokenizer.ggml.add_space_prefix", True)
    proto.normalizer_spec.remove_extra_whitespaces = False
    return proto.SerializeToString()


def encode_all(model_bytes, texts):
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model_bytes)
    return [processor.encode(text) for text in texts]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gemma3", help="the Gemma 3 270M GGUF, for gemma3-270m-spm.json")
    args = parser.parse_args()
    texts = strings()
    golden = {}
    with tempfile.TemporaryDirectory() as work:
        root = converter(work)
        text = os.path.join(work, "corpus.txt")
        corpus(text)
        trained = {}
        for gemma in (True, False):
            prefix = os.path.join(work, "gemma" if gemma else "llama2")
            train(prefix, text, gemma)
            trained[gemma] = prefix + ".model"
        for style, spec in STYLES.items():
            folder = os.path.join(HERE, f"spm-{style}")
            shutil.rmtree(folder, ignore_errors=True)
            model_folder(style, folder, spec)
            tokenizer_files(style, folder, trained[spec["gemma"]])
            out = os.path.join(work, f"{style}.gguf")
            convert(root, folder, out)
            keys = tokenizer_keys(out)
            with open(trained[spec["gemma"]], "rb") as f:
                original = f.read()
            ids = encode_all(original, texts)
            written = hf_model_file(keys, spec["gemma"])
            written_ids = encode_all(written, texts)
            assert written_ids == ids, f"{style}: the written tokenizer.model tokenizes differently"
            golden[style] = {
                "gguf": keys, "ids": ids,
                "hf_tokenizer_model_crc32": zlib.crc32(written),
                "hf_tokenizer_model_ids": written_ids,
            }
    with open(os.path.join(HERE, "spm-golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    if args.gemma3:
        keys = tokenizer_keys(args.gemma3)
        written = hf_model_file(keys, True)
        result = {
            "hf_tokenizer_model_crc32": zlib.crc32(written),
            "hf_tokenizer_model_bytes": len(written),
            "ids": encode_all(written, texts),
        }
        with open(os.path.join(HERE, "gemma3-270m-spm.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
