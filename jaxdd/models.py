"""Networks for distillation and evaluation, as Flax NNX modules behind a pure adapter.

Every model is used through `Model.init(key) -> (params, state)` and
`Model.apply(params, state, x, train) -> (logits, state)`, where params and state are plain nested
dicts of arrays (pytrees): that is what the unroll differentiates, vmaps over a population of
networks, and checkpoints. `state` holds batch-norm statistics (empty for the other norms).

Convolutions have two implementations with the same numbers (`CONVS`): ``"xla"``
(`lax.conv_general_dilated`, the right choice on GPU/TPU) and ``"native"``, the same XLA convolution
behind custom VJPs that keep every derivative order a forward-shaped convolution (XLA:CPU runs those
with Eigen; the kernel-gradient convolutions of JAX's own VJP fall to a naive loop inside `scan`
bodies, jax-ml/jax#12868). ``"auto"`` picks ``"native"`` on CPU and ``"xla"`` elsewhere; measurements
in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdd.errors import JaxddError, require

Params = Any
State = Any

NORMS = ("instance", "batch", "none")
MODELS = ("convnet", "convnet_bn", "convnet_nonorm", "resnet18", "mlp")


def resolve_conv_impl(conv: str) -> str:
    """Map ``"auto"`` to the convolution implementation suited to the default backend: "native" on CPU."""
    require(conv == "auto" or conv in CONVS, f"unknown conv implementation '{conv}': use auto, {', '.join(CONVS)}")
    if conv == "auto":
        return "native" if jax.default_backend() == "cpu" else "xla"
    return conv


def _pad_hw(x, padding):
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x


def _conv_xla(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), [(padding, padding)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _flip_io(kernel):
    """The kernel of the input gradient: spatially flipped, input and output channels swapped."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_same(x, kernel, padding):
    """Stride-1 convolution (XLA's) whose derivatives of every order are again `_conv_same` / `_conv_kgrad`."""
    return _conv_xla(x, kernel, 1, padding)


def _conv_same_fwd(x, kernel, padding):
    return _conv_same(x, kernel, padding), (x, kernel)


def _conv_same_bwd(padding, res, dy):
    x, kernel = res
    return _conv_same(dy, _flip_io(kernel), kernel.shape[0] - 1 - padding), _conv_kgrad(x, dy, padding)


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_kgrad(x, dy, padding):
    """Kernel gradient of `_conv_same`: Σ_{n,h,w} xp[n, h+i, w+j, :]ᵀ dy[n, h, w, :].

    Written as a forward-shaped convolution (batch = input channels, features = images, the output
    gradient as the kernel) between explicit transposes: XLA:CPU runs that form with Eigen, where the
    kernel-gradient form of JAX's own VJP (dim_labels f01b_i01o->01bf) falls to a naive loop inside
    `scan` / `while` bodies (the jax-ml/jax#12868 pathology).
    """
    xp = _pad_hw(x, padding)
    out = jax.lax.conv_general_dilated(xp.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), [(0, 0), (0, 0)],
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.transpose(1, 2, 0, 3)


def _conv_kgrad_fwd(x, dy, padding):
    return _conv_kgrad(x, dy, padding), (x, dy)


def _conv_kgrad_bwd(padding, res, g):
    # <kgrad(x, dy), g> is bilinear: its x-gradient is the input gradient of a convolution with kernel g,
    # its dy-gradient the forward convolution of x with g.
    x, dy = res
    return _conv_same(dy, _flip_io(g), g.shape[0] - 1 - padding), _conv_same(x, g, padding)


_conv_kgrad.defvjp(_conv_kgrad_fwd, _conv_kgrad_bwd)


def _conv_native(x, kernel, stride, padding):
    """XLA's convolution; stride 1 (square kernel, padding < kernel) through `_conv_same`, so that every
    derivative order is again a forward-shaped convolution; other strides as plain `lax.conv`."""
    kh, kw = kernel.shape[:2]
    if stride == 1 and kh == kw and padding <= kh - 1:
        return _conv_same(x, kernel, padding)
    return _conv_xla(x, kernel, stride, padding)


#: Convolution implementations by name: fn(x, kernel, stride, padding) -> y (NHWC, HWIO). Tests may add one.
CONVS = {"xla": _conv_xla, "native": _conv_native}


def conv2d(x, kernel, *, stride: int = 1, padding: int = 0, impl: str = "xla"):
    """2-D convolution, NHWC input, HWIO kernel, symmetric zero padding; `impl` a name in CONVS (same numbers)."""
    return CONVS[impl](x, kernel, stride, padding)


def _uniform(key, shape, bound):
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)  # the default float, float64 under x64


class Conv(nnx.Module):
    """k×k convolution with bias; ``init="torch"`` draws weights and bias from U(±1/√fan_in)."""

    def __init__(self, cin, cout, *, kernel=3, stride=1, padding=1, bias=True, init="torch", impl="xla", rngs):
        fan_in = kernel * kernel * cin
        shape = (kernel, kernel, cin, cout)
        if init == "torch":
            w = _uniform(rngs.params(), shape, 1.0 / math.sqrt(fan_in))
            b = _uniform(rngs.params(), (cout,), 1.0 / math.sqrt(fan_in))
        else:
            w = jax.nn.initializers.he_normal()(rngs.params(), shape)
            b = jnp.zeros((cout,))
        self.kernel = nnx.Param(w)
        self.bias = nnx.Param(b) if bias else None
        self.stride, self.padding, self.impl = stride, padding, impl

    def __call__(self, x):
        y = conv2d(x, self.kernel[...], stride=self.stride, padding=self.padding, impl=self.impl)
        return y if self.bias is None else y + self.bias[...]


class Dense(nnx.Module):
    """Linear layer; ``init="torch"`` uses U(±1/√fan_in) for weights and bias."""

    def __init__(self, din, dout, *, init="torch", rngs):
        if init == "torch":
            w = _uniform(rngs.params(), (din, dout), 1.0 / math.sqrt(din))
            b = _uniform(rngs.params(), (dout,), 1.0 / math.sqrt(din))
        else:
            w = jax.nn.initializers.lecun_normal()(rngs.params(), (din, dout))
            b = jnp.zeros((dout,))
        self.kernel, self.bias = nnx.Param(w), nnx.Param(b)

    def __call__(self, x):
        return x @ self.kernel[...] + self.bias[...]


def _instance_norm_parts(x, eps):
    mean = x.mean(axis=(1, 2), keepdims=True)
    xc = x - mean
    r = jax.lax.rsqrt(jnp.square(xc).mean(axis=(1, 2), keepdims=True) + eps)
    return xc * r, r


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def instance_norm(x, scale, shift, eps):
    """Instance norm of NHWC `x` (per image and channel over H, W) with affine scale / shift.

    The forward is the plain formula; the VJP sums the output gradient once per (image, channel) and
    derives the input, scale and shift gradients from those sums (GroupNorm's fused backward), where
    autodiff of the plain formula emits separate full-size reductions and broadcasts. The VJP is
    itself differentiable, as the meta-gradient needs.
    """
    xhat, _ = _instance_norm_parts(x, eps)
    return xhat * scale + shift


def _instance_norm_fwd(x, scale, shift, eps):
    xhat, r = _instance_norm_parts(x, eps)
    return xhat * scale + shift, (xhat, r, scale)


def _instance_norm_bwd(eps, res, g):
    xhat, r, scale = res
    m = xhat.shape[1] * xhat.shape[2]
    a = g.sum(axis=(1, 2), keepdims=True)
    b = (g * xhat).sum(axis=(1, 2), keepdims=True)
    gx = (r * scale) * (g - a / m - xhat * (b / m))
    return gx, b.sum(axis=(0, 1, 2)), a.sum(axis=(0, 1, 2))


instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)


class InstanceNorm(nnx.Module):
    """GroupNorm with one group per channel (the ConvNet's 'instancenorm'), affine, eps 1e-5.

    fused: use `instance_norm` (custom VJP); otherwise autodiff of the same formula.
    """

    def __init__(self, channels, eps=1e-5, fused=False):
        self.scale = nnx.Param(jnp.ones((channels,)))
        self.bias = nnx.Param(jnp.zeros((channels,)))
        self.eps, self.fused = eps, fused

    def __call__(self, x):
        if self.fused:
            return instance_norm(x, self.scale[...], self.bias[...], self.eps)
        mean = x.mean(axis=(1, 2), keepdims=True)
        var = jnp.square(x - mean).mean(axis=(1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class Norm(nnx.Module):
    """One of instance / batch / no normalisation, with a common call signature."""

    def __init__(self, kind, channels, *, fused=False, rngs):
        self.kind = kind
        if kind == "instance":
            self.layer = InstanceNorm(channels, fused=fused)
        elif kind == "batch":
            self.layer = nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)
        else:
            self.layer = None

    def __call__(self, x, train):
        if self.kind == "batch":
            return self.layer(x, use_running_average=not train)
        return x if self.layer is None else self.layer(x)


class ConvNet(nnx.Module):
    """The distillation field's ConvNet: depth × [conv3×3 → norm → ReLU → avgpool 2×2] → linear."""

    def __init__(self, image_shape, num_classes, *, width=128, depth=3, norm="instance", init="torch",
                 impl="xla", fused_norm=False, rngs):
        h, w, c = image_shape
        convs, norms = [], []
        for _ in range(depth):
            require(h >= 2 and w >= 2, f"ConvNet depth {depth} is too deep for {image_shape[0]}×{image_shape[1]} "
                    f"images: use --depth {_max_depth(image_shape)} or fewer")
            convs.append(Conv(c, width, init=init, impl=impl, rngs=rngs))
            norms.append(Norm(norm, width, fused=fused_norm, rngs=rngs))
            c, h, w = width, h // 2, w // 2
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.head = Dense(h * w * c, num_classes, init=init, rngs=rngs)

    def __call__(self, x, train=True):
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.relu(norm(conv(x), train))
            n, h, w, c = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return self.head(x.reshape(x.shape[0], -1))


def _max_depth(image_shape):
    return int(math.floor(math.log2(min(image_shape[:2]))))


DEPTH_RULE = "pool while features keep >= 4x4 px: 32 px -> 3, 16-31 px -> 2, 8-15 px -> 1, 64 px -> 4"
WIDTH_RULE = "ConvNet 128 on images >= 16 px, 32 on smaller ones; ResNet-18 64; MLP 128"


def default_depth(image_shape) -> int:
    """ConvNet depth when none is given: pool while the feature map keeps at least 4×4 pixels, at least 1.

    32×32 -> 3 (the field's ConvNet-3 on CIFAR), 64×64 -> 4 (ConvNet-4 on Tiny-ImageNet), 16-31 px -> 2,
    8-15 px -> 1. Chosen on validation splits of small image sets (docs/architecture.md, "Network depth").
    """
    side, depth = min(int(s) for s in image_shape[:2]), 0
    while side // 2 ** (depth + 1) >= 4:
        depth += 1
    return max(1, depth)


def default_width(name: str, image_shape) -> int:
    """Width when none is given: a ConvNet gets 128 on images of 16 px or more (the field's 320k-parameter
    ConvNet-3 on CIFAR) and 32 on smaller ones (8×8 digits, where 128 only costs time); ResNet-18 64; MLP 128."""
    if name.startswith("convnet"):
        return 128 if min(int(s) for s in image_shape[:2]) >= 16 else 32
    return 64 if name == "resnet18" else 128


def network_defaults(name: str, image_shape, width: int | None = None, depth: int | None = None) -> dict:
    """The one place a network's unset width and depth are decided: ``{"width", "depth"}``, None or 0 replaced
    by :func:`default_width` and :func:`default_depth` (ConvNets; an MLP's depth 2, ResNet-18's None)."""
    width = int(width) if width else default_width(name, image_shape)
    if name.startswith("convnet"):
        depth = int(depth) if depth else default_depth(image_shape)
    elif name == "mlp":
        depth = int(depth) if depth else 2
    else:
        depth = None
    return {"width": width, "depth": depth}


class BasicBlock(nnx.Module):
    def __init__(self, cin, cout, stride, *, norm, init, impl, fused_norm=False, rngs):
        self.conv1 = Conv(cin, cout, stride=stride, bias=False, init=init, impl=impl, rngs=rngs)
        self.norm1 = Norm(norm, cout, fused=fused_norm, rngs=rngs)
        self.conv2 = Conv(cout, cout, bias=False, init=init, impl=impl, rngs=rngs)
        self.norm2 = Norm(norm, cout, fused=fused_norm, rngs=rngs)
        if stride != 1 or cin != cout:
            self.short = Conv(cin, cout, kernel=1, stride=stride, padding=0, bias=False, init=init, impl=impl,
                              rngs=rngs)
            self.short_norm = Norm(norm, cout, fused=fused_norm, rngs=rngs)
        else:
            self.short = None

    def __call__(self, x, train):
        y = jax.nn.relu(self.norm1(self.conv1(x), train))
        y = self.norm2(self.conv2(y), train)
        s = x if self.short is None else self.short_norm(self.short(x), train)
        return jax.nn.relu(y + s)


class ResNet18(nnx.Module):
    """ResNet-18, CIFAR style (3×3 stem, no max-pool), batch norm by default."""

    def __init__(self, image_shape, num_classes, *, width=64, norm="batch", init="torch", impl="xla", fused_norm=False,
                 rngs):
        c = image_shape[-1]
        self.stem = Conv(c, width, bias=False, init=init, impl=impl, rngs=rngs)
        self.stem_norm = Norm(norm, width, fused=fused_norm, rngs=rngs)
        blocks, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, width * mult, stride, norm=norm, init=init, impl=impl,
                                         fused_norm=fused_norm, rngs=rngs))
                cin = width * mult
        self.blocks = nnx.List(blocks)
        self.head = Dense(cin, num_classes, init=init, rngs=rngs)

    def __call__(self, x, train=True):
        x = jax.nn.relu(self.stem_norm(self.stem(x), train))
        for block in self.blocks:
            x = block(x, train)
        return self.head(x.mean(axis=(1, 2)))


class MLP(nnx.Module):
    """Flatten → depth × [linear → ReLU] → linear."""

    def __init__(self, image_shape, num_classes, *, width=128, depth=2, init="torch", rngs):
        dims = [math.prod(image_shape)] + [width] * depth
        self.layers = nnx.List([Dense(a, b, init=init, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.head = Dense(dims[-1], num_classes, init=init, rngs=rngs)

    def __call__(self, x, train=True):
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


@dataclasses.dataclass(frozen=True)
class Model:
    """A network as two pure functions over plain-dict pytrees: init(key) -> (params, state);
    apply(params, state, x, train=True) -> (logits, state)."""

    name: str
    init: Callable[[jax.Array], tuple[Params, State]]
    apply: Callable[..., tuple[jax.Array, State]]
    image_shape: tuple[int, int, int]
    num_classes: int
    num_params: int
    # The same network in plain JAX operations, for forward-mode AD (jax.jvp of jax.grad), which custom-VJP
    # layers (the native convolution, the fused instance norm) do not support; None if this is that network.
    forward_mode: "Model | None" = None

    def jvp_ready(self) -> "Model":
        """This model, or its twin without custom-VJP layers where forward-mode AD is needed."""
        return self.forward_mode or self


def make_model(name: str = "convnet", *, image_shape, num_classes, width: int | None = None,
               depth: int | None = None, norm: str | None = None, init: str = "torch",
               conv: str = "auto", fused_norm: bool | None = None) -> Model:
    """Build a `Model` by name: convnet (norm instance|batch|none), convnet_bn, convnet_nonorm, resnet18, mlp.

    Unset width and depth: :func:`network_defaults`. conv: a name in CONVS or "auto" (`resolve_conv_impl`).
    fused_norm: instance norm through `instance_norm`'s custom VJP (None: with the "native" convolution,
    i.e. the CPU default); same numbers either way.
    """
    require(name in MODELS, f"unknown model '{name}': use one of {', '.join(MODELS)}")
    require(init in ("torch", "flax"), f"unknown init '{init}': use torch or flax")
    image_shape = tuple(int(s) for s in image_shape)
    require(len(image_shape) == 3, f"images must be [H, W, C], got shape {image_shape}")
    impl = resolve_conv_impl(conv)
    fused = impl == "native" if fused_norm is None else bool(fused_norm)
    if name == "convnet_bn":
        name, norm = "convnet", "batch"
    elif name == "convnet_nonorm":
        name, norm = "convnet", "none"
    if name == "convnet":
        norm = norm or "instance"
        require(norm in NORMS, f"unknown norm '{norm}': use one of {', '.join(NORMS)}")
        kwargs = dict(**network_defaults(name, image_shape, width, depth), norm=norm, init=init, impl=impl,
                      fused_norm=fused)
        cls = ConvNet
    elif name == "resnet18":
        norm = norm or "batch"
        require(norm in NORMS, f"unknown norm '{norm}': use one of {', '.join(NORMS)}")
        kwargs = dict(width=network_defaults(name, image_shape, width)["width"], norm=norm, init=init, impl=impl,
                      fused_norm=fused)
        cls = ResNet18
    else:
        kwargs = dict(**network_defaults(name, image_shape, width, depth), init=init)
        cls = MLP

    def build(key):
        return cls(image_shape, num_classes, rngs=nnx.Rngs(params=key), **kwargs)

    template = nnx.eval_shape(lambda: build(jax.random.key(0)))
    graphdef, param_template, rest_template = nnx.split(template, nnx.Param, ...)

    def init_fn(key):
        _, params, rest = nnx.split(build(key), nnx.Param, ...)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    def apply_fn(params, state, x, train=True):
        p = jax.tree.map(lambda v: v, param_template)
        r = jax.tree.map(lambda v: v, rest_template)
        nnx.replace_by_pure_dict(p, params)
        nnx.replace_by_pure_dict(r, state)
        module = nnx.merge(graphdef, p, r, copy=True)
        logits = module(x, train=train)
        return logits, nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.Param)))

    num_params = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.to_pure_dict(param_template)))
    twin = None
    if name != "mlp" and (impl == "native" or fused):  # custom VJPs inside: the plain-JAX twin serves forward-mode AD
        twin = make_model(name, image_shape=image_shape, num_classes=num_classes, width=width, depth=depth,
                          norm=norm, init=init, conv="xla", fused_norm=False)
    return Model(name, init_fn, apply_fn, image_shape, num_classes, int(num_params), twin)


def check_input(model: Model, images) -> None:
    """Raise a one-line JaxddError if `images` cannot be fed to `model`."""
    shape = tuple(images.shape[1:])
    if shape != model.image_shape:
        raise JaxddError(f"images have shape {shape} but the model was built for {model.image_shape}: "
                         f"distil and evaluate with the same --dataset")
