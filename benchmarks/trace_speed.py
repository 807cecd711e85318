"""How long ``tensorprog.trace`` takes and how much memory it needs, against bare torch.export.

Cases:

* ``gpt2-cpu``: HF GPT-2, 12 layers, widths (64, 128, 256), real weights on CPU.
  Target: trace under 5 s.
* ``gpt3-6.7b-meta``: a GPT-3 6.7B-shaped config (n_embd 4096, 32 layers, 32 heads, context
  2048, vocab 50257) traced on ``device="meta"`` at widths (1024, 2048, 4096) with n_head fixed,
  init scales from small real CPU instances (``--init-widths``). Target: under 30 s and 2 GB.

Every measurement runs in a fresh ``multiprocessing`` spawn child, so peaks never mix. Memory is
the child's peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) before and after the measured
call; "peak" is the absolute peak, "+peak" the growth over what the child held after imports and
warm-up (tracemalloc does not see torch's allocations, so it is not used). Both children first
run one tiny torch.export so that torch's one-time import / compile cost is not charged to either
side (``--cold`` skips the warm-up and reports it inside the figures).

The baseline is bare ``torch.export.export(model, args, strict=False)`` of the same configs, one
export per width; model construction is timed apart. ratio = trace time / export time.

Run: ``python benchmarks/trace_speed.py`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
import warnings

CASES = {
    "gpt2-cpu": dict(
        widths=(64, 128, 256), device="cpu", n_layer=12, n_head=4, vocab=50257, n_positions=1024,
        batch=2, seq=64, init_widths=None, target_s=5.0, target_gb=None),
    "gpt3-6.7b-meta": dict(
        widths=(1024, 2048, 4096), device="meta", n_layer=32, n_head=32, vocab=50257,
        n_positions=2048, batch=1, seq=128, init_widths=(64, 128, 256), target_s=30.0,
        target_gb=2.0),
}


def _factory(spec):
    from transformers import GPT2Config, GPT2LMHeadModel

    def factory(n):
        return GPT2LMHeadModel(GPT2Config(
            n_embd=n, n_layer=spec["n_layer"], n_head=spec["n_head"], vocab_size=spec["vocab"],
            n_positions=spec["n_positions"], use_cache=False))
    return factory


def _maxrss_mb() -> float:
    # Linux reports kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(cold: bool, threads: int | None) -> dict:
    warnings.filterwarnings("ignore")
    import torch
    import transformers  # noqa: F401  (import cost is not part of either measurement)
    from transformers.utils import logging as hf_logging

    import tensorprog  # noqa: F401

    hf_logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    warm = 0.0
    if not cold:
        t = time.perf_counter()
        torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),), strict=False)
        warm = time.perf_counter() - t
    return {"warmup_s": warm, "threads": torch.get_num_threads()}


def _child(what: str, name: str, spec: dict, cold: bool, threads, profile: bool, conn):
    try:
        info = _setup(cold, threads)
        import torch

        import tensorprog as tp

        factory = _factory(spec)
        ids = torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"]))
        base = _maxrss_mb()
        out = dict(info, rss_base_mb=base)
        if what == "trace":
            prof = None
            if profile:
                import cProfile
                prof = cProfile.Profile()
                prof.enable()
            t = time.perf_counter()
            g = tp.trace(factory, spec["widths"], example_inputs=(ids,), device=spec["device"],
                         init_widths=spec["init_widths"])
            out["time_s"] = time.perf_counter() - t
            if prof is not None:
                import io
                import pstats
                prof.disable()
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
                out["profile"] = s.getvalue()
            out["nodes"] = len(g.order)
            out["params"] = len(g.params)
        else:
            build = export = 0.0
            nodes = 0
            for w in spec["widths"]:
                t = time.perf_counter()
                if spec["device"] == "meta":
                    with torch.device("meta"):
                        model = factory(w)
                else:
                    model = factory(w)
                build += time.perf_counter() - t
                args = (ids.to(spec["device"]),)
                t = time.perf_counter()
                ep = torch.export.export(model, args, strict=False)
                export += time.perf_counter() - t
                nodes = len(ep.graph.nodes)
                del ep, model
            out.update(time_s=export, build_s=build, nodes=nodes)
        out["rss_peak_mb"] = _maxrss_mb()
        out["rss_delta_mb"] = out["rss_peak_mb"] - base
        conn.send(out)
    except BaseException as e:  # report, never hang the parent
        import traceback
        conn.send({"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"})
    finally:
        conn.close()


def run_in_child(what, name, spec, cold=False, threads=None, profile=False, timeout=900):
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(what, name, spec, cold, threads, profile, send))
    p.start()
    send.close()
    result = recv.recv() if recv.poll(timeout) else {"error": f"timed out after {timeout} s"}
    p.join(30)
    if p.is_alive():
        p.kill()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (each in a fresh child); "
                    "the best time and the largest peak are reported")
    ap.add_argument("--no-baseline", action="store_true", help="skip the bare torch.export runs")
    ap.add_argument("--cold", action="store_true", help="no warm-up export in the children")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads in the children (default: torch's default). On a "
                    "loaded machine with few cores, 1 avoids stalls in parallel elementwise ops")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of each trace run")
    ap.add_argument("--init-widths", type=int, nargs="+", default=None,
                    help="init widths for the meta case (default 64 128 256)")
    ap.add_argument("--seq", type=int, default=None, help="override the token sequence length")
    args = ap.parse_args(argv)

    import platform
    import os
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs (load average {load}), "
          f"torch threads {args.threads or 'default'}; a spawned child per measurement; "
          "times in s, memory = child peak RSS in MB")
    failed = False
    for name in args.cases:
        spec = dict(CASES[name])
        if args.init_widths and spec["device"] == "meta":
            spec["init_widths"] = tuple(args.init_widths)
        if args.seq:
            spec["seq"] = args.seq
        print(f"\n== {name}: GPT-2 n_layer={spec['n_layer']} n_head={spec['n_head']} "
              f"vocab={spec['vocab']} n_positions={spec['n_positions']} widths={spec['widths']} "
              f"device={spec['device']} tokens={spec['batch']}x{spec['seq']}"
              + (f" init_widths={spec['init_widths']}" if spec["device"] == "meta" else ""))
        rows = {}
        for what in (("trace",) if args.no_baseline else ("trace", "export")):
            runs = [run_in_child(what, name, spec, args.cold, args.threads,
                                 args.profile and what == "trace")
                    for _ in range(args.repeat)]
            errs = [r["error"] for r in runs if "error" in r]
            if errs:
                print(f"  {what}: FAILED\n{errs[0]}")
                failed = True
                continue
            best = min(runs, key=lambda r: r["time_s"])
            best["rss_peak_mb"] = max(r["rss_peak_mb"] for r in runs)
            best["rss_delta_mb"] = max(r["rss_delta_mb"] for r in runs)
            rows[what] = best
            extra = (f"  (+ model build {best['build_s']:.2f} s, {best['nodes']} nodes/graph)"
                     if what == "export" else f"  ({best['nodes']} nodes, {best['params']} params)")
            print(f"  {what:6s} {best['time_s']:7.2f} s   peak {best['rss_peak_mb']:7.0f} MB   "
                  f"+peak {best['rss_delta_mb']:7.0f} MB over {best['rss_base_mb']:.0f} MB "
                  f"baseline{extra}")
            if best.get("profile"):
                print(best["profile"])
        if "trace" in rows:
            tr = rows["trace"]
            if "export" in rows:
                ex = rows["export"]
                print(f"  ratio  trace / export = {tr['time_s'] / ex['time_s']:.2f}x; "
                      f"trace / (build + export) = "
                      f"{tr['time_s'] / (ex['time_s'] + ex['build_s']):.2f}x")
            ok_t = tr["time_s"] < spec["target_s"]
            line = f"  target: trace < {spec['target_s']:.0f} s: {'met' if ok_t else 'MISSED'}"
            if spec["target_gb"]:
                ok_m = tr["rss_peak_mb"] < spec["target_gb"] * 1024
                line += (f"; peak RSS < {spec['target_gb']:.0f} GB: {'met' if ok_m else 'MISSED'}"
                         f" ({tr['rss_peak_mb'] / 1024:.2f} GB)")
            print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
