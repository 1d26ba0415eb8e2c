"""Builds an offline Hugging Face hub cache that stands in for
EleutherAI/gpt-neo-125M, which the reference's tests download.

The stand-in is a small GPT-Neo (2 layers, hidden size 256, the real
vocabulary size of 50257, so that its float16 weights still pass the
reference's "more than 20 MiB" check) with seeded random weights, and a
small byte-level BPE tokenizer trained on a fixed text. The reference's
inference check generates 50 sampled tokens after " hello" * 400 and expects
at least one more "hello": random weights would almost never say it, so the
final layer norm is set to point every position at the " hello" embedding
(weight 0, bias along that embedding row; the output head is tied to the
embeddings). Everything else is random; the model is deterministic for a
given seed.

The result is laid out like the hub's own cache (blobs, snapshots, refs) so
that from_pretrained("EleutherAI/gpt-neo-125M") resolves with
HF_HUB_OFFLINE=1 and HF_HOME=<out>.

usage: python3 make_hf_cache.py OUT_DIR
"""

import hashlib
import os
import shutil
import sys
import tempfile

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPTNeoConfig, GPTNeoForCausalLM, GPT2TokenizerFast

REPO_ID = "EleutherAI/gpt-neo-125M"
SEED = 1234
EOS = "<|endoftext|>"

CORPUS = [
    "hello hello world, hello there. Hello! say hello again and again.",
    "The quick brown fox jumps over the lazy dog.",
    "Tensors are serialized to a single file and loaded back as fast as possible.",
    "GPT Neo is a transformer language model; this one has random weights.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
]


def build_tokenizer() -> GPT2TokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 8, vocab_size=400, min_frequency=1, special_tokens=[EOS])
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    )
    tokenizer.model_max_length = 2048
    return tokenizer


def build_model(tokenizer: GPT2TokenizerFast) -> GPTNeoForCausalLM:
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPTNeoConfig(
        vocab_size=50257,
        hidden_size=256,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=2048,
        window_size=256,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(SEED)
    model = GPTNeoForCausalLM(config).eval()
    (hello_id,) = tokenizer.encode(" hello")
    with torch.no_grad():
        direction = model.transformer.wte.weight[hello_id]
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(direction * (200.0 / direction.dot(direction)))
    return model


def check(model: GPTNeoForCausalLM, tokenizer: GPT2TokenizerFast) -> None:
    ids = tokenizer.encode(" hello" * 20, return_tensors="pt")
    assert ids.shape[1] == 20, f"' hello' is not a single token: {ids}"
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=True, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.count("hello") == 25, text


def save_as_hub_cache(src: str, out: str) -> None:
    """Lays out the files of src as the hub cache of REPO_ID under out/hub."""
    repo_dir = os.path.join(out, "hub", "models--" + REPO_ID.replace("/", "--"))
    names = sorted(os.listdir(src))
    digest = hashlib.sha1()
    for name in names:
        with open(os.path.join(src, name), "rb") as f:
            digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    commit = digest.hexdigest()
    snapshot = os.path.join(repo_dir, "snapshots", commit)
    os.makedirs(os.path.join(repo_dir, "blobs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    for name in names:
        with open(os.path.join(src, name), "rb") as f:
            blob = hashlib.sha256(f.read()).hexdigest()
        shutil.copyfile(os.path.join(src, name), os.path.join(repo_dir, "blobs", blob))
        link = os.path.join(snapshot, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join("..", "..", "blobs", blob), link)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(commit)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.rsplit("usage: ", 1)[1])
    out = sys.argv[1]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    check(model, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_as_hub_cache(tmp, out)
    print(f"{REPO_ID} stand-in cached under {out}")


if __name__ == "__main__":
    main()
