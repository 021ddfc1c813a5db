"""Phrase grounding (``src.models.ovd``) speed: SDPA fusion vs nn.MultiheadAttention, matcher, inference.

This script measures, in one run, three things about the open-vocabulary grounding model:

1. Fusion layer: ``FusionLayer`` built on the project's :class:`~src.models.ovd.Attention` (separate
   q/k/v projections + ``F.scaled_dot_product_attention``) vs the same ``FusionLayer`` whose two
   cross-attentions are ``nn.MultiheadAttention(dim, heads, batch_first=True)`` (``MHAAttention``
   below: same constructor and forward signature as ``Attention``, ``key_padding_mask = ~key_mask``).
   Two MHA variants: ``need_weights=False`` (MHA's own SDPA path, the fair comparison) and
   ``need_weights=True`` (``nn.MultiheadAttention``'s default call, which also materializes the
   head-averaged attention weights). The MHA layers get the SDPA layer's weights (q/k/v weights
   concatenated into ``in_proj_weight``, the rest copied by name), and the script asserts that their
   outputs (and, for forward+backward, the input gradients) equal the SDPA layer's before timing
   anything. Inputs: ``--batch-size`` captions of ``--words`` words with some padding (lengths from
   ``--words`` down to ``--min-words``), image tokens ``--tokens`` (49 = Swin-T / any stride-32
   backbone at 224 px, 196 = 14x14, 784 = 28x28) with DETR sine positions, dim ``--out-dim``, heads
   ``--fusion-heads``. Forward = eval mode, ``no_grad``; forward+backward = train mode (dropout 0),
   both outputs back-propagated with fixed random gradients into the parameters and both inputs
   (in the model the inputs come from the encoders, which train), ``zero_grad(set_to_none=True)``
   included in every call.
2. Matcher: ``HungarianMatcher`` per batch of ``--matcher-batch`` captions with ``--phrases`` phrases
   and ``--boxes`` target boxes each (every phrase has at least one box), for Q = ``--queries``
   decoder queries and for the dense proposals of two-stage query selection (Q = number of image
   tokens, ``--proposal-tokens``). Random logits and boxes; the cost matrices are the real ones.
   The split is measured, not estimated: in the same round-robin, (a) the matcher as is; (b) the
   matcher with ``linear_sum_assignment`` replaced, only during that call, by a stub that returns a
   trivial assignment, i.e. everything except the solver (cost matrices, host copies, tensor
   conversion); (c) ``scipy.optimize.linear_sum_assignment`` alone on the very arrays the matcher
   passes it (captured once from a real call).
3. Inference: images/s and ms/batch of the whole model (``forward(images, words, text_mask,
   phrase_mask)``, random init, eval, ``no_grad``, float32) for ``build_grounding_model()``'s
   defaults (Swin-T, dim 256, 224 px, 20 queries) and for the demo configuration (ResNet-18 stage 3,
   dim 128, 128 px), at batch ``--batch-size`` and batch 1, on a 10-word caption with 2 phrases
   (the same caption for every image; images are random).

Timing: after ``--warmup`` untimed calls of each function, the compared functions run in round-robin
(a, b, a, b, ...) until each ran ``--reps`` times and ``--min-time`` seconds passed (at most
``--max-reps``), so a change in the load of a shared machine hits them alike
(``src.training.perf.round_robin``; on CUDA it synchronizes around every call). The figure is the
fastest call (the least disturbed); spread = (slowest - fastest) / fastest of N calls shows the
timing noise. Ratios are between figures of the same run. Every figure is measured in the run;
nothing is hard-coded. A default CPU run takes a few minutes on 2 cores.

    python -m bench.ovd                                   # CPU, torch's default threads
    python -m bench.ovd --threads 2 --skip inference      # fusion + matcher only
    python -m bench.ovd --device cuda --batch-size 64
    OMP_NUM_THREADS=1 python -m bench.ovd --quick         # smoke test: tiny sizes, 2 reps
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from functools import partial
from typing import Callable

import numpy as np
import scipy
import timm
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from bench.timing import command_line, device_name, fastest, ms, ratio, round_robin_args, spread
from src.errors import DataError
from src.data.grounding import encode_words
from src.models import ovd_matching
from src.models.ovd import Attention, FusionLayer, build_grounding_model, sine_positions
from src.models.ovd_matching import HungarianMatcher
from src.training import distributed as D

# the inference configurations: build_grounding_model keyword arguments
MODEL_CONFIGS = {
    "default": {},
    "demo": dict(image_encoder="resnet18", dim=128, fusion_layers=1, fusion_heads=4, decoder_layers=3,
                 num_queries=20, text_layers=1, image_size=128, feature_index=3),
}
CAPTION = "a man in a red shirt rides a brown horse".split()
PHRASES = ((0, 2), (7, 3))  # (start, count): "a man", "a brown horse"
ATTENTIONS = ("img_from_txt", "txt_from_img")


# ----------------------------------------------------------------------------- 1. fusion

class MHAAttention(nn.Module):
    """``Attention``'s constructor and forward signature around ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, need_weights: bool = False) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.need_weights = need_weights

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        pad = ~key_mask if key_mask is not None else None
        return self.mha(q, k, v, key_padding_mask=pad, need_weights=self.need_weights)[0]

    @torch.no_grad()
    def copy_from(self, src: Attention) -> None:
        """Take ``src``'s weights: q/k/v projections stacked into ``in_proj``, ``out_proj`` as is."""
        self.mha.in_proj_weight.copy_(torch.cat([src.q_proj.weight, src.k_proj.weight, src.v_proj.weight]))
        self.mha.in_proj_bias.copy_(torch.cat([src.q_proj.bias, src.k_proj.bias, src.v_proj.bias]))
        self.mha.out_proj.weight.copy_(src.out_proj.weight)
        self.mha.out_proj.bias.copy_(src.out_proj.bias)


def mha_copy(src: FusionLayer, dim: int, heads: int, need_weights: bool) -> FusionLayer:
    """A ``FusionLayer`` on ``MHAAttention`` computing the same function as ``src``."""
    dst = FusionLayer(dim, heads, attention=partial(MHAAttention, need_weights=need_weights))
    shared = {k: v for k, v in src.state_dict().items() if not k.startswith(ATTENTIONS)}
    missing, unexpected = dst.load_state_dict(shared, strict=False)
    if unexpected or not all(k.startswith(ATTENTIONS) for k in missing):
        raise RuntimeError(f"weight copy: missing {missing}, unexpected {unexpected}")
    for name in ATTENTIONS:
        getattr(dst, name).copy_from(getattr(src, name))
    return dst


def fusion_inputs(n_tokens: int, args, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(args.seed + n_tokens)
    B, L, D = args.batch_size, args.words, args.out_dim
    side = math.isqrt(n_tokens)
    h, w = (side, side) if side * side == n_tokens else (1, n_tokens)
    lengths = [args.words - (b % (args.words - args.min_words + 1)) for b in range(B)]
    text_mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    return {"img": torch.randn(B, n_tokens, D, generator=g).to(device),
            "img_pos": sine_positions(h, w, D).to(device),
            "txt": torch.randn(B, L, D, generator=g).to(device),
            "text_mask": text_mask.to(device),
            "g_img": torch.randn(B, n_tokens, D, generator=g).to(device),
            "g_txt": torch.randn(B, L, D, generator=g).to(device),
            "grid": (h, w), "lengths": (min(lengths), max(lengths))}


def forward_fn(layer: FusionLayer, x: dict) -> Callable[[], tuple]:
    def run():
        with torch.no_grad():
            return layer(x["img"], x["img_pos"], x["txt"], x["text_mask"])
    return run


def backward_fn(layer: FusionLayer, x: dict) -> Callable[[], tuple]:
    img, txt = x["img"].clone().requires_grad_(), x["txt"].clone().requires_grad_()

    def run():
        layer.zero_grad(set_to_none=True)
        img.grad = txt.grad = None
        out_img, out_txt = layer(img, x["img_pos"], txt, x["text_mask"])
        torch.autograd.backward([out_img, out_txt], [x["g_img"], x["g_txt"]])
        return img.grad, txt.grad
    return run


def check_same(name: str, ref: tuple, got: tuple, atol: float) -> float:
    worst = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    if not worst <= atol:
        raise AssertionError(f"{name}: max |difference| {worst:.3g} > {atol:g} (the weight copy is wrong)")
    return worst


def bench_fusion(args, device: torch.device, dev_name: str) -> None:
    D_, H = args.out_dim, args.fusion_heads
    torch.manual_seed(args.seed)
    sdpa = FusionLayer(D_, H).to(device)
    variants = {"sdpa": sdpa,
                "mha": mha_copy(sdpa, D_, H, need_weights=False).to(device),
                "mha_w": mha_copy(sdpa, D_, H, need_weights=True).to(device)}
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in variants.items()}
    if len(set(n_params.values())) != 1:
        raise RuntimeError(f"parameter counts differ: {n_params}")
    rows, worst = [], 0.0
    for n in args.tokens:
        x = fusion_inputs(n, args, device)
        timings = {}
        # forward: eval, outputs compared; forward+backward: train, input gradients compared
        for label, train, make_fn, tol in (("forward", False, forward_fn, args.atol),
                                           ("forward+backward", True, backward_fn, 10 * args.atol)):
            for m in variants.values():
                m.train(train)
            fns = {k: make_fn(m, x) for k, m in variants.items()}
            ref = fns["sdpa"]()
            for k in ("mha", "mha_w"):
                worst = max(worst, check_same(f"{label} {k}, {n} tokens", ref, fns[k](), tol))
            timings[label] = round_robin_args(fns, device, args)
        h, w = x["grid"]
        for label, t in timings.items():
            s, m1, m2 = ms(t["sdpa"]), ms(t["mha"]), ms(t["mha_w"])
            rows.append(f"| {n} ({h}x{w}) | {label} | {s:.2f} | {spread(t['sdpa'])} | {m1:.2f} | {spread(t['mha'])} | "
                        f"{ratio(m1, s)} | {m2:.2f} | {spread(t['mha_w'])} | {ratio(m2, s)} |")
        print(f"  fusion, {n} tokens measured", file=sys.stderr, flush=True)
    lo, hi = x["lengths"]
    print(f"## 1. FusionLayer: SDPA `Attention` vs `nn.MultiheadAttention` ({dev_name}, float32, batch "
          f"{args.batch_size}, dim {D_}, heads {H}, text {args.words} words padded (real lengths {lo}-{hi}), "
          f"image tokens {', '.join(map(str, args.tokens))})\n")
    print(f"Same weights in all three ({n_params['sdpa']:,} parameters each); outputs checked equal before "
          f"timing (largest |difference| over outputs and input gradients: {worst:.1e}). forward = eval, no_grad; "
          "forward+backward = train, gradients into parameters and both inputs, zero_grad included. "
          "ms = fastest call; MHA/SDPA > 1 means SDPA `Attention` is faster.\n")
    print("| image tokens | pass | SDPA ms | spread | MHA ms (need_weights=False) | spread | MHA/SDPA | "
          "MHA ms (need_weights=True, default) | spread | MHA default/SDPA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows) + "\n", flush=True)


# ----------------------------------------------------------------------------- 2. matcher

@contextmanager
def solver(fn: Callable):
    """Replace ``linear_sum_assignment`` as the matcher module sees it, only while inside."""
    saved = ovd_matching.linear_sum_assignment
    ovd_matching.linear_sum_assignment = fn
    try:
        yield
    finally:
        ovd_matching.linear_sum_assignment = saved


def stub_solver(cost: np.ndarray):
    k = min(cost.shape)
    return np.arange(k), np.arange(k)


def matcher_inputs(q: int, args, device: torch.device):
    g = torch.Generator().manual_seed(args.seed + q)
    B, P, N = args.matcher_batch, args.phrases, args.boxes
    logits = (torch.randn(B, q, P, generator=g) * 2 - 4).to(device)
    boxes = torch.rand(B, q, 4, generator=g).mul(0.8).add(0.1).to(device)
    targets = []
    for _ in range(B):
        phrase = torch.cat([torch.arange(P), torch.randint(0, P, (max(0, N - P),), generator=g)])[:N]
        xy = torch.rand(N, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(N, 2, generator=g) * 0.35 + 0.05
        targets.append({"boxes": torch.cat([xy, wh], -1).to(device), "phrase": phrase.to(device)})
    return logits, boxes, targets


def bench_matcher(args, device: torch.device, dev_name: str) -> None:
    matcher = HungarianMatcher()
    cases = [(q, f"decoder queries ({q})") for q in args.queries]
    cases += [(n, f"dense proposals ({math.isqrt(n)}x{math.isqrt(n)} tokens)" if math.isqrt(n) ** 2 == n
               else f"dense proposals ({n} tokens)") for n in args.proposal_tokens]
    rows = []
    for q, label in cases:
        logits, boxes, targets = matcher_inputs(q, args, device)
        captured: list[np.ndarray] = []

        def capture(cost):
            captured.append(cost.copy())
            return linear_sum_assignment(cost)
        with solver(capture):
            matches = matcher(logits, boxes, targets)
        if len(captured) != len(targets) or any(len(r) != min(q, len(t["phrase"])) for (r, _), t in
                                                zip(matches, targets)):
            raise RuntimeError("matcher: unexpected assignment sizes")

        def cost_only():
            with solver(stub_solver):
                return matcher(logits, boxes, targets)
        fns = {"full": lambda: matcher(logits, boxes, targets), "cost": cost_only,
               "scipy": lambda: [linear_sum_assignment(c) for c in captured]}
        t = round_robin_args(fns, device, args)
        full, cost, sp = ms(t["full"]), ms(t["cost"]), ms(t["scipy"])
        rows.append(f"| {label} | {q}x{args.boxes} | {full:.2f} | {spread(t['full'])} | {full / len(targets):.3f} | "
                    f"{cost:.2f} | {spread(t['cost'])} | {sp:.3f} | {spread(t['scipy'])} | {100 * sp / full:.0f}% |")
        print(f"  matcher, Q={q} measured", file=sys.stderr, flush=True)
    print(f"## 2. HungarianMatcher ({dev_name} tensors, float32, batch {args.matcher_batch}, {args.phrases} phrases "
          f"and {args.boxes} target boxes per caption, Q = {', '.join(str(q) for q, _ in cases)})\n")
    print("matcher = one call for the whole batch; all but solver = the same call with the solver stubbed out "
          "(cost matrices, host copies, conversions); scipy alone = `linear_sum_assignment` on the matcher's own "
          "cost arrays, one per caption. ms = fastest call.\n")
    print("| case | cost matrix per caption | matcher ms/batch | spread | ms/caption | all but solver ms | spread | "
          "scipy alone ms | spread | scipy share |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows) + "\n", flush=True)


# ----------------------------------------------------------------------------- 3. inference

def caption_batch(batch: int, buckets: int, device: torch.device) -> dict:
    ids = encode_words(CAPTION, buckets)
    L = len(CAPTION)
    phrase_mask = torch.zeros(batch, len(PHRASES), L, dtype=torch.bool)
    for p, (start, count) in enumerate(PHRASES):
        phrase_mask[:, p, start:start + count] = True
    return {"words": ids[None].expand(batch, -1, -1).contiguous().to(device),
            "text_mask": torch.ones(batch, L, dtype=torch.bool, device=device),
            "phrase_mask": phrase_mask.to(device)}


def _default(arg: str):
    """``build_grounding_model``'s default for ``arg``."""
    return inspect.signature(build_grounding_model).parameters[arg].default


def describe(name: str, kwargs: dict, model) -> str:
    enc = kwargs.get("image_encoder", _default("image_encoder"))
    size = kwargs.get("image_size", _default("image_size"))
    return (f"{name}: {enc}, dim {model.query_content.in_features}, {size} px, {len(model.fusion)} fusion, "
            f"{len(model.text_encoder.encoder.layers)} text, {len(model.layers)} decoder layers, "
            f"{model.num_queries} queries")


def bench_inference(args, device: torch.device, dev_name: str) -> None:
    batches = sorted({args.batch_size, 1}, reverse=True)
    rows = []
    for name in args.models:
        kwargs = MODEL_CONFIGS[name]
        torch.manual_seed(args.seed)
        model = build_grounding_model(**kwargs).to(device).eval()
        size = kwargs.get("image_size", _default("image_size"))
        buckets = kwargs.get("buckets", _default("buckets"))
        n_params = sum(p.numel() for p in model.parameters())
        fns, tokens = {}, None
        for b in batches:
            g = torch.Generator().manual_seed(args.seed + b)
            images = torch.randn(b, 3, size, size, generator=g).to(device)
            text = caption_batch(b, buckets, device)

            def call(images=images, text=text, model=model):
                with torch.no_grad():
                    return model(images, **text)
            out = call()
            tokens = out["proposals"]["boxes"].shape[1]
            if tuple(out["layers"][-1]["logits"].shape) != (b, model.num_queries, len(PHRASES)):
                raise RuntimeError(f"{name}: logits shape {tuple(out['layers'][-1]['logits'].shape)}")
            fns[b] = call
        t = round_robin_args(fns, device, args)
        for b in batches:
            rows.append(f"| {describe(name, kwargs, model)} | {n_params / 1e6:.1f} M | {tokens} | {b} | "
                        f"{ms(t[b]):.1f} | {b / fastest(t[b]):.1f} | {spread(t[b])} |")
        print(f"  inference, {name} measured", file=sys.stderr, flush=True)
        del model, fns, t  # free the model before building the next one
    args_text = "; ".join(f"{n} = `build_grounding_model({', '.join(f'{k}={v!r}' for k, v in MODEL_CONFIGS[n].items())})`"
                          for n in args.models)
    print(f"## 3. Inference, whole model ({dev_name}, float32, eval, no_grad, random init, batch "
          f"{' and '.join(map(str, batches))}, {len(CAPTION)}-word caption with {len(PHRASES)} phrases)\n")
    print(f"{args_text}. images/s = batch / fastest call; image tokens = the fused tokens that the dense proposals "
          "and query selection see.\n")
    print("| model | params | image tokens | batch | ms/batch | images/s | spread |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows) + "\n", flush=True)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=16, help="fusion batch and the large inference batch")
    p.add_argument("--out-dim", type=int, default=256, help="fusion width")
    p.add_argument("--fusion-heads", type=int, default=4)
    p.add_argument("--tokens", type=int, nargs="+", default=[49, 196, 784], help="image tokens in the fusion table")
    p.add_argument("--words", type=int, default=16, help="padded caption length (fusion)")
    p.add_argument("--min-words", type=int, default=10, help="shortest real caption in the fusion batch")
    p.add_argument("--atol", type=float, default=1e-4, help="SDPA vs MHA output tolerance (gradients: 10x)")
    p.add_argument("--matcher-batch", type=int, default=32)
    p.add_argument("--queries", type=int, nargs="+", default=[20], help="decoder queries (matcher)")
    p.add_argument("--proposal-tokens", type=int, nargs="*", default=[49, 196], help="dense proposals (matcher)")
    p.add_argument("--phrases", type=int, default=3, help="phrases per caption (matcher)")
    p.add_argument("--boxes", type=int, default=4, help="target boxes per caption (matcher), >= --phrases")
    p.add_argument("--models", nargs="+", choices=list(MODEL_CONFIGS), default=list(MODEL_CONFIGS),
                   help="inference configurations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per function before timing")
    p.add_argument("--reps", type=int, default=5, help="timed calls per function, at least")
    p.add_argument("--max-reps", type=int, default=30, help="timed calls per function, at most")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds each round-robin runs, at least")
    p.add_argument("--skip", nargs="*", choices=["fusion", "matcher", "inference"], default=[],
                   help="sections to leave out")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: batch 2, 49 tokens, matcher batch 4 (Q 20 and 49), both models at batch 2 and 1, "
                        "2 reps, no minimum time")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.tokens, args.matcher_batch, args.proposal_tokens = 2, [49], 4, [49]
        args.reps, args.max_reps, args.min_time = 2, 2, 0.0
    for flag in ("batch_size", "out_dim", "fusion_heads", "words", "min_words", "matcher_batch", "phrases",
                 "reps", "max_reps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.min_words > args.words:
        p.error("--min-words must be <= --words")
    if args.boxes < args.phrases:
        p.error("--boxes must be >= --phrases (every phrase has a box)")
    if args.out_dim % args.fusion_heads:
        p.error("--out-dim must be divisible by --fusion-heads")
    if min(args.tokens + args.queries + args.proposal_tokens) < 1:
        p.error("token and query counts must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = D.resolve_device(args.device)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    dev_name = device_name(device)
    print(f"# ovd: device {dev_name}, {platform.machine()} {platform.system()}, {os.cpu_count()} logical CPUs; "
          f"torch {torch.__version__}, timm {timm.__version__}, scipy {scipy.__version__}, numpy {np.__version__}, "
          f"Python {platform.python_version()}")
    print(f"command: {command_line(__spec__.name)}")
    print(f"timing: fastest of >= {args.reps} calls per function (>= {args.min_time:g} s per round-robin, "
          f"<= {args.max_reps}) after {args.warmup} warm-up; spread = (slowest - fastest) / fastest of N calls; "
          "float32" + ("; QUICK smoke-test sizes, not for the docs" if args.quick else "") + "\n", flush=True)

    sections = {"fusion": bench_fusion, "matcher": bench_matcher, "inference": bench_inference}
    for name, fn in sections.items():
        if name in args.skip:
            print(f"## {name}: skipped (--skip)\n")
            continue
        t0 = time.perf_counter()
        fn(args, device, dev_name)
        print(f"  section {name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
