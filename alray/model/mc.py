"""Fast MC-dropout inference: fixed seeded masks, deterministic trunk computed once.

MC dropout here means: batch norm in eval mode, dropout on, K samples. Sample k uses one
fixed Bernoulli keep-mask per dropout layer, drawn from a generator seeded by
``(seed, layer name)`` (``dropout_masks``), so a row's result never depends on the batch
it is scored in, how the pool is split, or which actor scores it.

The fast path (``MCDropout``) works in a feature-major layout ``(K, width, rows)``:
- each branch's first ``Linear -> ReLU`` runs once per row (it precedes every mask);
- a block's eval-mode BatchNorm affine and the sample's dropout scaling are folded into
  the *next* Linear, giving K weight copies per layer: the first post-dropout Linear is
  one matmul ``(K*out, w) @ (w, rows)``, later ones a batched matmul over K;
- the missing-modality vector enters the fused Linear as a constant, as in ``forward``.
So the stochastic part is just matmul + bias + ReLU, with no per-element RNG.
``mc_forward_reference`` runs K plain forward passes with the same masks (tests).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from alray.seeds import derive_seed
from alray.model.fusion import FUSED, Block, FusionNet, as_tensors, check_inputs

WANTS = ("mean_probs", "mean_entropy", "samples")


def dropout_masks(model: FusionNet, k: int, seed: int) -> dict[str, Tensor]:
    """Keep-masks per dropout layer: block name -> ``(k, width)`` bool.

    Row j of a layer's mask is the same for every ``k > j`` (one stream per layer).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    masks = {}
    for name, block in model.block_names():
        g = torch.Generator().manual_seed(derive_seed(seed, name))
        width = block.linear.out_features
        masks[name] = torch.rand((k, width), generator=g) >= block.dropout.p
    return masks


def _bn_affine(block: Block) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``y = a * x + c``: two ``(width,)`` tensors."""
    bn = block.bn
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


def _fold(weight: Tensor, bias: Tensor | None, prev: Block, keep: Tensor
          ) -> tuple[Tensor, Tensor]:
    """Fold ``prev``'s BN affine and dropout masks into the Linear that follows it.

    ``weight`` ``(out, w)``, ``keep`` ``(K, w)`` -> weights ``(K, out, w)`` and biases
    ``(K, out, 1)`` acting on ``prev``'s ReLU output.
    """
    a, c = _bn_affine(prev)
    scale = keep.to(weight) / (1.0 - prev.dropout.p)                # (K, w)
    w_k = weight.unsqueeze(0) * (scale * a).unsqueeze(1)            # (K, out, w)
    b_k = (scale * c) @ weight.T                                    # (K, out)
    if bias is not None:
        b_k = b_k + bias
    return w_k.contiguous(), b_k.unsqueeze(2)


def _apply(w_k: Tensor, b_k: Tensor, h: Tensor) -> Tensor:
    """Folded Linear on ``h``: shared ``(w, rows)`` (one stacked matmul) or per-sample
    ``(K, w, rows)`` (batched matmul) -> pre-activations ``(K, out, rows)``."""
    k, out, width = w_k.shape
    if h.dim() == 2:
        return torch.mm(w_k.view(k * out, width), h).view(k, out, -1).add_(b_k)
    return torch.baddbmm(b_k, w_k, h)


class MCDropout:
    """MC-dropout scorer for one model, K and seed; reuse it across batches.

    Folded weights are built lazily per head and cached (a few MB at study size), so
    a scoring actor builds them once. The model must not change while it is in use.
    """

    def __init__(self, model: FusionNet, k: int, seed: int, cached: bool = False):
        self.model, self.k, self.seed = model, k, seed
        self.cached = cached  # inputs are the first blocks' outputs (first_activations)
        self.masks = dropout_masks(model, k, seed)
        self._plans: dict[str, dict] = {}

    def _plan(self, head: str) -> dict:
        if head not in self._plans:
            with torch.inference_mode():
                self._plans[head] = self._build(head)
        return self._plans[head]

    def _build(self, head: str) -> dict:
        model = self.model
        if head not in model.head_names:
            raise ValueError(f"unknown head {head!r}; this model has {model.head_names}")
        mods = model.modalities if head == FUSED else (head,)
        branches = {m: self._chain(m, model.branches[m]) for m in mods}
        if head == FUSED:
            first = model.fused[0].linear
            entry, col = {}, 0
            for m in mods:  # the fused Linear's column slice that sees branch m
                width = model.config.branch_widths[m][-1]
                w_m = first.weight[:, col:col + width]
                last = model.branches[m][-1]
                keep = self.masks[f"{m}.{len(model.branches[m]) - 1}"]
                entry[m] = (*_fold(w_m, None, last, keep), w_m @ model.missing[m])
                col += width
            tail = self._chain(FUSED, model.fused)
            out = _fold(model.fused_head.weight, model.fused_head.bias, model.fused[-1],
                        self.masks[f"{FUSED}.{len(model.fused) - 1}"])
            return dict(branches=branches, entry=entry, entry_bias=first.bias, tail=tail,
                        out=out)
        blocks, lin = model.branches[head], model.heads[head]
        out = _fold(lin.weight, lin.bias, blocks[-1], self.masks[f"{head}.{len(blocks) - 1}"])
        missing_logits = lin(model.missing[head])
        return dict(modality=head, branches=branches, out=out,
                    missing_logits=missing_logits)

    def _chain(self, prefix: str, blocks) -> list[tuple[Tensor, Tensor]]:
        """Folded Linears of blocks 1.. of a chain (block 0's Linear is unfolded)."""
        return [_fold(blocks[j].linear.weight, blocks[j].linear.bias, blocks[j - 1],
                      self.masks[f"{prefix}.{j - 1}"]) for j in range(1, len(blocks))]

    def _run_chain(self, blocks, folded, x: Tensor) -> Tensor:
        """``x`` ``(rows, dim)`` -> last block's ReLU output ``(K, w, rows)`` or, for a
        one-block chain, the shared ``(w, rows)``. With ``cached`` inputs ``x`` is the
        first block's ReLU output already (``FusionNet.first_activations``)."""
        if self.cached:
            h = x.T
        else:
            first = blocks[0].linear
            h = torch.addmm(first.bias.unsqueeze(1), first.weight, x.T).relu_()  # once
        for w_k, b_k in folded:
            h = _apply(w_k, b_k, h).relu_()
        return h

    @torch.inference_mode()
    def logits(self, features: Mapping[str, Tensor], present: Mapping[str, Tensor],
               head: str = FUSED) -> Tensor:
        """MC logits of ``head``: ``(K, n_classes, n)`` (feature-major)."""
        plan, model = self._plan(head), self.model
        n = check_inputs(model.modalities, features, present)
        if head != FUSED:
            return self._head_logits(plan, features[head], present[head], n)
        acc = plan["entry_bias"].view(1, -1, 1).expand(self.k, -1, n).clone()
        for m, (w_k, b_k, miss) in plan["entry"].items():
            mask = present[m]
            if bool(mask.all()):
                r = self._run_chain(model.branches[m], plan["branches"][m], features[m])
                acc += _apply(w_k, b_k, r)
                continue
            idx = mask.nonzero().squeeze(1)
            acc[:, :, ~mask] += miss.view(1, -1, 1)
            if idx.numel():
                r = self._run_chain(model.branches[m], plan["branches"][m],
                                    features[m].index_select(0, idx))
                acc.index_add_(2, idx, _apply(w_k, b_k, r))
        h = acc.relu_()
        for w_k, b_k in plan["tail"]:
            h = _apply(w_k, b_k, h).relu_()
        return _apply(*plan["out"], h)

    def _head_logits(self, plan: dict, x: Tensor, mask: Tensor, n: int) -> Tensor:
        out = plan["missing_logits"].view(1, -1, 1).expand(self.k, -1, n).clone()
        idx = mask.nonzero().squeeze(1)
        if idx.numel():
            m = plan["modality"]
            r = self._run_chain(self.model.branches[m], plan["branches"][m],
                                x.index_select(0, idx))
            out.index_copy_(2, idx, _apply(*plan["out"], r))
        return out

    def statistics(self, features, present, head: str = FUSED,
                   want: Sequence[str] = ("mean_probs", "mean_entropy"),
                   chunk_rows: int = 512) -> dict[str, Tensor]:
        """Per-row MC statistics (float32, CPU-or-model device):
        ``mean_probs`` ``(n, C)``, ``mean_entropy`` ``(n,)`` (mean over samples of each
        sample's entropy, nats), ``samples`` ``(n, K, C)`` probabilities.
        Rows are processed ``chunk_rows`` at a time to stay in cache."""
        unknown = set(want) - set(WANTS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; choose from {WANTS}")
        device = next(self.model.parameters()).device
        features, present = as_tensors(features, present, device)
        n = check_inputs(self.model.modalities, features, present)
        parts: dict[str, list[Tensor]] = {w: [] for w in want}
        with torch.inference_mode():
            for start in range(0, n, chunk_rows):
                rows = slice(start, min(n, start + chunk_rows))
                logits = self.logits({m: f[rows] for m, f in features.items()},
                                     {m: p[rows] for m, p in present.items()}, head)
                for name, value in _summaries(logits, want).items():
                    parts[name].append(value)
        if n == 0:
            return _empty(want, self.k, self.model.config.n_classes, device)
        return {name: torch.cat(chunks) for name, chunks in parts.items()}


def _summaries(logits: Tensor, want: Sequence[str]) -> dict[str, Tensor]:
    """``(K, C, rows)`` logits -> the wanted statistics, rows first."""
    logp = F.log_softmax(logits, dim=1)
    probs = logp.exp()
    out = {}
    if "mean_probs" in want:
        out["mean_probs"] = probs.mean(0).T.contiguous()
    if "mean_entropy" in want:
        out["mean_entropy"] = -(probs * logp).sum(1).mean(0)
    if "samples" in want:
        out["samples"] = probs.permute(2, 0, 1).contiguous()
    return out


def _empty(want, k: int, c: int, device) -> dict[str, Tensor]:
    shapes = {"mean_probs": (0, c), "mean_entropy": (0,), "samples": (0, k, c)}
    return {w: torch.zeros(shapes[w], device=device) for w in want}


def mc_statistics(model: FusionNet, features, present, k: int, seed: int,
                  head: str = FUSED, want: Sequence[str] = ("mean_probs", "mean_entropy"),
                  chunk_rows: int = 512) -> dict[str, Tensor]:
    """MC-dropout statistics of one batch (see ``MCDropout.statistics``).

    ``features``: modality -> ``(n, dim)``; ``present``: modality -> ``(n,)`` bool
    (numpy or torch). Builds the folded weights each call; keep an ``MCDropout`` to reuse.
    """
    return MCDropout(model, k, seed).statistics(features, present, head, want, chunk_rows)


def mc_forward_reference(model: FusionNet, features, present, masks: Mapping[str, Tensor],
                         head: str = FUSED) -> Tensor:
    """K plain eval-mode forward passes, dropout replaced by ``masks`` (from
    ``dropout_masks``) via forward hooks -> probabilities ``(n, K, C)``. Slow; tests."""
    device = next(model.parameters()).device
    features, present = as_tensors(features, present, device)
    k = next(iter(masks.values())).shape[0]
    was_training = model.training
    model.eval()
    samples = []
    try:
        with torch.inference_mode():
            for j in range(k):
                handles = [block.dropout.register_forward_hook(_mask_hook(
                    masks[name][j], block.dropout.p)) for name, block in model.block_names()]
                try:
                    logits = model(features, present).logits[head]
                finally:
                    for handle in handles:
                        handle.remove()
                samples.append(torch.softmax(logits, dim=1))
    finally:
        model.train(was_training)
    return torch.stack(samples, dim=1)


def _mask_hook(keep: Tensor, p: float):
    def hook(module, inputs, output):
        return inputs[0] * (keep.to(inputs[0]) / (1.0 - p))
    return hook
