"""Throughput and memory of keras_beit against transformers, side by side.

    python -m keras_beit.benchmark [--backends tensorflow jax torch] [--cases base224_b1 ...]
                                   [--repeats 5] [--rounds 1] [--json results.json] [--quick]
                                   [--data-format channels_last | channels_first]
    python -m keras_beit.benchmark --show results.json

Every measurement runs in a fresh process (so peak resident memory is that of
one model and one implementation), and keras_beit and transformers runs are
interleaved case by case. Each figure is the median of `--repeats` timed runs
after a warm-up; `--rounds N` repeats every process N times, interleaved,
keeps the median process and reports the spread between them, which on a
shared machine is the error bar of a ratio. The table prints ratios (ours /
transformers SDPA), the machine's measured fp32 and bf16 matmul throughput
at BEiT's shapes, and the fraction of it each model achieves. Memory is
read from /proc: the peak of the whole process, the resident memory of its
imports before any model exists, and the peak during the timed runs alone
(after the warm-up, so without compilation's). `--quick` uses
tiny models, to check the script itself. `--data-format channels_first` feeds
keras_beit (B, C, H, W) images, as transformers is fed. This is a benchmark, not a test:
nothing here asserts a speed.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

FRAMEWORKS = ("jax", "keras", "keras_hub", "tensorflow", "torch", "transformers")
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)

CASES = {
    "base224_b1": dict(size=BASE, image=224, batch=1, task="classifier"),
    "base224_b8": dict(size=BASE, image=224, batch=8, task="classifier"),
    "large224_b1": dict(size=LARGE, image=224, batch=1, task="classifier"),
    "base640_seg_b1": dict(size=BASE, image=640, batch=1, task="segmenter"),
    "base224_train_b8": dict(size=BASE, image=224, batch=8, task="train"),
    "base224_b8_bf16": dict(size=BASE, image=224, batch=8, task="classifier", bf16=True),
}


def _model_flops(size, image, patch=16, task="classifier"):
    """Forward multiply-adds x 2 (the 35.1 GFLOP of BEiT-B/16 at 224), with the heads for a segmenter."""
    tokens = (image // patch) ** 2 + 1
    d, i, layers = size["hidden_size"], size["intermediate_size"], size["num_hidden_layers"]
    per_layer = tokens * (4 * d * d + 2 * d * i) + 2 * tokens * tokens * d
    embed = (image // patch) ** 2 * (3 * patch * patch) * d
    heads = _segmentation_head_macs(d, image // patch) if task == "segmenter" else 0
    return 2 * (layers * per_layer + embed + heads)


def _segmentation_head_macs(d, grid, classes=150, auxiliary=256, pool_scales=(1, 2, 3, 6)):
    """Multiply-adds of the FPN neck, UperNet (d channels) and the FCN auxiliary head.

    At 640 these outweigh the encoder four to one: UperNet's 3x3 convolutions
    run at a quarter of the input resolution with d or 4d input channels.
    """
    levels = [(grid * 4) ** 2, (grid * 2) ** 2, grid**2, (grid // 2) ** 2]  # pixels at 1/4 .. 1/32
    neck = grid**2 * d * d * 4 * 2 + (grid * 2) ** 2 * d * d * 4  # the stride-2 transposed convolutions
    pyramid_pooling = sum(s * s for s in pool_scales) * d * d + levels[3] * (d + len(pool_scales) * d) * d * 9
    laterals = sum(levels[:3]) * d * d
    fpn_convs = sum(levels[:3]) * d * d * 9
    fuse = levels[0] * 4 * d * d * 9 + levels[0] * d * classes
    auxiliary_head = levels[2] * d * auxiliary * 9 + levels[2] * auxiliary * classes
    return neck + pyramid_pooling + laterals + fpn_convs + fuse + auxiliary_head


def _config_dict(case):
    """The case as a transformers BeitConfig's fields, without importing transformers.

    keras_beit's processes build from this dict, so their memory holds no
    torch or transformers; transformers' processes build BeitConfig(**it).
    """
    return dict(
        image_size=case["image"], patch_size=16, use_relative_position_bias=True, drop_path_rate=0.0,
        num_labels=150 if case["task"] == "segmenter" else 1000,
        out_indices=[3, 5, 7, 11] if case["size"]["num_hidden_layers"] >= 12 else [1, 2, 3, 4],
        architectures=["BeitForSemanticSegmentation" if case["task"] == "segmenter" else "BeitForImageClassification"],
        **case["size"],
    )


def _beit_config(case):
    import transformers

    return transformers.BeitConfig(**_config_dict(case))


_MEMORY = {}


def _rss_mb(field):
    """VmRSS (now) or VmHWM (the high-water mark) of this process, from /proc; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _imported():
    """Notes the resident memory of the imports alone, before any model exists."""
    _MEMORY["import_rss_mb"] = _rss_mb("VmRSS")


def _note_peak(key):
    """Keeps the highest VmHWM seen under `key`: a process may time several things, resetting between them."""
    peak = _rss_mb("VmHWM")
    if peak is not None:
        _MEMORY[key] = max(peak, _MEMORY.get(key, 0.0))


def _reset_peak():
    """Restarts the high-water mark, so what follows is measured without compilation's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb():
    """This process's peak resident memory, warm-up and timed runs together.

    From /proc's VmHWM, which starts afresh at exec. getrusage's ru_maxrss
    does not: a child spawned by a parent that had imported TensorFlow
    reports at least the parent's 870 MB. It is the fallback off Linux only.
    """
    # The high-water mark now covers everything since the last reset.
    peaks = [p for p in (_MEMORY.get("warm_up_peak_rss_mb"), _rss_mb("VmHWM")) if p is not None]
    return max(peaks) if peaks else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeats):
    fn()  # warm-up (compilation, caches)
    _note_peak("warm_up_peak_rss_mb")
    measure_running_peak = _reset_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    if measure_running_peak:
        _note_peak("running_peak_rss_mb")
    return statistics.median(times)


def run_transformers(case, attention, repeats):
    import numpy as np
    import torch
    import transformers

    _imported()
    torch.manual_seed(0)
    config = _beit_config(case)
    config._attn_implementation = attention
    cls = transformers.BeitForSemanticSegmentation if case["task"] == "segmenter" else transformers.BeitForImageClassification
    model = cls(config)
    pixels = torch.from_numpy(np.random.default_rng(0).normal(size=(case["batch"], 3, case["image"], case["image"])).astype("float32"))
    if case["task"] == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        labels = torch.zeros(case["batch"], dtype=torch.long)

        def step():
            optimizer.zero_grad()
            model(pixel_values=pixels, labels=labels).loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(case.get("bf16"))):
                model(pixel_values=pixels)
    return _timed(step, repeats)


def run_keras_beit(case, repeats, data_format="channels_last"):
    import keras
    import numpy as np

    import keras_beit
    from keras_beit.convert.layout import with_data_format
    from keras_beit.convert.transformers import convert_backbone_config

    _imported()
    if case.get("bf16"):
        keras.config.set_dtype_policy("mixed_bfloat16")
    config = _config_dict(case)
    # transformers tap points, so both sides compute the same network.
    backbone_config, layout = with_data_format(
        convert_backbone_config(config, tap_points="transformers"), {"data_format": data_format}
    )
    backbone = keras_beit.BEiTBackbone(**backbone_config, **layout)
    if case["task"] == "segmenter":
        model = keras_beit.BEiTImageSegmenter(backbone, num_classes=150)
    else:
        model = keras_beit.BEiTImageClassifier(backbone, num_classes=1000)
    images = np.random.default_rng(0).normal(size=(case["batch"], case["image"], case["image"], 3)).astype("float32")
    if data_format == "channels_first":
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if case["task"] == "train":
        model.compile(optimizer=keras.optimizers.AdamW(1e-5), loss="sparse_categorical_crossentropy")
        labels = np.zeros(case["batch"], "int32")
        return _timed(lambda: model.train_on_batch(images, labels), repeats)
    model.preprocessor = None
    return _timed(lambda: model.predict_on_batch(images), repeats)


def _gemm_shapes(quick):
    """(tokens, in, out) of BEiT-B/16's projections at batch 1 and 8: attention, MLP up and down."""
    d, i, tokens = (64, 256, 65) if quick else (768, 3072, 197)
    return [(batch * tokens, k, n) for batch in (1, 8) for k, n in ((d, d), (d, i), (i, d))]


def run_gemm(dtype, quick, repeats):
    """The machine's matmul throughput at BEiT's shapes, in GFLOP/s: the best any installed library reaches.

    Each library (torch; numpy for fp32; jax under jit when installed) is
    timed on every BEiT shape; the limit is the highest throughput seen, so
    a library with a slow GEMM on this CPU does not lower the bar.
    """
    import torch

    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        jax = None
    best = {}
    for tokens, k, n in _gemm_shapes(quick):
        flops = 10 * 2 * tokens * k * n
        a = torch.randn(tokens, k, dtype=getattr(torch, dtype))
        b = torch.randn(k, n, dtype=getattr(torch, dtype))
        candidates = {"torch": lambda: [a @ b for _ in range(10)]}
        if dtype == "float32":
            a_np, b_np = a.numpy(), b.numpy()
            candidates["numpy"] = lambda: [a_np @ b_np for _ in range(10)]
        if jax is not None:
            a_jax = jnp.asarray(a.float().numpy(), dtype=dtype)
            b_jax = jnp.asarray(b.float().numpy(), dtype=dtype)
            product = jax.jit(lambda x, y: x @ y)
            candidates["jax"] = lambda: [product(a_jax, b_jax) for _ in range(10)][-1].block_until_ready()
        for library, fn in candidates.items():
            best[library] = max(best.get(library, 0.0), flops / _timed(fn, repeats) / 1e9)
    return max(best.values()), best


def _case(name, quick):
    case = dict(CASES[name])
    if quick:
        case.update(size=TINY, image=64 if case["task"] != "segmenter" else 128)
    return case


def gflop_per_image(name, quick=False):
    case = _case(name, quick)
    flops = _model_flops(case["size"], case["image"], task=case["task"]) / 1e9
    # A training step is a forward and a backward pass: about three forwards' worth of matmuls.
    return flops * 3 if case["task"] == "train" else flops


def child(args):
    """One measurement in this process; prints a JSON line."""
    case = _case(args.case, args.quick)
    if args.impl == "gemm":
        gflops, by_library = run_gemm(args.dtype, args.quick, args.repeats)
        result = {"gflops": gflops, "gflops_by_library": by_library}
    elif args.impl == "keras_beit":
        result = {"seconds": run_keras_beit(case, args.repeats, args.data_format)}
    else:
        result = {"seconds": run_transformers(case, args.impl.split("_")[1], args.repeats)}
    result.update(_MEMORY)
    result["peak_rss_mb"] = _peak_rss_mb()
    # What this process had loaded: the memory figures are for these alone.
    result["frameworks"] = sorted(set(FRAMEWORKS) & {name.split(".")[0] for name in sys.modules})
    result["images_per_second"] = case["batch"] / result["seconds"] if "seconds" in result else None
    print(json.dumps(result))


def _spawn(backend, *argv):
    env = {**os.environ, "KERAS_BACKEND": backend or os.environ.get("KERAS_BACKEND", "jax")}
    # This file is run by path, not as `-m keras_beit.benchmark`: importing the
    # package would load keras, keras-hub and TensorFlow into transformers'
    # processes too, and their memory would include ours.
    runner = f"import runpy, sys; sys.argv = ['benchmark'] + sys.argv[1:]; runpy.run_path({__file__!r}, run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", runner, "--child", *argv], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise_runs(runs):
    """The median of several processes' results, with their spread in images/s.

    Errors are dropped unless every run failed. The spread, (fastest -
    slowest) / median, is there only when two or more runs finished.
    """
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    median = dict(sorted(good, key=lambda r: r["seconds"])[len(good) // 2])
    if len(good) > 1:
        speeds = [r["images_per_second"] for r in good]
        median["spread"] = (max(speeds) - min(speeds)) / median["images_per_second"]
    return median


def _mb(value):
    return "-" if value is None else f"{value:.0f}"


def print_table(results):
    """Ratios against transformers SDPA and the fraction of the machine's GEMM limit, case by case."""
    fp32 = results["gemm"]["float32"].get("gflops")
    bf16 = results["gemm"]["bfloat16"].get("gflops")
    for dtype, r in results["gemm"].items():
        libraries = ", ".join(f"{k} {v:.0f}" for k, v in r.get("gflops_by_library", {}).items())
        print(f"machine matmul throughput at BEiT's shapes, {dtype}: {r.get('gflops', float('nan')):.1f} GFLOP/s ({libraries})")
    print(f"keras_beit images: {results.get('data_format', 'channels_last')} (transformers: channels first)")
    print(f"{'case':<20}{'implementation':<26}{'img/s':>9}{'ratio':>8}{'of GEMM limit':>14}{'peak MB':>10}"
          f"{'imports MB':>12}{'running MB':>12}{'spread':>8}")
    for name, row in results["cases"].items():
        reference = row.get("transformers_sdpa", {}).get("images_per_second")
        work = gflop_per_image(name, results.get("quick", False))
        for impl, r in row.items():
            if "error" in r:
                print(f"{name:<20}{impl:<26}  error: {r['error'][:60]}")
                continue
            ips = r["images_per_second"]
            ratio = ips / reference if reference else float("nan")
            gemm = bf16 if CASES[name].get("bf16") else fp32  # the bf16 cases against the bf16 limit
            limit = ips * work / gemm if gemm else float("nan")
            spread = f"{r['spread']:.0%}" if "spread" in r else "-"
            imports, running = (_mb(r.get(k)) for k in ("import_rss_mb", "running_peak_rss_mb"))
            print(f"{name:<20}{impl:<26}{ips:>9.3f}{ratio:>8.2f}{limit:>14.0%}{r['peak_rss_mb']:>10.0f}"
                  f"{imports:>12}{running:>12}{spread:>8}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="keras_beit vs transformers throughput and memory")
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="processes per implementation and case, interleaved")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny models: check the script, not the speed")
    parser.add_argument(
        "--data-format", default="channels_last", choices=["channels_last", "channels_first"],
        help="keras_beit's image layout; channels_first is what transformers takes, and faster on torch",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--show", metavar="JSON", help="print the table of a saved run and exit")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1; received {args.rounds}.")
    if args.child:
        return child(args)
    if args.show:
        with open(args.show) as f:
            results = json.load(f)
        print_table(results)
        return results

    common = ["--repeats", str(args.repeats), "--data-format", args.data_format] + (["--quick"] if args.quick else [])
    results = {"gemm": {}, "cases": {}, "quick": args.quick, "data_format": args.data_format}
    for dtype in ("float32", "bfloat16"):
        results["gemm"][dtype] = _spawn(None, "--impl", "gemm", "--dtype", dtype, "--case", "base224_b1", *common)
    for name in args.cases:
        references = ["transformers_sdpa"] + ([] if CASES[name]["task"] == "train" else ["transformers_eager"])
        runs = {f"keras_beit_{backend}": [] for backend in args.backends}
        runs.update({reference: [] for reference in references})
        for _ in range(args.rounds):
            for backend in args.backends:  # interleaved: the references run next to every backend
                for reference in references:
                    runs[reference].append(_spawn(None, "--impl", reference, "--case", name, *common))
                runs[f"keras_beit_{backend}"].append(
                    _spawn(backend, "--impl", "keras_beit", "--case", name, *common)
                )
        results["cases"][name] = {impl: summarise_runs(r) for impl, r in runs.items()}

    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
