"""Is a verdict much dearer than the export it rests on? ``analyze`` against bare ``torch.export``.

For each model (HF BERT, GPT-2 and Llama at 2 layers, built from configs with random weights),
side by side in one run, best of ``--repeat``:

* export: build ``factory(w)`` and ``torch.export.export`` it at each width (what tracing needs
  at the least);
* analyze: ``tensorprog.analyze`` at the same widths (build, export, align, annotate, init
  measurement, op table, engine over 3 steps, verdict).

Prints the times and the ratio analyze / export (target: within 2x).

Run: python benchmarks/analyze_vs_export.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

warnings.filterwarnings("ignore")
WIDTHS = (64, 128, 256)


def hf(name):
    import transformers
    transformers.logging.set_verbosity_error()
    from transformers import (BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)

    def factory(n):
        if name == "bert":
            return BertForMaskedLM(BertConfig(hidden_size=n, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=4 * n, vocab_size=256,
                                              max_position_embeddings=64))
        if name == "gpt2":
            return GPT2LMHeadModel(GPT2Config(n_embd=n, n_layer=2, n_head=4, vocab_size=256,
                                              n_positions=64, use_cache=False))
        return LlamaForCausalLM(LlamaConfig(hidden_size=n, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=4, intermediate_size=4 * n,
                                            vocab_size=256, max_position_embeddings=64,
                                            use_cache=False))
    return factory


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["bert", "gpt2", "llama"])
    args = ap.parse_args(argv)
    from tensorprog import analyze

    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    print(f"{'model':8s} {'export':>9s} {'analyze':>9s} {'ratio':>6s}   verdict")
    for name in args.models:
        factory = hf(name)

        def export():
            for w in WIDTHS:
                torch.manual_seed(0)
                torch.export.export(factory(w), (ids,), strict=False)

        verdict = {}

        def run():
            rep = analyze(factory, WIDTHS, example_inputs=(ids,),
                          make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
            verdict["v"] = rep.parametrization

        te, ta = best(export, args.repeat), best(run, args.repeat)
        print(f"{name:8s} {te:8.2f}s {ta:8.2f}s {ta / te:5.2f}x   {verdict['v']}", flush=True)


if __name__ == "__main__":
    main()
