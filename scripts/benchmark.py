"""Measured speed of the training loop on whatever device this runs on (a script, not a test).

What it measures, for one profile (``default`` = params.yaml; ``paper`` = params.yaml merged with
profiles/paper.yaml through :mod:`xmkd.profiles`) on synthetic uint8 clips of the profile's frames x size x size
(10 classes; teacher embedding dim 64 for default, 512 for paper, as the paper's CNN14):

1. **Training throughput** (clips/s) of the student alone (method ``none``) and of the student with MNF+CSC
   (``mnf_csc``), built with the project's own ``build_student`` / ``build_method`` and stepped by the loop's own
   :func:`xmkd.train.train_step` (forward under the loop's bf16 autocast on CUDA, ``method.loss``, CE, the loop's
   :class:`~xmkd.train.LossGuard` check of every term, the heads-only backward with ``inputs=``, the student
   backward, one Adam step), plus the loop's accuracy count. Batches are already on the device (data loading is
   measured separately, item 2).
   Warm-up steps are excluded; CUDA is synchronised around every timed step; the two methods' timed steps are
   interleaved in blocks (``--block``), so a change in the host's load hits both alike. Step time = median over
   the timed steps; the MNF+CSC overhead is the ratio of the two medians (target <= 1.15 in the paper profile).
2. **Data loading** (clips/s): ``xmkd.train.make_loader(ClipDataset(...))`` over an in-memory uint8 array (as the
   loop loads it: the subset copied into RAM), including the copy to the device (pinned + non-blocking on CUDA),
   and, when ``data/features`` holds clips of the same shape, from the FeatureCache memmap read per item
   (``in_memory=False``). Ratio = loader clips/s / student-alone clips/s (target >= 3: loading never the bottleneck).
3. **Peak memory**: CUDA ``max_memory_allocated`` per method (its own: the other method's resident memory is
   subtracted); on the CPU the process's peak RSS (``getrusage``) after each method's warm-up, which is cumulative
   (it includes Python, torch, the synthetic batches and the method set up before).
4. **FLOPs**: the student's forward FLOPs per clip counted by ``torch.utils.flop_counter.FlopCounterMode``
   (FLOP = 2 x multiply-accumulate; convolutions and matmuls); training FLOPs per clip = 3 x forward (backward
   ~ 2 x forward: gradients of inputs and of weights); achieved FLOP/s = that x student-alone clips/s. The device's
   dense matmul FLOP/s is measured here (fp32 n x n matmul on the CPU, bf16 on CUDA, best of several repetitions,
   before and after the training measurements) and the fraction achieved / matmul is reported. The counted
   forward+backward FLOPs and the MNF+CSC head's forward FLOPs are recorded too.
5. ``load_avg_1min_at_end``: the host's load average, since other work on a shared machine slows every figure.

Writes (merges) ``metrics/benchmark.json``: one record per ``<profile>@<device type>``, so running both profiles
keeps both. Usage::

    python scripts/benchmark.py --profile default
    python scripts/benchmark.py --profile paper --batch-size 4 --steps 3 --warmup 1   # paper scale on a CPU
    python scripts/benchmark.py --profile paper --device cuda                         # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xmkd.config import load_params, parse_section
from xmkd.data.features import FeatureCache
from xmkd.errors import ConfigError, XmkdError
from xmkd.methods import Dims, DistillMethod, TeacherBatch, build_method, method_config
from xmkd.models.student import StudentConfig, build_student
from xmkd.profiles import available_profiles, load_profile, merge
from xmkd.train import (
    Batch,
    ClipDataset,
    LossGuard,
    TrainConfig,
    autocast,
    make_loader,
    make_optimiser,
    resolve_device,
    seed_everything,
    to_device,
    train_step,
)  # fmt: skip

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
TEACHER_DIM = {"default": 64, "paper": 512}  # other profiles: 512
TARGET_RATIO_MAX = 1.15  # MNF+CSC step time / student-alone step time, paper profile
TARGET_LOADER_MIN = 3.0  # loader clips/s / model clips/s


# ----------------------------------------------------------------------------------------------------- setup
def profile_params(profile: str) -> dict[str, Any]:
    """params.yaml, merged with profiles/<profile>.yaml unless ``profile == "default"``."""
    params = load_params(ROOT / "params.yaml")
    return params if profile == "default" else merge(params, load_profile(profile, ROOT))


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on the CPU), so wall-clock timing covers the kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo (platform string elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes; Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def synthetic_batches(n: int, batch: int, frames: int, size: int, teacher_dim: int, device: torch.device) -> list[Batch]:
    """``n`` batches (frames (B, T, S, S, 3) uint8, labels (B,), teacher emb (B, D) >= 0, teacher logits (B, C),
    positions (B,)), created on ``device``."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8, generator=g)
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
        emb = torch.randn(batch, teacher_dim, generator=g).relu()  # post-ReLU, as CNN14 / the project's teacher
        logits = torch.randn(batch, NUM_CLASSES, generator=g)
        idx = torch.arange(i * batch, (i + 1) * batch)
        out.append(tuple(t.to(device) for t in (x, y, emb, logits, idx)))  # type: ignore[arg-type]
    return out


# ------------------------------------------------------------------------------------------ training step
Setup = tuple[nn.Module, DistillMethod, torch.optim.Optimizer, list[torch.Tensor], LossGuard]


def step(setup: Setup, batch: Batch, device: torch.device, amp: bool, k: int) -> None:
    """One training step as the loop takes it: :func:`xmkd.train.train_step` (with the loop's loss check) and the
    loop's accuracy count (a device sync on CUDA, as in the loop).

    Raises:
        TrainingError: a loss term is not finite, or the loss explodes.
    """
    student, method, opt, head_params, guard = setup
    out = train_step(student, method, opt, head_params, batch, device, amp,
                     check=lambda values: guard.check(values, 1, k))
    int((out.logits.argmax(1) == batch[1]).sum())


def build(
    name: str, params: dict[str, Any], scfg: StudentConfig, tcfg: TrainConfig, teacher_dim: int, num_train: int,
    device: torch.device,
) -> Setup:
    """Student, method, Adam, the heads-only parameter list and the loss check, as :func:`xmkd.train.train` sets
    them up."""
    seed_everything(0)
    student = build_student(scfg, NUM_CLASSES).to(device)
    dims = Dims(scfg.embed_dim, teacher_dim, NUM_CLASSES, num_train)
    method = build_method(name, dims, method_config(name, params)).to(device)
    opt, head_params = make_optimiser(student, method, tcfg)
    student.train()
    method.train()
    return student, method, opt, head_params, LossGuard(tcfg.divergence_factor, tcfg.divergence_steps,
                                                        f"benchmark, method '{name}'", tcfg.lr)


def time_training(
    params: dict[str, Any], scfg: StudentConfig, tcfg: TrainConfig, batches: list[Batch], teacher_dim: int,
    device: torch.device, steps: int, warmup: int, block: int, methods: tuple[str, ...] = ("none", "mnf_csc"),
) -> dict[str, dict[str, Any]]:
    """Time ``steps`` training steps of each method after ``warmup`` untimed ones; returns {method: record}.

    The methods' timed steps are interleaved in blocks of ``block`` steps (none x block, mnf_csc x block, ...), so
    a change in the host's load during the run hits both alike and their ratio stays fair. Peak memory on CUDA is
    the method's own: each method is built and warmed up with the peak counter reset, and the memory the methods
    built before it keep resident is subtracted.
    """
    bsz = len(batches[0][1])
    setups, recs = {}, {}
    resident = 0  # bytes on the GPU held by the methods set up before (params, grads, Adam state)
    for m in methods:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        setups[m] = build(m, params, scfg, tcfg, teacher_dim, len(batches) * bsz, device)
        for i in range(warmup):
            step(setups[m], batches[i % len(batches)], device, tcfg.amp, i)
        sync(device)
        student, method = setups[m][0], setups[m][1]
        recs[m] = {
            "student_params": sum(p.numel() for p in student.parameters()),
            "method_params": sum(p.numel() for p in method.parameters()),
        }
        if device.type == "cuda":
            recs[m]["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device)) - resident
            recs[m]["peak_mem_kind"] = "cuda max_memory_allocated (this method; batches included)"
            resident += torch.cuda.memory_allocated(device) - before
        else:
            recs[m]["peak_mem_bytes"] = peak_rss_bytes()
            recs[m]["peak_mem_kind"] = "process peak RSS after this method's warm-up (cumulative)"
    times: dict[str, list[float]] = {m: [] for m in methods}
    i = 0
    while len(times[methods[-1]]) < steps:
        for m in methods:
            for _ in range(min(block, steps - len(times[m]))):
                b = batches[i % len(batches)]
                i += 1
                sync(device)
                t0 = time.perf_counter()
                step(setups[m], b, device, tcfg.amp, warmup + len(times[m]))
                sync(device)
                times[m].append(time.perf_counter() - t0)
    for m in methods:
        med = statistics.median(times[m])
        recs[m].update(
            step_s_median=med, step_s_mean=statistics.fmean(times[m]), step_s_min=min(times[m]),
            step_s_max=max(times[m]), clips_per_s=bsz / med,
        )
        if device.type != "cuda":
            recs[m]["peak_rss_end_bytes"] = peak_rss_bytes()
    setups.clear()
    return recs


# --------------------------------------------------------------------------------------------- data loading
def time_loader(ds: ClipDataset, tcfg: TrainConfig, device: torch.device, max_batches: int) -> dict[str, Any]:
    """Iterate ``make_loader(ds)`` (shuffled, as in training) and copy each batch to the device like the loop.

    The first batch is a warm-up (worker start-up, page cache) and is not timed. Returns clips/s.
    """
    loader = make_loader(ds, tcfg, shuffle=True, seed=0, device=device)
    it = iter(loader)
    to_device(next(it), device)
    sync(device)
    n, t0 = 0, time.perf_counter()
    for i, batch in enumerate(it):
        moved = to_device(batch, device)
        n += len(moved[1])
        if i + 1 >= max_batches:
            break
    sync(device)
    dt = time.perf_counter() - t0
    return {"clips": n, "seconds": dt, "clips_per_s": n / dt if dt > 0 else float("inf"), "num_workers": tcfg.num_workers,
            "pin_memory": device.type == "cuda"}


# -------------------------------------------------------------------------------------------------- FLOPs
def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs (2 x MAC) that ``fn`` dispatches, counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def student_flops(
    params: dict[str, Any], scfg: StudentConfig, frames: int, size: int, teacher_dim: int, device: torch.device,
    amp: bool,
) -> dict[str, int]:
    """FLOPs per clip, counted on 2 clips (BatchNorm in train mode needs 2): the student's forward, the counted
    forward+backward of student + CE, and the forward of the MNF+CSC head and loss on top of the student."""
    seed_everything(0)
    student = build_student(scfg, NUM_CLASSES).to(device).train()
    method = build_method("mnf_csc", Dims(scfg.embed_dim, teacher_dim, NUM_CLASSES, 2), method_config("mnf_csc", params))
    method = method.to(device).train()
    x = torch.randint(0, 256, (2, frames, size, size, 3), dtype=torch.uint8, device=device)
    y = torch.tensor([0, 1], device=device)
    tb = TeacherBatch(torch.rand(2, teacher_dim, device=device), torch.randn(2, NUM_CLASSES, device=device))
    with torch.no_grad(), autocast(device, amp):
        fwd = count_flops(lambda: student(x))
        s = student(x)
        mnf = count_flops(lambda: method.loss(s, tb, y))

    def fwd_bwd() -> None:
        with autocast(device, amp):
            loss = F.cross_entropy(student(x).logits.float(), y)
        loss.backward()

    total = count_flops(fwd_bwd)
    return {"forward_per_clip": fwd // 2, "forward_backward_counted_per_clip": total // 2, "mnf_csc_forward_per_clip": mnf // 2}


def matmul_flops(device: torch.device, n: int, reps: int) -> dict[str, Any]:
    """Dense n x n matmul FLOP/s (2 n^3 per product): fp32 on the CPU, bf16 on CUDA; best of ``reps``."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    inner = 1 if device.type == "cpu" else 10  # a GPU matmul takes ~ms: time 10 back to back per repetition
    for _ in range(2 if device.type == "cpu" else 5):
        a @ b
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    flops = 2 * n**3
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "reps": reps, "flops_per_s": flops / min(times),
            "flops_per_s_median": flops / statistics.median(times)}


# ---------------------------------------------------------------------------------------------------- output
def read_records(path: Path) -> dict[str, Any]:
    """The records already in ``path`` ({} when it does not exist).

    Raises:
        ConfigError: the file exists but is not a benchmark file (e.g. the dataset counts DVC's
            ``build_benchmark`` stage wrote to the same name before its metric was renamed).
    """
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not JSON ({e}): delete it or choose another --out.") from e
        if not isinstance(data, dict) or any(not isinstance(v, dict) or "profile" not in v for v in data.values()):
            raise ConfigError(
                f"{path} exists and is not a benchmark file (e.g. the dataset counts the build_benchmark stage wrote "
                "there before it moved them to metrics/dataset.json): refusing to overwrite it. Delete the stale "
                "file, or write elsewhere with --out."
            )
    return data


def write_record(path: Path, key: str, record: dict[str, Any]) -> None:
    """Merge ``{key: record}`` into the JSON file at ``path`` (other keys kept), atomically (see :func:`read_records`)."""
    data = read_records(path)
    data[key] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def print_table(key: str, r: dict[str, Any]) -> None:
    """Human-readable summary of one record."""
    tr, fl = r["train"], r["flops"]
    print(f"\n== {key}: {r['device_name']} | torch {r['torch']} | {r['threads']} threads | batch {r['batch_size']}"
          f" ({r['frames']}x{r['size']}x{r['size']}, {r['student_arch']}, bf16 autocast: {r['autocast_bf16']})")
    print(f"{'':26}{'step (s, median)':>18}{'clips/s':>10}{'peak memory':>14}")
    for m in ("none", "mnf_csc"):
        print(f"{'train ' + m:26}{tr[m]['step_s_median']:>18.4f}{tr[m]['clips_per_s']:>10.1f}"
              f"{_fmt_bytes(tr[m]['peak_mem_bytes']):>14}")
    print(f"  peak memory = {tr['none']['peak_mem_kind']}")
    ok = "meets" if r["mnf_csc_step_ratio"] <= TARGET_RATIO_MAX else "MISSES"
    print(f"MNF+CSC / student-alone step time: {r['mnf_csc_step_ratio']:.3f} median, {r['mnf_csc_step_ratio_min']:.3f}"
          f" fastest steps ({ok} the paper-profile target <= {TARGET_RATIO_MAX}); forward FLOPs ratio "
          f"{fl['mnf_csc_forward_flop_ratio']:.4f}")
    for k, v in r["loader"].items():
        print(f"loader {k:19}{v['clips_per_s']:>28.0f} clips/s ({v['clips']} clips, {v['num_workers']} workers)")
    ok = "meets" if r["loader_to_model_ratio"] >= TARGET_LOADER_MIN else "MISSES"
    print(f"loader (in memory, as the loop) / student-alone throughput: {r['loader_to_model_ratio']:.1f}x "
          f"({ok} the target >= {TARGET_LOADER_MIN:.0f}x)")
    if r.get("memmap_loader_to_model_ratio") is not None:
        print(f"loader (memmap, read per clip) / student-alone throughput: {r['memmap_loader_to_model_ratio']:.1f}x")
    print(f"student FLOPs per clip: forward {fl['student_forward_per_clip'] / 1e9:.3f} GFLOP, training (3x) "
          f"{fl['student_train_per_clip'] / 1e9:.3f} GFLOP (counted fwd+bwd {fl['student_fwd_bwd_counted_per_clip'] / 1e9:.3f})")
    print(f"achieved {fl['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s of a measured {fl['matmul_dtype']} matmul "
          f"{fl['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s (n={fl['matmul_n']}): {100 * fl['fraction_of_matmul']:.1f}%")


# ------------------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Measure everything for ``args.profile`` on ``args.device``; returns (key, record)."""
    params = profile_params(args.profile)
    scfg = parse_section(StudentConfig, params.get("student"), "student")
    tcfg = parse_section(TrainConfig, params.get("train"), "train")
    frames, size = int(params["features"]["frames"]), int(params["features"]["size"])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device here: use --device auto or cpu.")
    device = resolve_device(args.device)
    # one training process: the profile's train.num_threads, or (0 = auto) every core
    torch.set_num_threads(args.threads or tcfg.num_threads or os.cpu_count() or 1)
    bsz = args.batch_size or tcfg.batch_size
    if bsz < 2:
        raise ConfigError("--batch-size must be >= 2 (BatchNorm in train mode and CSC need two clips).")
    tcfg_b = parse_section(TrainConfig, {**params["train"], "batch_size": bsz}, "train")
    teacher_dim = args.teacher_dim or TEACHER_DIM.get(args.profile, 512)
    amp = tcfg.amp and device.type == "cuda"
    print(f"benchmark: profile {args.profile} on {device} ({device_name(device)}), batch {bsz}, "
          f"{args.warmup} warm-up + {args.steps} timed steps", flush=True)

    mm_n = args.matmul_n or (8192 if device.type == "cuda" else 2048)
    mm_before = matmul_flops(device, mm_n, args.matmul_reps)  # measured before and after: the best counts
    batches = synthetic_batches(min(args.steps + args.warmup, 4), bsz, frames, size, teacher_dim, device)
    train = time_training(params, scfg, tcfg, batches, teacher_dim, device, args.steps, args.warmup, args.block)
    for m, r in train.items():
        print(f"  train {m}: {r['step_s_median']:.4f} s/step, {r['clips_per_s']:.1f} clips/s", flush=True)
    del batches
    model_cps = max(train[m]["clips_per_s"] for m in train)

    loader: dict[str, Any] = {}
    n_clips = args.loader_clips or (int(params.get("benchmark", {}).get("n_train", 4000)) if size <= 64 else 1000)
    rng = np.random.default_rng(0)
    frames_np = rng.integers(0, 256, (n_clips, frames, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, n_clips)
    emb = rng.random((n_clips, teacher_dim), dtype=np.float32)
    logits = rng.standard_normal((n_clips, NUM_CLASSES), dtype=np.float32)
    ds = ClipDataset(frames_np, labels, emb, logits, np.arange(n_clips))  # in_memory=True, as the loop
    loader["in_memory"] = time_loader(ds, tcfg_b, device, args.loader_batches)
    loader["in_memory"]["array_bytes"] = int(frames_np.nbytes)
    del ds, frames_np
    cache_dir = ROOT / "data" / "features"
    try:  # the real cache, when it holds clips of this shape (else skipped: it is an extra)
        cache = FeatureCache(cache_dir) if (cache_dir / "frames.npy").exists() else None
        if cache is not None and tuple(cache.frames.shape[1:]) == (frames, size, size, 3):
            n = len(cache)
            ds = ClipDataset(cache.frames, cache.targets(), rng.random((n, teacher_dim), dtype=np.float32),
                             rng.standard_normal((n, NUM_CLASSES), dtype=np.float32), cache.indices("training"),
                             in_memory=False)
            loader["memmap"] = time_loader(ds, tcfg_b, device, args.loader_batches)
            loader["memmap"]["source"] = str(cache_dir.relative_to(ROOT))
    except XmkdError as e:
        print(f"  (memmap loader skipped: {e})", flush=True)
    print(f"  loader: {loader['in_memory']['clips_per_s']:.0f} clips/s in memory", flush=True)

    sf = student_flops(params, scfg, frames, size, teacher_dim, device, tcfg.amp)
    mm_after = matmul_flops(device, mm_n, args.matmul_reps)
    mm = max(mm_before, mm_after, key=lambda r: r["flops_per_s"])
    train_flops = 3 * sf["forward_per_clip"]
    achieved = train_flops * train["none"]["clips_per_s"]
    record = {
        "profile": args.profile,
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch_size": bsz,
        "profile_batch_size": tcfg.batch_size,
        "frames": frames,
        "size": size,
        "student_arch": scfg.arch,
        "teacher_dim": teacher_dim,
        "num_classes": NUM_CLASSES,
        "steps": args.steps,
        "warmup": args.warmup,
        "interleave_block": args.block,
        "autocast_bf16": amp,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_avg_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # other work on the host
        "train": train,
        "mnf_csc_step_ratio": train["mnf_csc"]["step_s_median"] / train["none"]["step_s_median"],
        "mnf_csc_step_ratio_min": train["mnf_csc"]["step_s_min"] / train["none"]["step_s_min"],  # fastest steps
        "target_mnf_csc_step_ratio_max": TARGET_RATIO_MAX,
        "loader": loader,
        "loader_to_model_ratio": loader["in_memory"]["clips_per_s"] / model_cps,  # how the loop loads
        "memmap_loader_to_model_ratio": loader["memmap"]["clips_per_s"] / model_cps if "memmap" in loader else None,
        "target_loader_to_model_ratio_min": TARGET_LOADER_MIN,
        "flops": {
            "student_forward_per_clip": sf["forward_per_clip"],
            "student_train_per_clip": train_flops,
            "student_train_per_clip_rule": "3 x forward (FlopCounterMode, FLOP = 2 x MAC)",
            "student_fwd_bwd_counted_per_clip": sf["forward_backward_counted_per_clip"],
            "mnf_csc_head_forward_per_clip": sf["mnf_csc_forward_per_clip"],
            "mnf_csc_forward_flop_ratio": (sf["forward_per_clip"] + sf["mnf_csc_forward_per_clip"]) / sf["forward_per_clip"],
            "achieved_flops_per_s": achieved,
            "matmul_dtype": mm["dtype"],
            "matmul_n": mm["n"],
            "matmul_flops_per_s": mm["flops_per_s"],
            "matmul_flops_per_s_median": mm["flops_per_s_median"],
            "matmul_flops_per_s_before_after": [mm_before["flops_per_s"], mm_after["flops_per_s"]],
            "fraction_of_matmul": achieved / mm["flops_per_s"],
        },
    }
    return f"{args.profile}@{device.type}", record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["default", *available_profiles(ROOT)], default="default",
                    help="default = params.yaml; else params.yaml merged with profiles/<name>.yaml")
    ap.add_argument("--teacher-dim", type=int, default=None, help="teacher embedding dim (default: 64 for default, "
                    "512 otherwise: the paper's CNN14)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="clips per step (default: the profile's train.batch_size)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per method")
    ap.add_argument("--block", type=int, default=5, help="timed steps of one method before switching to the other")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's train.num_threads; 0 there = all cores)")
    ap.add_argument("--loader-clips", type=int, default=None, help="clips in the in-memory loader array "
                    "(default: benchmark.n_train for default, 1000 for paper)")
    ap.add_argument("--loader-batches", type=int, default=100, help="at most this many timed loader batches")
    ap.add_argument("--matmul-n", type=int, default=None, help="matmul size n (default 2048 on the CPU, 8192 on CUDA)")
    ap.add_argument("--matmul-reps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "metrics" / "benchmark.json")
    args = ap.parse_args(argv)
    # the memmap is read-only; the loop's torch.from_numpy warns about it and only reads it
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if args.steps < 1 or args.warmup < 0:
        print("error: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    try:
        read_records(args.out)  # fail before minutes of measuring, not after
        key, record = run(args)
        write_record(args.out, key, record)
    except XmkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_table(key, record)
    print(f"\nwrote {args.out} [{key}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
