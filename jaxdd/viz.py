"""Pictures of distilled sets: an image grid (one row per class) and learning curves."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from jaxdd.errors import warn


def image_grid(images, labels, class_names, path, *, preprocessing=None, max_per_class: int = 10,
               title: str | None = None) -> None:
    """Save a PNG grid of `images` (class-major), one row per class, un-whitened with `preprocessing`."""
    with _missing_glyphs_folded(path):
        fig = _grid_figure(images, labels, class_names, preprocessing, max_per_class, title)  # selects Agg
        import matplotlib.pyplot as plt

        fig.savefig(path, dpi=80)
        plt.close(fig)


def grid_pixels(images, labels, class_names, *, preprocessing=None, max_per_class: int = 10,
                title: str | None = None) -> np.ndarray:
    """The same grid as `image_grid`, as uint8 RGB pixels [H, W, 3] (for TensorBoard and W&B)."""
    with _missing_glyphs_folded("the logged image grid"):
        fig = _grid_figure(images, labels, class_names, preprocessing, max_per_class, title)  # selects Agg
        import matplotlib.pyplot as plt

        fig.set_dpi(80)
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
    return pixels


@contextlib.contextmanager
def _missing_glyphs_folded(where):
    """matplotlib's 'Glyph N missing from font(s)' warnings (one per character, per layout and per save, for
    class names in scripts its default font lacks) become one jaxdd warning naming the characters."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message="Glyph .* missing from font")
        yield
    missing = []
    for w in caught:
        text = str(w.message)
        if text.startswith("Glyph ") and "missing from font" in text:
            char = chr(int(text.split()[1]))
            if char not in missing:
                missing.append(char)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        warn(f"the plot font has no glyph for {' '.join(missing)} (class names): they show as boxes in {where}")


def _grid_figure(images, labels, class_names, preprocessing, max_per_class, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    pixels = preprocessing.inverse(images) if preprocessing is not None else images
    pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    n_cls = len(class_names)
    cols = max(1, min(max_per_class, max(int((labels == c).sum()) for c in range(n_cls))))
    fig, axes = plt.subplots(n_cls, cols, figsize=(cols * 1.0 + 1.2, n_cls * 1.0 + 0.4), squeeze=False)
    for c in range(n_cls):
        rows = np.flatnonzero(labels == c)[:cols]
        for j in range(cols):
            ax = axes[c, j]
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(rows):
                img = pixels[rows[j]]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(str(class_names[c]), rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def moving_average_span(n: int) -> int:
    """The moving average's span for a series of n steps: n/20, at least 1."""
    return max(1, n // 20)


def moving_average(values, span: int) -> np.ndarray:
    """Trailing means over `span` values (len(values) - span + 1 of them)."""
    values = np.asarray(values, np.float64)
    return np.convolve(values, np.ones(span) / span, mode="valid")


def learning_curve(metrics: list[dict], path, *, keys=("loss", "accuracy"), smooth=("loss", "accuracy")) -> None:
    """Save a PNG with one panel per metric in `keys` (those present in the rows) against the outer step; the
    series in `smooth` get a moving average over the raw values (per-step losses are noise without it);
    val_accuracy (evaluation during training, --eval-every) is drawn at the steps it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in m for m in metrics)]
    if not metrics or not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        rows = [m for m in metrics if k in m]
        steps, values = np.array([m["step"] for m in rows]), np.array([m[k] for m in rows], np.float64)
        span = moving_average_span(len(rows)) if k in smooth else 1
        if span > 1:  # the raw series faint, its trailing moving average over `span` steps on top
            ax.plot(steps, values, alpha=0.3, linewidth=0.8, color="C0")
            ax.plot(steps[span - 1:], moving_average(values, span), color="C0", label=f"mean of {span}")
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, values, marker="." if len(rows) < 30 or k == "val_accuracy" else None)
        ax.set_xlabel("meta-step"), ax.set_title("validation accuracy" if k == "val_accuracy" else k, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def accuracy_by_size(table: list[dict], path) -> None:
    """Save a PNG of test accuracy against images per class: one line per column ending in '_mean'
    (e.g. distilled_mean, random_real_mean), error bars from the matching '_std'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ipc = [row["ipc"] for row in table]
    for key in [k for k in table[0] if k.endswith("_mean")]:
        name = key[: -len("_mean")]
        ax.errorbar(ipc, [100 * r[key] for r in table], yerr=[100 * r.get(name + "_std", 0) for r in table],
                    marker="o", capsize=3, label=name.replace("_", " "))
    ax.set_xlabel("images per class"), ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
