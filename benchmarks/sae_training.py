"""TopK SAE training step, mechscope vs SAELens ``TopKTrainingSAE`` vs sparsify ``SparseCoder``.

Each library runs in its own subprocess (so peak memory is its own) on identical activations:
rows of a planted sparse dictionary (each row a positive sum of a few of ``n_true`` random unit
features, plus noise), so FVU after a fixed number of steps means something. A step is
forward, loss, backward, gradient clipping and an Adam step, with the library's own decoder
handling (mechscope and sparsify: unit-norm decoder with the parallel gradient removed;
SAELens: decoder-norm rescaling) and the AuxK loss on latents dead for ``--dead-steps``
steps, coefficient 1/32 in each library's own units. Same lr, same batches, same order.

    python benchmarks/sae_training.py                 # d_in=256, 4096 latents, k=32, batch 4096, 2 threads
    python benchmarks/sae_training.py --device cuda   # GPU figures (bf16 autocast where the library uses it)

Prints one JSON object per library: tokens_per_s (timed steps only; the median of ``--repeats``
runs, interleaved across libraries, each listed in tokens_per_s_runs — on a shared machine one run
can be off by 15 %), fvu (held-out rows, after all steps), peak_mem_mb (resident memory the training added: peak RSS during the timed steps minus
RSS before the first timed step, from /proc/self/status VmHWM reset at that point; on GPU,
max CUDA memory allocated), and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

LIBS = ("mechscope", "sparsify", "saelens")


def make_data(path: str, d: int, n_true: int, active: int, rows: int, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_true, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    x = torch.empty(rows, d)
    for s in range(0, rows, 8192):  # chunks keep memory small; index collisions just add up
        n = min(8192, rows - s)
        idx = torch.randint(n_true, (n, active), generator=g)
        coef = torch.empty(n, active).exponential_(1.0, generator=g) + 0.1
        x[s : s + n] = torch.einsum("na,nad->nd", coef, feats[idx]) + 0.01 * torch.randn(n, d, generator=g)
    torch.save({"x": x.contiguous()}, path)


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (VmHWM is this process's own peak, unlike
    ru_maxrss, which a child inherits from its parent across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    data = torch.load(args.data)["x"]
    n_train = args.batch * args.steps
    train_rows, eval_rows = data[:n_train].to(dev), data[n_train:].to(dev)
    batches = train_rows.split(args.batch)
    dead_after = args.dead_steps * args.batch
    since = torch.zeros(args.latents, dtype=torch.long, device=dev)
    step, recon = _build(args, batches[0], dev)

    def run(i):
        nonlocal since
        fired = step(batches[i], since >= dead_after)
        since += args.batch
        since[fired] = 0

    for i in range(args.warmup):  # untimed: first-touch allocations, lazy init
        run(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _status_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    for i in range(args.warmup, args.steps):
        run(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _status_mb("VmHWM") - rss0
    with torch.no_grad():
        sse = tv = 0.0
        for xb in eval_rows.split(args.batch):
            sse += float((xb - recon(xb)).double().pow(2).sum())
            tv += float((xb - xb.mean(0)).double().pow(2).sum())
    return {"library": args.lib, "version": _version(args.lib), "tokens_per_s": round(args.batch * (args.steps - args.warmup) / elapsed, 1),
            "fvu": round(sse / tv, 5), "peak_mem_mb": round(max(peak, 0.0), 1),
            "process_peak_rss_mb": round(_status_mb("VmHWM"), 1),
            "step_ms": round(1000 * elapsed / (args.steps - args.warmup), 2), "timed_steps": args.steps - args.warmup,
            "total_steps": args.steps, "d_in": args.d_in, "n_latents": args.latents, "k": args.k, "batch": args.batch,
            "threads": args.threads, "device": str(dev), "lr": args.lr}


def _version(lib: str) -> str:
    from importlib.metadata import version

    return version({"mechscope": "mechscope", "sparsify": "eai-sparsify", "saelens": "sae-lens"}[lib])


def _build(args, first, dev):
    """Return ``(step(x, dead_mask) -> fired [latents] bool, recon(x) -> x_hat)`` for ``args.lib``."""
    import torch

    if args.lib == "mechscope":
        from mechscope.dictionaries import DictionaryConfig, TrainConfig
        from mechscope.dictionaries.dictionary import Dictionary
        from mechscope.dictionaries.distributed import Dist
        from mechscope.dictionaries.trainer import _Slot

        d = Dictionary(DictionaryConfig(d_in=args.d_in, n_latents=args.latents, k=args.k, hook_in="x"), seed=0)
        tc = TrainConfig(lr=args.lr, warmup_steps=0, decay_fraction=0, auxk_coeff=1 / 32, dead_tokens=args.dead_steps * args.batch, grad_clip=1.0)
        slot = _Slot(d, tc, 0, dev, Dist())  # exactly the trainer's per-dictionary step
        slot.init_from_data(first, None)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

        def step(x, dead):
            with autocast:
                out = d(x, dead_mask=dead, auxk_coeff=tc.auxk_coeff)
            out.total.backward()
            slot.step(args.lr, out, x, None, 1)
            return d.fired(out)

        return step, lambda x: d.eval().reconstruct(x)

    if args.lib == "sparsify":
        from sparsify import SparseCoder, SparseCoderConfig

        sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.latents, k=args.k), device=dev)
        sae.b_dec.data = first.mean(0)
        opt = torch.optim.Adam(sae.parameters(), lr=args.lr)

        def step(x, dead):
            out = sae(x, dead_mask=dead)
            loss = out.fvu + out.auxk_loss / 32
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            sae.set_decoder_norm_to_unit_norm()
            fired = torch.zeros(args.latents, dtype=torch.bool, device=dev)
            fired[out.latent_indices.flatten()] = True
            return fired

        return step, lambda x: sae(x).sae_out

    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.latents, k=args.k, aux_loss_coefficient=1 / 32, device=str(dev)))
    sae.b_dec.data = first.mean(0)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    n = [0]

    def step(x, dead):
        with autocast:
            out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=n[0], is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().sum(-2).bool()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        n[0] += 1
        return fired

    return step, lambda x: sae(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=40, help="training steps (all count for FVU)")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--dead-steps", type=int, default=10, help="a latent not firing for this many steps gets AuxK")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-true", type=int, default=8192, help="planted features")
    p.add_argument("--active", type=int, default=24, help="planted features per row")
    p.add_argument("--eval-rows", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="runs per library (interleaved); tokens_per_s is their median")
    p.add_argument("--worker", dest="lib", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.lib:
        print(json.dumps(worker(args)))
        return
    libs = args.libs.split(",")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1; found {args.repeats}")
    runs: dict[str, list[dict]] = {lib: [] for lib in libs}
    errors: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "rows.pt")
        make_data(data, args.d_in, args.n_true, args.active, args.batch * args.steps + args.eval_rows, args.seed)
        passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("lib", "data", "libs", "repeats")]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
        for r in range(args.repeats):  # interleaved, the order rotating, so drift in machine speed hits every library alike
            for lib in libs[r % len(libs):] + libs[: r % len(libs)]:
                if lib in errors:
                    continue
                proc = subprocess.run([sys.executable, __file__, *passthrough, "--worker", lib, "--data", data], capture_output=True, text=True, env=env)
                line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
                if proc.returncode != 0 or line is None:
                    errors[lib] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                    continue
                runs[lib].append(json.loads(line))
    for lib in libs:
        if lib in errors:
            print(json.dumps({"library": lib, "error": errors[lib]}))
            continue
        print(json.dumps(summarize(runs[lib])), flush=True)


def summarize(runs: list[dict]) -> dict:
    """One library's runs -> its first run's record with ``tokens_per_s`` / ``step_ms`` the median
    over runs (each run listed in ``tokens_per_s_runs``) and ``peak_mem_mb`` the largest."""
    speeds = sorted(r["tokens_per_s"] for r in runs)
    out = dict(runs[0])
    out["tokens_per_s"] = speeds[len(speeds) // 2] if len(speeds) % 2 else round((speeds[len(speeds) // 2 - 1] + speeds[len(speeds) // 2]) / 2, 1)
    out["step_ms"] = round(1000 * out["batch"] / out["tokens_per_s"], 2)
    out["tokens_per_s_runs"] = [r["tokens_per_s"] for r in runs]
    out["peak_mem_mb"] = max(r["peak_mem_mb"] for r in runs)
    out["repeats"] = len(runs)
    return out


if __name__ == "__main__":
    main()
