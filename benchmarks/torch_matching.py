"""A PyTorch reference of jaxdd's trajectory-matching (MTT) meta-step, written like the authors' code.

GeorgeCazenavette/mtt-distillation (distill.py) keeps the student network's parameters as one flat
vector (their `ReparamModule`), and for each of the N synthetic steps computes
``grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)`` and appends
``student_params[-1] - syn_lr * grad``; the loss is ‖θ_N − θ*‖² / ‖θ_0 − θ*‖² and one ``backward``
gives the gradients of the synthetic images and of the learnable `syn_lr`. This module does the same
with the functional ConvNet of torch_reference.py (`torch.func.functional_call` on views of the flat
vector, which is what `ReparamModule` does). Each inner batch is the whole synthetic set (the
authors' default batch_syn for IPC ≤ 10 on CIFAR-10), without augmentation.

Only torch and numpy are imported (and torch_reference), so a benchmark child pays no JAX import.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class Flat:
    """Names and shapes of a module's parameters, to read a flat vector as a parameter dict (ReparamModule)."""

    def __init__(self, params: Mapping[str, torch.Tensor]):
        self.names = list(params)
        self.shapes = [tuple(params[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def flatten(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, s, t in zip(self.names, self.shapes, torch.split(flat, self.sizes))}


def matching_meta_gradient(model: nn.Module, flat: Flat, start: torch.Tensor, target: torch.Tensor,
                           images: torch.Tensor, labels: torch.Tensor, syn_lr: torch.Tensor, steps: int):
    """(d L / d images, d L / d syn_lr, L) of N = `steps` differentiable SGD steps from `start`.

    start, target: flat parameter vectors (τ_t, τ_{t+M}); images [n, C, H, W]; labels int64 [n];
    syn_lr: a scalar tensor. The graph of every step is kept (create_graph=True), as in the authors' code.
    """
    images = images.detach().requires_grad_(True)
    syn_lr = syn_lr.detach().requires_grad_(True)
    student = [start.detach().clone().requires_grad_(True)]
    for _ in range(steps):
        out = functional_call(model, flat.unflatten(student[-1]), (images,))
        ce = F.cross_entropy(out, labels)
        (grad,) = torch.autograd.grad(ce, student[-1], create_graph=True)
        student.append(student[-1] - syn_lr * grad)
    param_loss = F.mse_loss(student[-1], target, reduction="sum")
    param_dist = F.mse_loss(start, target, reduction="sum")
    loss = param_loss / param_dist
    g_images, g_lr = torch.autograd.grad(loss, (images, syn_lr))
    return g_images, g_lr, float(loss.detach())
