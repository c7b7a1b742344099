"""A PyTorch reference of jaxdd's BPTT-family meta-step (full BPTT, T-BPTT, RaT-BPTT), as the authors run it.

The authors of RaT-BPTT (Feng et al., ICLR 2024) differentiate the inner loop with the `higher`
library: a functional copy of the network, an inner optimizer written as differentiable tensor
arithmetic, and ``torch.autograd.grad(..., create_graph=True)`` at every differentiated inner step, so
that the whole window's graph is kept and the outer loss is backpropagated through it. This module
does the same with `torch.func.functional_call`:

- `ConvNet`: the field's ConvNet exactly as ``jaxdd.models.make_model("convnet", norm="instance")``:
  depth × [conv3×3 (pad 1, bias) → GroupNorm(width groups, affine, eps 1e-5) → ReLU → avgpool 2×2]
  → linear. NCHW / OIHW layout (torch's), converted from jaxdd's NHWC / HWIO by `params_from_jaxdd`.
- `adam_update`: optax.scale_by_adam(b1, b2, eps, eps_root) followed by ``p - lr * update``:
  mu ← b1·mu + (1−b1)·g, nu ← b2·nu + (1−b2)·g², update = m̂ / (√(v̂ + eps_root) + eps).
- `torch_adam_update`: torch.optim.Adam's step written differentiably (eps outside the root, bias
  corrections in float64 on the host, as torch computes them), with the gradient of v masked to zero
  where v = 0, as `higher`'s differentiable Adam does (jaxdd.optim.scale_by_torch_adam's counterpart).
  `meta_gradient(..., adam="torch")` selects it; the default ``adam="optax"`` is `adam_update`.
- `meta_gradient`: a fresh Adam state, `prefix` inner steps without gradient, `window` inner steps
  with ``create_graph=True``, the outer mean cross-entropy on a real batch, and its gradient with
  respect to the synthetic images. Each inner batch is the whole synthetic set in class-major order
  (jaxdd's inner batch when per_class = ipc and all classes are used), without augmentation.

Only torch and numpy are imported here (the jaxdd → torch converter takes any nested dict of arrays),
so a benchmark child process that runs the torch side does not pay for importing JAX.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class ConvNet(nn.Module):
    """depth × [conv3×3 → instance norm (GroupNorm, one group per channel) → ReLU → avgpool 2×2] → linear."""

    def __init__(self, image_shape, num_classes: int, *, width: int = 128, depth: int = 3):
        super().__init__()
        h, w, c = image_shape  # jaxdd's (H, W, C) convention
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for _ in range(depth):
            self.convs.append(nn.Conv2d(c, width, 3, padding=1, bias=True))
            self.norms.append(nn.GroupNorm(width, width, eps=1e-5, affine=True))
            c, h, w = width, h // 2, w // 2
        self.head = nn.Linear(h * w * c, num_classes)

    def forward(self, x):  # x: [N, C, H, W]
        for conv, norm in zip(self.convs, self.norms):
            x = F.avg_pool2d(F.relu(norm(conv(x))), 2)  # floor mode: drops an odd last row/column like jaxdd
        return self.head(x.flatten(1))


def _get(tree: Mapping, key):
    """tree[key] for a dict whose integer keys may have become strings (e.g. after a round trip)."""
    return tree[key] if key in tree else tree[str(key)]


def params_from_jaxdd(params: Mapping, image_shape, *, width: int, depth: int,
                      dtype=np.float32) -> dict[str, torch.Tensor]:
    """jaxdd ConvNet params pytree (nested dict of arrays) -> `ConvNet` state dict (tensors of `dtype`).

    Conv kernels HWIO -> OIHW. The head's input is jaxdd's NHWC flatten (h, w, c order); torch
    flattens NCHW (c, h, w order), so its rows are permuted accordingly. Dense kernel [in, out] ->
    Linear weight [out, in].
    """
    h, w, _ = image_shape
    out: dict[str, torch.Tensor] = {}

    def t(a):
        return torch.from_numpy(np.array(a, dtype=dtype, copy=True))

    for i in range(depth):
        conv = _get(params["convs"], i)
        out[f"convs.{i}.weight"] = t(np.transpose(np.asarray(conv["kernel"]), (3, 2, 0, 1)))
        out[f"convs.{i}.bias"] = t(conv["bias"])
        norm = _get(params["norms"], i)["layer"]
        out[f"norms.{i}.weight"] = t(norm["scale"])
        out[f"norms.{i}.bias"] = t(norm["bias"])
        h, w = h // 2, w // 2
    kernel = np.asarray(params["head"]["kernel"])  # [h*w*c, classes], rows in (h, w, c) order
    classes = kernel.shape[1]
    kernel = kernel.reshape(h, w, width, classes).transpose(3, 2, 0, 1).reshape(classes, width * h * w)
    out["head.weight"] = t(kernel)
    out["head.bias"] = t(params["head"]["bias"])
    return out


def nhwc_to_nchw(x) -> torch.Tensor:
    """numpy / array [N, H, W, C] -> contiguous float32 tensor [N, C, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x, dtype=np.float32), (0, 3, 1, 2))))


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().transpose(0, 2, 3, 1)


def bias_correction(decay: float, count: int, dtype=torch.float32) -> float:
    """1 − decay**count in the parameters' precision, as optax does (float32 unless x64 is on).

    In float32, 1 − 0.999 differs from the float64 value by 1.3e-5 relative: enough to show up in a
    1e-4 comparison of meta-gradients, so this follows optax's rounding.
    """
    t = np.float64 if dtype == torch.float64 else np.float32
    return float(t(1.0) - np.power(t(decay), t(count), dtype=t))


def adam_update(params, grads, mu, nu, count: int, *, lr: float, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8, eps_root: float = 1e-8):
    """One differentiable Adam step as optax.scale_by_adam + ``p - lr * u``; `count` is the new step count (≥ 1).

    Returns (new_params, new_mu, new_nu); all are lists of tensors, nothing is modified in place.
    eps_root > 0 keeps the backward pass finite where a gradient entry is exactly zero (the conv biases
    before instance norm have exactly-zero gradients).
    """
    dtype = params[0].dtype
    c1, c2 = bias_correction(b1, count, dtype), bias_correction(b2, count, dtype)
    new_p, new_mu, new_nu = [], [], []
    for p, g, m, v in zip(params, grads, mu, nu):
        m = (1.0 - b1) * g + b1 * m
        v = (1.0 - b2) * (g * g) + b2 * v
        u = (m / c1) / (torch.sqrt(v / c2 + eps_root) + eps)
        new_p.append(p - lr * u)
        new_mu.append(m)
        new_nu.append(v)
    return new_p, new_mu, new_nu


def _mask_grad_where(mask: torch.Tensor):
    """A tensor hook that zeroes the incoming gradient where `mask` holds (NaN/∞ included)."""

    def hook(grad):
        return torch.where(mask, torch.zeros_like(grad), grad)

    return hook


def torch_adam_update(params, grads, mu, nu, count: int, *, lr: float, b1: float = 0.9, b2: float = 0.999,
                      eps: float = 1e-8):
    """One differentiable torch.optim.Adam step; `count` is the new step count (≥ 1).

    p ← p − (lr / c1) · m / (√v / √c2 + eps) with c_i = 1 − b_i**count computed in float64 (Python
    floats), as torch does. Where v = 0 the gradient flowing into v is replaced by 0 (a hook, as in
    `higher`), so the backward of √v at 0 gives 0 instead of NaN. Returns (new_params, new_mu, new_nu).
    """
    c1, c2 = 1.0 - b1**count, 1.0 - b2**count
    new_p, new_mu, new_nu = [], [], []
    for p, g, m, v in zip(params, grads, mu, nu):
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * (g * g)
        if v.requires_grad:
            v.register_hook(_mask_grad_where(v == 0))
        denom = v.sqrt() / math.sqrt(c2) + eps
        new_p.append(p - (lr / c1) * (m / denom))
        new_mu.append(m)
        new_nu.append(v)
    return new_p, new_mu, new_nu


def meta_gradient(model: nn.Module, params: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                  real_x: torch.Tensor, real_y: torch.Tensor, *, prefix: int, window: int, lr: float = 1e-3,
                  b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 1e-8,
                  chunk: int | None = None, adam: str = "optax"):
    """d L(θ_{prefix+window}; real) / d images, and L. The RaT-BPTT meta-step with a given prefix N.

    model: a `ConvNet` (its own parameters are not used; `params` is a name -> tensor dict, e.g. from
    `params_from_jaxdd`). images [N, C, H, W] class-major, labels int64 [N]; real_x [B, C, H, W],
    real_y int64 [B]. Full BPTT: prefix 0, window T; T-BPTT: prefix T − W.

    chunk: None computes the outer loss on the whole real batch and backpropagates it through the
    window in one backward (what the authors do). An integer computes λ = ∇_θ L in chunks of the real
    batch first, then one backward of the window with grad_outputs λ (exact; what jaxdd does with
    Settings.outer_chunk), which bounds the memory of the real batch's activations.
    adam: "optax" (`adam_update`, eps_root inside the root) or "torch" (`torch_adam_update`).
    Returns (grad_images [N, C, H, W], loss: float).
    """
    if adam == "optax":
        def update(p, g, m, v, count):
            return adam_update(p, g, m, v, count, lr=lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    elif adam == "torch":
        def update(p, g, m, v, count):
            return torch_adam_update(p, g, m, v, count, lr=lr, b1=b1, b2=b2, eps=eps)
    else:
        raise ValueError(f"unknown adam {adam!r}: use optax or torch")
    names = list(params)
    p = [params[n].detach() for n in names]
    mu = [torch.zeros_like(t) for t in p]
    nu = [torch.zeros_like(t) for t in p]

    def inner_loss(ps):
        logits = functional_call(model, dict(zip(names, ps)), (images_in,))
        return F.cross_entropy(logits, labels)

    # prefix: plain training, no graph kept
    images_in = images.detach()
    with torch.no_grad():
        for t in range(prefix):
            with torch.enable_grad():
                ps = [q.detach().requires_grad_(True) for q in p]
                grads = torch.autograd.grad(inner_loss(ps), ps)
            p, mu, nu = update(p, grads, mu, nu, t + 1)

    # window: differentiable steps (the graph of every step is kept, as with `higher`)
    images_in = images.detach().requires_grad_(True)
    p = [q.detach().requires_grad_(True) for q in p]
    for t in range(prefix, prefix + window):
        grads = torch.autograd.grad(inner_loss(p), p, create_graph=True)
        p, mu, nu = update(p, grads, mu, nu, t + 1)

    n = real_x.shape[0]
    if chunk is None or chunk >= n:
        logits = functional_call(model, dict(zip(names, p)), (real_x,))
        loss = F.cross_entropy(logits, real_y)
        (g,) = torch.autograd.grad(loss, images_in)
        return g, float(loss.detach())
    if n % chunk:
        raise ValueError(f"real batch {n} is not a multiple of the outer chunk {chunk}")
    p_end = [q.detach().requires_grad_(True) for q in p]
    lam = [torch.zeros_like(q) for q in p_end]
    total = 0.0
    for s in range(0, n, chunk):
        logits = functional_call(model, dict(zip(names, p_end)), (real_x[s:s + chunk],))
        loss_c = F.cross_entropy(logits, real_y[s:s + chunk], reduction="sum")
        for acc, gc in zip(lam, torch.autograd.grad(loss_c, p_end)):
            acc.add_(gc)
        total += float(loss_c.detach())
    lam = [a / n for a in lam]
    (g,) = torch.autograd.grad(p, images_in, grad_outputs=lam)
    return g, total / n


def init_params(image_shape, num_classes: int, *, width: int, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Torch-default initialised parameters of a `ConvNet` (the same U(±1/√fan_in) law as jaxdd's init="torch")."""
    torch.manual_seed(seed)
    model = ConvNet(image_shape, num_classes, width=width, depth=depth)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def num_params(image_shape, num_classes: int, *, width: int, depth: int) -> int:
    h, w, c = image_shape
    n = 0
    for _ in range(depth):
        n += 9 * c * width + width + 2 * width
        c, h, w = width, h // 2, w // 2
    return n + h * w * c * num_classes + num_classes


def max_depth(image_shape) -> int:
    return int(math.floor(math.log2(min(image_shape[:2]))))
