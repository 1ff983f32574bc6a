#!/usr/bin/env python
"""Benchmark ``HookedAutoModel.run_with_cache`` against a plain Hugging Face forward pass.

Measured on the default model (SmolLM2-135M-Instruct) with a batch of random tokens, on the CPU,
under ``torch.no_grad()``:

1. ``hf_eager``       plain HF forward, eager attention, same weights (the baseline);
2. ``arrakis_full``   ``model.run_with_cache(tokens)`` caching every hook point;
3. ``arrakis_resid``  ``model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)``;
4. ``tl_bridge_full`` TransformerLens 4 ``TransformerBridge.boot_transformers(...)`` run_with_cache of
   everything (booted offline on a deep copy of the same HF model), as a peer.

Extras (``--no-extras`` drops them): ``hf_sdpa``, the plain forward of the model HookedAutoModel
wraps (``load_model()`` loads it with sdpa attention, which resid-only runs keep), and
``arrakis_resid_on_eager``, resid-only caching on a HookedAutoModel that wraps the eager model
(the pure hook overhead, without the sdpa/eager difference), and ``arrakis_full_no_result``, every
hook point but ``attn.hook_result`` (what a full cache costs when per-head results are not
materialised during the run).

The variants are interleaved: after warm-up, every repeat runs each variant once, in an order
rotated per repeat, so that machine noise falls on all of them alike; each timed run also records
its system CPU time and minor page faults (``resource.getrusage``), which show what re-faulting a
large cache's memory costs (``--malloc-retain`` re-runs with glibc keeping freed memory, to
separate that cost). Memory: the bytes of the tensors in each cache (logical, and unique storages
for caches that alias tensors), the main process's peak RSS (``ru_maxrss``), and, per variant, the
RSS high-water mark of one run in a fresh subprocess (reset after loading the model).

    python benchmarks/bench_run_with_cache.py [--batch 4 --seq 256 --repeats 5 --json out.json]
"""
from __future__ import annotations

import offline  # noqa: F401  (first: hub access off, repo on sys.path)
import os  # noqa: E402

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

TL_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a Llama name; with hf_model= it is not fetched
TARGETS = {"arrakis_full": 1.15, "arrakis_resid": 1.03}
CORE = ("hf_eager", "arrakis_full", "arrakis_resid", "tl_bridge_full")
EXTRAS = ("hf_sdpa", "arrakis_resid_on_eager", "arrakis_full_no_result")
DESCRIPTIONS = {
    "hf_eager": "HF forward, eager attention (baseline)",
    "arrakis_full": "run_with_cache, every hook point",
    "arrakis_resid": "run_with_cache, resid only",
    "tl_bridge_full": "TL 4 TransformerBridge run_with_cache, all",
    "hf_sdpa": "HF forward of the wrapped model (sdpa)",
    "arrakis_resid_on_eager": "resid only, wrapping the eager model",
    "arrakis_full_no_result": "every hook point but attn.hook_result (what-if)",
}


def resid_only(name: str) -> bool:
    return "resid" in name


def all_but_result(name: str) -> bool:
    return not name.endswith("attn.hook_result")


# ---- setup ---------------------------------------------------------------------------------------

def load_models(want: set[str]):
    """The hooked default model, its eager twin (same weights), and optionally the TL bridge."""
    import arrakis_jupyter
    from arrakis_jupyter.model import HookedAutoModel
    from arrakis_jupyter.model.loading import converted_default_model_dir

    model = arrakis_jupyter.load_model()
    model.hf_model.eval()
    info: dict = {"wrapped_attn_implementation": model.hf_model.config._attn_implementation}

    eager = None
    if want & {"hf_eager", "arrakis_resid_on_eager"}:
        import transformers

        try:
            eager = transformers.AutoModelForCausalLM.from_pretrained(
                str(converted_default_model_dir()), attn_implementation="eager")
        except Exception as exc:  # noqa: BLE001 - fall back to a copy switched to eager
            info["eager_load_fallback"] = repr(exc)
            eager = copy.deepcopy(model.hf_model)
            eager.set_attn_implementation("eager")
        eager.eval()
        info["baseline_attn_implementation"] = eager.config._attn_implementation
        # same weights?
        sd_a, sd_b = model.hf_model.state_dict(), eager.state_dict()
        info["baseline_same_weights"] = all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)

    hooked_on_eager = HookedAutoModel(eager, tokenizer=model.tokenizer) if "arrakis_resid_on_eager" in want else None

    bridge = None
    if "tl_bridge_full" in want:
        try:
            import transformer_lens
            from transformer_lens.model_bridge import TransformerBridge

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bridge = TransformerBridge.boot_transformers(
                    TL_MODEL_NAME, hf_model=copy.deepcopy(model.hf_model), tokenizer=model.tokenizer, device="cpu")
            bridge.eval()
            try:
                from importlib.metadata import version

                info["tl_version"] = version("transformer-lens")
            except Exception:  # noqa: BLE001
                info["tl_version"] = getattr(transformer_lens, "__version__", "?")
            info["tl_attn_implementation"] = bridge.original_model.config._attn_implementation
        except Exception as exc:  # noqa: BLE001 - report why and keep the rest
            info["tl_boot_error"] = f"{type(exc).__name__}: {exc}"
        # the bridge switches its copy to eager; the wrapped model must keep its own implementation
        assert model.hf_model.config._attn_implementation == info["wrapped_attn_implementation"]
    return model, eager, hooked_on_eager, bridge, info


def make_runners(model, eager, hooked_on_eager, bridge, want: set[str]):
    """name -> fn(tokens) -> (logits, cache dict or None)."""
    runners = {}
    if eager is not None and "hf_eager" in want:
        runners["hf_eager"] = lambda t: (eager(input_ids=t, use_cache=False).logits, None)
    if "hf_sdpa" in want:
        runners["hf_sdpa"] = lambda t: (model.hf_model(input_ids=t, use_cache=False).logits, None)
    if "arrakis_full" in want:
        runners["arrakis_full"] = lambda t: model.run_with_cache(t)
    if "arrakis_resid" in want:
        runners["arrakis_resid"] = lambda t: model.run_with_cache(t, names_filter=resid_only)
    if "arrakis_full_no_result" in want:
        runners["arrakis_full_no_result"] = lambda t: model.run_with_cache(t, names_filter=all_but_result)
    if hooked_on_eager is not None:
        runners["arrakis_resid_on_eager"] = lambda t: hooked_on_eager.run_with_cache(t, names_filter=resid_only)
    if bridge is not None and "tl_bridge_full" in want:
        runners["tl_bridge_full"] = lambda t: bridge.run_with_cache(t)
    order = [n for n in CORE + EXTRAS if n in runners]
    return {n: runners[n] for n in order}


def cache_tensors(cache) -> list[torch.Tensor]:
    """The tensors a cache holds. For Arrakis's ActivationCache its stored dict (so that entries a cache
    may compute on access are not materialised by counting them); for TL's, its items."""
    if cache is None:
        return []
    stored = getattr(cache, "_acts", None)
    values = stored.values() if isinstance(stored, dict) else (v for _, v in cache.items())
    return [v for v in values if isinstance(v, torch.Tensor)]


def cache_bytes(cache) -> dict:
    tensors = cache_tensors(cache)
    logical = sum(t.numel() * t.element_size() for t in tensors)
    storages = {}
    for t in tensors:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return {"n_tensors": len(tensors), "logical_bytes": logical, "unique_storage_bytes": sum(storages.values())}


def max_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


def peak_rss_bytes() -> int:
    """The RSS high-water mark of this process: VmHWM where /proc has it, else ru_maxrss.

    (On Linux ru_maxrss of a child started by fork+exec also counts the parent's RSS at the fork
    and survives a reset, so the probes read VmHWM, the memory's own high-water mark.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return max_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux: /proc/self/clear_refs), so that ru_maxrss
    measures from now on rather than including the model loading. False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def tokens_for(args) -> torch.Tensor:
    g = torch.Generator().manual_seed(args.seed)
    return torch.randint(0, 49152, (args.batch, args.seq), generator=g)


# ---- memory probe (one variant, fresh process) -------------------------------------------------

def probe(args) -> None:
    """Child process: load, touch every weight with a tiny pass, then one run of ``args.probe``."""
    torch.set_num_threads(args.threads)
    name = args.probe
    model, eager, hooked_on_eager, bridge, info = load_models({name})
    runners = make_runners(model, eager, hooked_on_eager, bridge, {name})
    out = {"variant": name}
    if name not in runners:
        out["error"] = info.get("tl_boot_error", "variant unavailable")
        print("PROBE " + json.dumps(out))
        return
    run = runners[name]
    tokens = tokens_for(args)
    with torch.no_grad():
        run(tokens[:1, :8])  # page in the weights (safetensors are memory-mapped)
        gc.collect()
        lifetime_peak_before = peak_rss_bytes()
        out["peak_reset"] = reset_peak_rss()
        before_cur = current_rss_bytes()
        before_peak = peak_rss_bytes()
        logits, cache = run(tokens)
        after_peak, after_cur = peak_rss_bytes(), current_rss_bytes()
    base = before_cur if before_cur is not None else before_peak
    out.update(peak_rss_bytes=after_peak, ru_maxrss_bytes=max_rss_bytes(),
               lifetime_peak_rss_before_run_bytes=lifetime_peak_before,
               rss_before_run_bytes=before_cur, rss_after_run_bytes=after_cur,
               peak_rss_increase_bytes=after_peak - base,
               logits_bytes=logits.numel() * logits.element_size(), **cache_bytes(cache))
    print("PROBE " + json.dumps(out))


def run_probes(args, names) -> dict:
    results = {}
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", name, "--batch", str(args.batch),
               "--seq", str(args.seq), "--threads", str(args.threads), "--seed", str(args.seed)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.probe_timeout)
        except subprocess.TimeoutExpired:
            results[name] = {"error": "probe timed out"}
            continue
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
        if line is None:
            results[name] = {"error": f"probe failed (rc {proc.returncode}): {proc.stderr.strip()[-800:]}"}
        else:
            results[name] = json.loads(line[len("PROBE "):])
    return results


# ---- timing ------------------------------------------------------------------------------------

def timed(run, tokens) -> tuple[float, float, int]:
    """(wall s, system CPU s, minor page faults) of one run."""
    gc.collect()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = run(tokens)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    del out
    return dt, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def benchmark(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    want = set(CORE) | (set(EXTRAS) if args.extras else set())
    if args.no_tl:
        want.discard("tl_bridge_full")
    t_load = time.perf_counter()
    model, eager, hooked_on_eager, bridge, info = load_models(want)
    info["load_s"] = round(time.perf_counter() - t_load, 2)
    info["allocator"] = ("glibc retaining freed memory (MALLOC_TRIM_THRESHOLD_=%s, MALLOC_MMAP_THRESHOLD_=%s)"
                         % (os.environ["MALLOC_TRIM_THRESHOLD_"], os.environ.get("MALLOC_MMAP_THRESHOLD_"))
                         if os.environ.get("MALLOC_TRIM_THRESHOLD_") else "default (glibc defaults unless LD_PRELOAD)")
    runners = make_runners(model, eager, hooked_on_eager, bridge, want)
    tokens = tokens_for(args)
    names = list(runners)
    torch.set_num_threads(args.threads)  # again, in case loading changed it
    info["threads"] = torch.get_num_threads()

    print(f"threads={torch.get_num_threads()}  batch={args.batch}  seq={args.seq}  repeats={args.repeats}  "
          f"warmup={args.warmup}  variants={', '.join(names)}", flush=True)
    if "tl_boot_error" in info:
        print(f"TransformerLens bridge NOT measured: {info['tl_boot_error']}", flush=True)

    results: dict = {n: {"times_s": []} for n in names}
    with torch.no_grad():
        # warm-up (also: correctness check against the baseline, and the bytes of each cache)
        ref = None
        for w in range(args.warmup):
            for n in names:
                t0 = time.perf_counter()
                logits, cache = runners[n](tokens)
                results[n].setdefault("warmup_s", []).append(round(time.perf_counter() - t0, 4))
                if w == 0:
                    if ref is None:
                        ref = logits.detach().clone()
                    results[n]["max_abs_logit_diff_vs_first"] = float((logits - ref).abs().max())
                    results[n].update(cache_bytes(cache))
                del logits, cache
        print("warm-up done", flush=True)
        for r in range(args.repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:  # rotate the order every repeat
                dt, sys_s, faults = timed(runners[n], tokens)
                results[n]["times_s"].append(dt)
                results[n].setdefault("sys_s", []).append(sys_s)
                results[n].setdefault("minor_faults", []).append(faults)
            print(f"  repeat {r + 1}/{args.repeats}: "
                  + "  ".join(f"{n}={results[n]['times_s'][-1]:.3f}s" for n in names), flush=True)

    for n in names:
        ts = results[n]["times_s"]
        results[n]["median_s"] = statistics.median(ts)
        results[n]["median_sys_s"] = statistics.median(results[n]["sys_s"])
        results[n]["median_minor_faults"] = statistics.median(results[n]["minor_faults"])
        results[n]["min_s"] = min(ts)
        results[n]["stdev_s"] = statistics.stdev(ts) if len(ts) > 1 else 0.0
    base = results.get("hf_eager", {}).get("median_s")
    sdpa = results.get("hf_sdpa", {}).get("median_s")
    for n in names:
        if base:
            results[n]["ratio_vs_hf_eager"] = results[n]["median_s"] / base
            results[n]["ratio_min_vs_hf_eager_min"] = results[n]["min_s"] / results["hf_eager"]["min_s"]
        if sdpa:
            results[n]["ratio_vs_hf_sdpa"] = results[n]["median_s"] / sdpa
    return {"variants": results, "info": info, "main_process_peak_rss_bytes": max_rss_bytes()}


# ---- report ------------------------------------------------------------------------------------

def mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def report(res: dict, probes: dict) -> None:
    v = res["variants"]
    print()
    print(f"{'variant':<24} {'median s':>9} {'min s':>7} {'stdev':>6} {'x eager':>8} {'x sdpa':>7} "
          f"{'target':>10} {'sys s':>6} {'faults':>7}  {'cache MiB':>9} {'uniq MiB':>8} {'#t':>5} "
          f"{'peak RSS':>9} {'+RSS run':>9}")
    print("-" * 136)
    for n, r in v.items():
        p = probes.get(n, {})
        tgt = TARGETS.get(n)
        ratio = r.get("ratio_vs_hf_eager")
        ok = "" if tgt is None or ratio is None else (f"<={tgt:.2f}" + (" ok" if ratio <= tgt else " NO"))
        print(f"{n:<24} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['stdev_s']:>6.3f} "
              f"{ratio if ratio is not None else float('nan'):>8.3f} "
              f"{r.get('ratio_vs_hf_sdpa', float('nan')):>7.3f} {ok:>10} {r['median_sys_s']:>6.2f} "
              f"{r['median_minor_faults']:>7.0f}  "
              f"{mib(r.get('logical_bytes')) if r.get('n_tensors') else '-':>9} "
              f"{mib(r.get('unique_storage_bytes')) if r.get('n_tensors') else '-':>8} "
              f"{r.get('n_tensors') or '-':>5} {mib(p.get('peak_rss_bytes')):>9} "
              f"{mib(p.get('peak_rss_increase_bytes')):>9}")
    print()
    for n, r in v.items():
        print(f"  {n:<24} {DESCRIPTIONS.get(n, '')}; max|logits - first variant| = "
              f"{r.get('max_abs_logit_diff_vs_first', float('nan')):.2e}")
    info = res["info"]
    if "tl_boot_error" in info:
        print(f"\n  TransformerLens bridge not measured: {info['tl_boot_error']}")
    print(f"\n  wrapped model attention: {info.get('wrapped_attn_implementation')}; baseline: "
          f"{info.get('baseline_attn_implementation')} (same weights: {info.get('baseline_same_weights')})")
    print("  ratios: x eager = median / median(hf_eager); x sdpa = median / median(hf_sdpa). sys s / faults: median "
          "system CPU time and minor page faults of one timed run.\n  cache MiB = sum of cached tensor bytes "
          "(uniq = distinct storages).")
    print(f"  allocator: {res['info'].get('allocator')}")
    print("  peak RSS / +RSS run: RSS high-water mark (VmHWM, reset after loading) of a fresh process during one "
          "run of the variant,\n  and its increase over the RSS before that run (MiB; the cache is still alive).")
    if any(p.get("peak_reset") is False for p in probes.values()):
        print("  (the RSS high-water mark could not be reset here: peak RSS includes model loading)")
    print(f"  main process peak RSS (getrusage ru_maxrss, all models + every variant): "
          f"{mib(res['main_process_peak_rss_bytes'])} MiB")
    for n, p in probes.items():
        if "error" in p:
            print(f"  memory probe {n}: {p['error']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each variant (interleaved)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads for all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--no-tl", action="store_true", help="skip the TransformerLens bridge")
    ap.add_argument("--no-extras", dest="extras", action="store_false", help="skip hf_sdpa, arrakis_resid_on_eager, arrakis_full_no_result")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the per-variant peak-RSS subprocess probes")
    ap.add_argument("--malloc-retain", action="store_true",
                    help="re-run under glibc settings that keep freed memory (MALLOC_TRIM_THRESHOLD_, "
                         "MALLOC_MMAP_THRESHOLD_) instead of returning it to the OS, to separate page-fault cost")
    ap.add_argument("--probe-timeout", type=int, default=300)
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.probe:
        probe(args)
        return 0
    if args.malloc_retain and not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        env = dict(os.environ, MALLOC_TRIM_THRESHOLD_=str(2**40), MALLOC_MMAP_THRESHOLD_=str(2**32))
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)

    t0 = time.perf_counter()
    res = benchmark(args)
    probes = {}
    if args.memory:
        names = [n for n in res["variants"] if n in ("hf_eager", "arrakis_full", "arrakis_resid", "tl_bridge_full")]
        print(f"memory probes: {', '.join(names)} (one fresh process each)", flush=True)
        probes = run_probes(args, names)
    report(res, probes)
    import transformers

    res["memory_probes"] = probes
    res["config"] = {"batch": args.batch, "seq": args.seq, "repeats": args.repeats, "warmup": args.warmup,
                     "threads": args.threads, "seed": args.seed, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "cpu_count": os.cpu_count(), "targets": TARGETS}
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"  total {res['total_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
        print(f"  wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
