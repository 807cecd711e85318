"""Run tensorprog.analyze over every causal-LM family transformers registers.

For each family in ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` this builds a tiny, width-parametrised
config generically (no per-family tables): every integer config field that is the hidden size or
a multiple of it becomes that multiple of the width, intermediate / expert / low-rank sizes become
a proportional multiple of the width, head counts are fixed (4; KV heads 4, 2 or 1 as the default
config has MHA, GQA or MQA) so head_dim grows with the width, 2 layers, vocab 256, max positions
64, use_cache=False, attn_implementation "sdpa" where supported else "eager". Sub-configs
(text_config, vision_config, ...) are shrunk the same way.

Each family gets exactly one outcome:
  skipped     cannot build a tiny config, or the eager forward on a (2, 16) batch of token ids
              fails (not tensorprog's fault; the reason is recorded),
  verdict     analyze returned a Report (parametrization, regime, stable, unknown_ops,
              width-dependent constants, notes),
  clear_error a TensorprogError (first line of its message),
  crash       any other exception (type, first message line, innermost tensorprog frame).

Per family it also records whether the default config has a width-dependent multiplier
(multiplier-like config fields, module attributes such as ``embed_scale`` / ``normalizer`` that
change with the width, and modeling-source lines scaling by sqrt(hidden_size) and the like) and
whether the report names it (a width-dependent constant in ``report.constants`` or a note).

HF models default to SP (constant initializer_range, one global LR), so the expected verdict is
"SP" (unstable is correct for SP + Adam at a constant LR); "muP"/"NTK"/"mixed" are suspicious
and listed separately.

Run:  python benchmarks/hf_zoo.py [--families llama,gpt2] [--timeout 120]
          [--jobs 1] [--json out.json]
Each family runs in its own subprocess (``--one FAMILY``), so a hang or a hard crash only costs
that family.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

WIDTHS = (64, 128, 256)
HEADS = 4
LAYERS = 2
VOCAB = 256
MAXPOS = 64
BATCH = (2, 16)

# ----------------------------------------------------------------------------- config shrinking

_HIDDEN_NAMES = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "model_dim", "hidden_dim",
                 "emb_dim", "n_embed", "d_embed")
_LAYER_RE = re.compile(r"^(num_hidden_layers|n_layer|n_layers|num_layers|decoder_layers|encoder_layers|"
                       r"num_decoder_layers|num_encoder_layers|num_hidden_blocks|n_blocks|num_blocks|"
                       r"depth)$")
_HEAD_RE = re.compile(r"^(num_attention_heads|n_head|n_heads|num_heads|encoder_attention_heads|"
                      r"decoder_attention_heads|num_attention_heads_per_layer|n_attn_heads)$")
_KV_RE = re.compile(r"^(num_key_value_heads|n_kv_heads|num_kv_heads|multi_query_group_num|"
                    r"num_key_value_groups|n_kv_head|kv_heads|n_head_kv|num_kv)$")
_HEAD_DIM_RE = re.compile(r"(head_dim|head_size|kv_channels|attention_head_size|d_head|d_kv|rotary_dim)")
_VOCAB_RE = re.compile(r"vocab_size$")
_POS_RE = re.compile(r"^(max_position_embeddings|n_positions|n_ctx|max_seq_len|max_sequence_length|"
                     r"max_target_positions|max_source_positions|seq_length|max_length|block_size|"
                     r"original_max_position_embeddings)$")
_EXPERTS_RE = re.compile(r"^(num_experts|n_routed_experts|num_local_experts|moe_num_experts|"
                         r"num_routed_experts|n_experts|moe_num_routed_experts)$")
_TOPK_RE = re.compile(r"^(num_experts_per_tok|num_experts_per_token|moe_topk|moe_k|top_k|"
                      r"num_selected_experts|moe_top_k|n_experts_per_tok)$")
_GROUP_RE = re.compile(r"^(n_group|topk_group|num_expert_groups|moe_n_group|moe_topk_group)$")
_PROP_RE = re.compile(r"(intermediate|ffn|inner|d_ff|mlp|feed_forward|expert.*(size|dim)|moe.*(size|dim)|"
                      r"lora_rank|hidden_dim|proj_dim|embed_dim|projection_dim|d_inner|conv_dim|"
                      r"shared_expert|cross_attention_hidden)")
# integers that must never be read as multiples of the hidden size
_NEVER_RE = re.compile(r"(vocab|position|token|_id$|_idx$|index|seq|window|length|layer|head|expert|"
                       r"chunk|image|patch|rope|theta|bucket|group|period|offset|interval|step|every|"
                       r"sample|mel|frame|codebook|^num_|^n_(?!embd|embed|inner|ctx_hidden)|_k$|^top|batch|channel|kernel|stride|"
                       r"pad|spatial|temporal|audio|freq|cache|bin|block|_size_per|rank_|state)")
_MULT_RE = re.compile(r"(multiplier|scaling|scale|mup|width_mult|dim_model_base|normaliz)", re.I)
_MULT_SKIP_RE = re.compile(r"(rope|rotary|init|eps|dropout|layer_norm|norm_eps|rms|initializer|"
                           r"lr|learning|rescale_every|attention_scaling_type|token)", re.I)


def _field_defaults(cfg_cls, c0):
    """name -> default value for the config's own fields (dataclass fields, attribute values)."""
    out = {}
    names = [f.name for f in dataclasses.fields(cfg_cls)] if dataclasses.is_dataclass(cfg_cls) else []
    if not names:
        names = [p for p in inspect.signature(cfg_cls.__init__).parameters if p not in ("self", "kwargs")]
    for n in names:
        if n.startswith("_"):
            continue
        if hasattr(c0, n):
            try:
                out[n] = getattr(c0, n)
            except Exception:  # noqa: BLE001
                pass
    return out


def _hidden(c0):
    for n in _HIDDEN_NAMES:
        v = getattr(c0, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return n, v
    return None, None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _layer_list(v, n_layers):
    """A per-layer list: keep 2 entries, preferring two different kinds (hybrid models)."""
    first = v[0]
    other = next((x for x in v[1:] if x != first), None)
    return [first, other] if other is not None else [first, v[1] if len(v) > 1 else first]


def shrink_kwargs(cfg_cls, width, c0=None, depth=0):
    """Constructor kwargs for a tiny config of ``cfg_cls`` at this width (generic rules)."""
    c0 = c0 if c0 is not None else cfg_cls()
    _, H = _hidden(c0)
    defaults = _field_defaults(cfg_cls, c0)
    amap = dict(getattr(cfg_cls, "attribute_map", {}) or {})
    heads0 = next((v for k, v in defaults.items() if _HEAD_RE.match(k) and _is_int(v)), None)
    layers0 = next((v for k, v in defaults.items() if _LAYER_RE.match(k) and _is_int(v)), None)
    hd = width // HEADS
    kw = {}
    from transformers import PretrainedConfig

    for k, v in defaults.items():
        if isinstance(v, PretrainedConfig):  # sub-config: shrink it the same way
            if depth < 2:
                sub = shrink_kwargs(type(v), width, v, depth + 1)
                d = v.to_dict()
                d.update(sub)
                kw[k] = d
            continue
        if isinstance(v, dict) and "model_type" in v and depth < 2:
            try:
                from transformers import AutoConfig
                sc = AutoConfig.for_model(**v)
                sub = shrink_kwargs(type(sc), width, sc, depth + 1)
                d = dict(v)
                d.update(sub)
                kw[k] = d
            except Exception:  # noqa: BLE001
                pass
            continue
        if k in _HIDDEN_NAMES and _is_int(v) and H and v % H == 0:
            kw[k] = (v // H) * width
        elif _VOCAB_RE.search(k) and _is_int(v):
            kw[k] = VOCAB
        elif _POS_RE.match(k) and _is_int(v):
            kw[k] = MAXPOS
        elif _LAYER_RE.match(k) and _is_int(v):
            kw[k] = LAYERS
        elif _HEAD_RE.match(k) and _is_int(v):
            kw[k] = HEADS
        elif _KV_RE.match(k) and _is_int(v):
            kw[k] = HEADS if (heads0 is None or v >= heads0) else (1 if v == 1 else 2)
        elif _HEAD_DIM_RE.search(k) and _is_int(v):
            kw[k] = hd
        elif _EXPERTS_RE.match(k) and _is_int(v):
            kw[k] = min(v, 4) if v > 0 else v
        elif _TOPK_RE.match(k) and _is_int(v):
            kw[k] = min(v, 2)
        elif _GROUP_RE.match(k) and _is_int(v):
            kw[k] = 1
        elif k in ("n_shared_experts", "num_shared_experts") and _is_int(v):
            kw[k] = min(v, 1)
        elif k in ("first_k_dense_replace", "num_dense_layers", "first_dense_layers") and _is_int(v):
            kw[k] = min(v, 1)
        elif re.search(r"token_id", k) and _is_int(v) and v >= VOCAB:
            kw[k] = VOCAB - 1 - (abs(hash(k)) % 8)
        elif re.search(r"token_id", k) and isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v):
            kw[k] = [x if x < VOCAB else VOCAB - 1 - i for i, x in enumerate(v)]
        elif _is_int(v) and H and v >= H and v % H == 0 and not _NEVER_RE.search(k):
            kw[k] = (v // H) * width          # the hidden size itself, or a multiple of it
        elif _is_int(v) and H and v > 0 and _PROP_RE.search(k) and not _NEVER_RE.search(k):
            kw[k] = max(1, round(v / H)) * width
        elif (isinstance(v, (list, tuple)) and layers0 and len(v) == layers0 and len(v) > 1
              and not all(_is_int(x) and x < layers0 and len(set(v)) == len(v) for x in v)):
            kw[k] = _layer_list(list(v), layers0)
        elif (isinstance(v, (list, tuple)) and v and all(_is_int(x) for x in v) and layers0
              and re.search(r"(layer|idx|indices|index)", k) and max(v) < layers0):
            kept = [x for x in v if x < LAYERS]
            kw[k] = kept if kept else [LAYERS - 1]
    # attribute_map aliases that were not fields: set the canonical names too
    for alias, real in amap.items():
        if real in kw and alias not in kw and alias in defaults:
            kw[alias] = kw[real]
    if "use_cache" in defaults or depth == 0:
        kw["use_cache"] = False
    # layer_types etc. derived from the layer count: let __post_init__ recompute when possible
    for k in ("layer_types", "layers_block_type"):
        if k in defaults and isinstance(defaults[k], (list, tuple)) and k not in kw:
            kw[k] = _layer_list(list(defaults[k]), layers0) if defaults[k] else defaults[k]
    return kw


def model_class(family):
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family]
    if isinstance(name, (list, tuple)):
        name = name[0]
    return getattr(transformers, name)


def config_class(family, mcls):
    cc = getattr(mcls, "config_class", None)
    if cc is not None and cc.__name__ != "PretrainedConfig" and cc.__name__ != "PreTrainedConfig":
        return cc
    from transformers import AutoConfig
    return type(AutoConfig.for_model(family))


def make_factory(family):
    """(factory, attn_impl) or raise: factory(width) -> tiny model of this family."""
    mcls = model_class(family)
    ccls = config_class(family, mcls)
    c0 = ccls()

    def build(width, impl):
        cfg = ccls(**shrink_kwargs(ccls, width, c0))
        try:
            cfg._attn_implementation = impl
        except Exception:  # noqa: BLE001
            pass
        for sub in ("text_config", "decoder_config", "language_config"):
            sc = getattr(cfg, sub, None)
            if sc is not None and hasattr(sc, "_attn_implementation"):
                try:
                    sc._attn_implementation = impl
                except Exception:  # noqa: BLE001
                    pass
        m = mcls(cfg)
        m.eval()
        return m

    return mcls, ccls, c0, build


# ----------------------------------------------------------------------------- multipliers

_SRC_RE = re.compile(
    r"(\b(hidden_size|d_model|n_embd|embed_dim|dim)\b[^\n#]{0,40}\*\*\s*\(?\s*-?0\.5"
    r"|sqrt\([^)\n]*(hidden_size|d_model|n_embd|embed_dim)"
    r"|\b(hidden_size|d_model|n_embd)\s*/\s*(self\.)?(config\.)?dim_model_base"
    r"|embedding_multiplier|logits_scaling|residual_multiplier|attention_multiplier"
    r"|\bnormalizer\b|embed_scale|scale_emb|mup_|width_mult)")


def multiplier_info(family, mcls, c0, build, impl):
    info = {"config_fields": {}, "source_hits": [], "module_attrs": {}, "width_dependent": False}
    for k, v in _field_defaults(type(c0), c0).items():
        if _MULT_RE.search(k) and not _MULT_SKIP_RE.search(k) and (isinstance(v, (int, float))):
            info["config_fields"][k] = v
    try:
        src = inspect.getsource(sys.modules[mcls.__module__])
        hits = []
        for line in src.splitlines():
            if _SRC_RE.search(line):
                s = line.strip()
                if s not in hits and not s.startswith(("#", '"', "'")):
                    hits.append(s)
        info["source_hits"] = hits[:8]
    except Exception:  # noqa: BLE001
        pass
    # module attributes (floats / 0-dim tensors) named like a scale that change with the width
    import torch
    vals = {}
    for w in WIDTHS[:2]:
        try:
            torch.manual_seed(0)
            m = build(w, impl)
        except Exception:  # noqa: BLE001
            return info
        for name, mod in m.named_modules():
            for a, v in vars(mod).items():
                if a.startswith("_") or not _MULT_RE.search(a) and a not in ("embed_scale", "normalizer", "scale"):
                    continue
                if isinstance(v, bool):
                    continue
                if isinstance(v, torch.Tensor) and v.numel() == 1:
                    v = float(v)
                if isinstance(v, (int, float)):
                    vals.setdefault(f"{name}.{a}", {})[w] = float(v)
            for a, b in list(mod.named_buffers(recurse=False)):
                if (_MULT_RE.search(a) or a in ("embed_scale", "normalizer")) and b.numel() == 1:
                    vals.setdefault(f"{name}.{a}", {})[w] = float(b)
    for k, d in vals.items():
        std_attn = all(math.isclose(d.get(w, 0.0), (w / HEADS) ** -0.5) for w in WIDTHS[:2])
        if len(d) == 2 and d[WIDTHS[0]] != d[WIDTHS[1]] and not std_attn:
            info["module_attrs"][k] = d
    cfg_dep = any(("multiplier" in k or "logits_scaling" in k) and v not in (1, 1.0, 0, None)
                  for k, v in info["config_fields"].items())
    info["width_dependent"] = bool(info["module_attrs"]) or bool(
        [h for h in info["source_hits"] if re.search(r"(\*\*\s*\(?\s*-?0\.5|sqrt|dim_model_base)", h)])
    info["config_multiplier_nontrivial"] = cfg_dep
    return info


# ----------------------------------------------------------------------------- one family


def _first_line(e):
    s = str(e).strip().splitlines()
    return s[0][:400] if s else ""


def _tp_frame(tb):
    frames = [f for f in traceback.extract_tb(tb) if f"{os.sep}tensorprog{os.sep}" in f.filename]
    if not frames:
        return None
    f = frames[-1]
    rel = f.filename[f.filename.rfind(f"{os.sep}tensorprog{os.sep}") + 1:]
    return f"{rel}:{f.lineno} ({f.name})"


def run_one(family):
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.logging.set_verbosity_error()
    import tensorprog

    res = {"family": family, "outcome": None}
    t0 = time.time()
    try:
        mcls, ccls, c0, build = make_factory(family)
        res["model_class"], res["config_class"] = mcls.__name__, ccls.__name__
        kw = shrink_kwargs(ccls, WIDTHS[0], c0)
        res["config_kwargs_w64"] = {k: v for k, v in kw.items() if not isinstance(v, dict)}
    except Exception as e:  # noqa: BLE001
        res.update(outcome="skipped", reason=f"config: {type(e).__name__}: {_first_line(e)}")
        return res
    ids = torch.randint(0, VOCAB, BATCH, generator=torch.Generator().manual_seed(0))
    impls = ["sdpa", "eager"] if getattr(mcls, "_supports_sdpa", False) else ["eager"]
    impl, why = None, []
    for cand in impls:
        try:
            torch.manual_seed(0)
            m = build(WIDTHS[0], cand)
        except Exception as e:  # noqa: BLE001
            why.append(f"{cand}: build: {type(e).__name__}: {_first_line(e)}")
            continue
        try:
            with torch.no_grad():
                m(ids)
            impl = cand
            res["n_params_w64"] = sum(p.numel() for p in m.parameters())
            break
        except Exception as e:  # noqa: BLE001
            why.append(f"{cand}: {type(e).__name__}: {_first_line(e)}")
    if impl is None:
        res.update(outcome="skipped", reason="build or eager forward: " + " | ".join(why))
        return res
    res["attn_implementation"] = impl
    try:
        res["multiplier"] = multiplier_info(family, mcls, c0, build, impl)
    except Exception as e:  # noqa: BLE001
        res["multiplier"] = {"error": f"{type(e).__name__}: {_first_line(e)}"}
    t1 = time.time()
    try:
        rep = tensorprog.analyze(lambda w: build(w, impl), WIDTHS, example_inputs=(ids,),
                                 make_optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
    except tensorprog.TensorprogError as e:
        res.update(outcome="clear_error", error_type=type(e).__name__, message=_first_line(e),
                   frame=_tp_frame(e.__traceback__))
    except Exception as e:  # noqa: BLE001
        res.update(outcome="crash", error_type=type(e).__name__, message=_first_line(e),
                   frame=_tp_frame(e.__traceback__))
    else:
        consts = [{"node": c["node"], "op": c["op"], "module": c["module"], "arg": str(c["arg"]),
                   "values": [float(v) if isinstance(v, (int, float)) else str(v) for v in c["values"]],
                   "exp": str(c["exp"])} for c in rep.constants]
        res.update(outcome="verdict", parametrization=rep.parametrization, regime=rep.regime,
                   stable=bool(rep.stable), unknown_ops=rep.unknown_ops, constants=consts,
                   notes=list(rep.notes), problems=[f"{p.what} ({p.when}) at {p.module or p.node}"
                                                     for p in rep.problems][:12],
                   warnings=list(rep.graph.warnings)[:8])
        mi = res.get("multiplier", {})
        if mi.get("width_dependent") or mi.get("module_attrs"):
            named = any(not (c["op"].startswith("scaled_dot_product") and c["arg"] == "scale")
                        for c in consts) or any(re.search(r"(multipl|constant|scal|sqrt)", n, re.I)
                                        for n in rep.notes)
            mi["named_by_report"] = named
    res["analyze_s"] = round(time.time() - t1, 1)
    res["total_s"] = round(time.time() - t0, 1)
    return res


# ----------------------------------------------------------------------------- driver


def families():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def run_sub(family, timeout):
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--one", family, "--out", out]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        try:
            with open(out) as fh:
                res = json.load(fh)
        except Exception:  # noqa: BLE001
            tail = (p.stderr or "").strip().splitlines()[-3:]
            res = {"family": family, "outcome": "crash", "error_type": f"subprocess rc={p.returncode}",
                   "message": " / ".join(tail)[:400], "frame": None}
    except subprocess.TimeoutExpired:
        res = {"family": family, "outcome": "crash", "error_type": "Timeout",
               "message": f"no result within {timeout} s", "frame": None}
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass
    res["wall_s"] = round(time.time() - t0, 1)
    return res


def summarize(results):
    out = []
    by = Counter(r["outcome"] for r in results)
    out.append("outcomes: " + ", ".join(f"{k}={by.get(k, 0)}" for k in
                                        ("verdict", "clear_error", "crash", "skipped")))
    crashes = defaultdict(list)
    for r in results:
        if r["outcome"] == "crash":
            crashes[(r.get("error_type"), r.get("frame"))].append(r)
    if crashes:
        out.append("\ncrashes by (exception, tensorprog frame):")
        for (t, fr), rs in sorted(crashes.items(), key=lambda kv: -len(kv[1])):
            out.append(f"  {t} @ {fr}: {len(rs)} -> {', '.join(r['family'] for r in rs)}")
            out.append(f"      e.g. {rs[0].get('message', '')[:200]}")
    errs = defaultdict(list)
    for r in results:
        if r["outcome"] == "clear_error":
            errs[r.get("message", "")[:120]].append(r["family"])
    if errs:
        out.append("\nclear errors:")
        for m, fs in sorted(errs.items(), key=lambda kv: -len(kv[1])):
            out.append(f"  {len(fs)}: {m} -> {', '.join(fs)}")
    verd = defaultdict(list)
    for r in results:
        if r["outcome"] == "verdict":
            verd[r["parametrization"]].append(r)
    if verd:
        out.append("\nverdicts by parametrization:")
        for p, rs in sorted(verd.items()):
            st = Counter("stable" if r["stable"] else "unstable" for r in rs)
            out.append(f"  {p}: {len(rs)} ({dict(st)}) -> {', '.join(r['family'] for r in rs)}")
    sus = [r for r in results if r["outcome"] == "verdict" and r["parametrization"] != "SP"]
    if sus:
        out.append("\nsuspicious (not SP for an HF default-SP model):")
        for r in sus:
            c = [f"{c['op']}@{c['module'] or c['node']} exp={c['exp']}" for c in r.get("constants", [])][:3]
            out.append(f"  {r['family']}: {r['parametrization']} regime={r['regime']} stable={r['stable']}"
                       f" constants={c}")
            for n in r.get("notes", [])[:3]:
                out.append(f"      note: {n[:200]}")
    skipped = [r for r in results if r["outcome"] == "skipped"]
    if skipped:
        out.append("\nskipped:")
        for r in skipped:
            out.append(f"  {r['family']}: {r.get('reason', '')[:200]}")
    mult = [r for r in results if (r.get("multiplier") or {}).get("width_dependent")
            or (r.get("multiplier") or {}).get("config_fields")]
    if mult:
        out.append("\nwidth-dependent / config multipliers:")
        for r in mult:
            mi = r["multiplier"]
            out.append(f"  {r['family']}: width_dependent={mi.get('width_dependent')} "
                       f"named={mi.get('named_by_report')} attrs={list(mi.get('module_attrs', {}))[:3]} "
                       f"config={mi.get('config_fields')}")
    unk = Counter(op for r in results if r["outcome"] == "verdict" for op in (r.get("unknown_ops") or {}))
    if unk:
        out.append("\nunknown ops: " + ", ".join(f"{k}({v})" for k, v in unk.most_common()))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma-separated subset (default: all causal-LM families)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per family")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", help="write all results to this JSON file (rewritten as they come)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.one:
        res = run_one(a.one)
        with open(a.out, "w") as f:
            json.dump(res, f, default=str)
        return 0

    fams = families()
    if a.families:
        want = [x.strip() for x in a.families.split(",") if x.strip()]
        bad = [x for x in want if x not in fams]
        if bad:
            print(f"unknown families: {bad}", file=sys.stderr)
        fams = [x for x in want if x in fams]
    results, t0 = [], time.time()

    def done(res, i):
        results.append(res)
        what = {"verdict": lambda r: f"{r['parametrization']} {r['regime']} stable={r['stable']}",
                "clear_error": lambda r: r.get("message", "")[:100],
                "crash": lambda r: f"{r.get('error_type')} @ {r.get('frame')}: {r.get('message', '')[:80]}",
                "skipped": lambda r: r.get("reason", "")[:100]}[res["outcome"]](res)
        print(f"[{len(results)}/{len(fams)} {time.time() - t0:6.0f}s] {res['family']}: {res['outcome']} "
              f"({res.get('wall_s')}s) {what}", file=sys.stderr, flush=True)
        if a.json:
            with open(a.json + ".tmp", "w") as f:
                json.dump(sorted(results, key=lambda r: r["family"]), f, indent=1, default=str)
            os.replace(a.json + ".tmp", a.json)

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        futs = {ex.submit(run_sub, f, a.timeout): i for i, f in enumerate(fams)}
        for fu in futs:
            pass
        from concurrent.futures import as_completed
        for fu in as_completed(futs):
            done(fu.result(), futs[fu])
    results.sort(key=lambda r: r["family"])
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
