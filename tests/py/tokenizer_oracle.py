"""DiffusionKit's CLIP tokenizer on the real CLIP BPE data, for tests/model_tokenizer.rs.

usage: tokenizer_oracle.py OUT_DIR PROMPTS.json
Writes OUT_DIR/vocab.json and OUT_DIR/merges.txt built from open_clip's
bpe_simple_vocab_16e6.txt.gz exactly as OpenAI/Hugging Face build CLIP's vocabulary, then
OUT_DIR/ids.json: for each prompt, DiffusionKit's ids (or null where it raises) and OpenAI's
byte-level ids (an independent implementation of openai/CLIP's SimpleTokenizer minus ftfy/html).
"""
import gzip
import importlib.util
import json
import os
import sys

import regex

import dk_stubs

dk_stubs.install()
from diffusionkit.mlx.tokenizer import Tokenizer  # noqa: E402


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main(out, prompts_file):
    spec = importlib.util.find_spec("open_clip")
    bpe_path = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    b2u = bytes_to_unicode()
    vocab = list(b2u.values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = dict(zip(vocab, range(len(vocab))))
    os.makedirs(out, exist_ok=True)
    json.dump(encoder, open(os.path.join(out, "vocab.json"), "w", encoding="utf-8"), ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("\n".join(" ".join(m) for m in merges) + "\n")

    # DiffusionKit's loader, as model_io.load_tokenizer does it.
    with open(os.path.join(out, "merges.txt"), encoding="utf-8") as f:
        bpe_merges = [tuple(m.split()) for m in f.read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]]
    tok = Tokenizer(dict(map(reversed, enumerate(bpe_merges))), json.load(open(os.path.join(out, "vocab.json"), encoding="utf-8")))

    pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    ranks = dict(map(reversed, enumerate(merges)))

    def openai(text):
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for piece in regex.findall(pat, text):
            word = [b2u[b] for b in piece.encode("utf-8")]
            word[-1] += "</w>"
            while len(word) > 1:
                pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
                best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
                if best not in ranks:
                    break
                new, i = [], 0
                while i < len(word):
                    if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                        new.append(word[i] + word[i + 1])
                        i += 2
                    else:
                        new.append(word[i])
                        i += 1
                word = new
            ids += [encoder[w] for w in word if w in encoder]
        return [encoder["<|startoftext|>"]] + ids[:75] + [encoder["<|endoftext|>"]]

    results = {}
    for p in json.load(open(prompts_file, encoding="utf-8")):
        try:
            dk = tok.tokenize(p)
        except KeyError:
            dk = None
        results[p] = {"diffusionkit": dk, "openai": openai(p)}
    json.dump(results, open(os.path.join(out, "ids.json"), "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
