"""Figures written into every run directory (matplotlib, Agg backend unless a display is asked for)."""
from __future__ import annotations

import os

import matplotlib

if not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NON_METRIC_KEYS = {"lr", "epoch_time_s", "data_time_s", "samples_per_s", "bad_steps"}


def plot_history(history: dict[str, list], path: str, monitor: str, show: bool = False) -> None:
    """Loss curves (train/valid) and every other valid metric vs epoch, one PNG."""
    epochs = range(1, len(history.get("train_loss", [])) + 1)
    metrics = [k for k in history if k.startswith("valid_") and k != "valid_loss" and k not in NON_METRIC_KEYS]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, history.get("train_loss", []), "o-", label="train")
    if "valid_loss" in history:
        axes[0].plot(epochs, history["valid_loss"], "o-", label="valid")
    axes[0].set(title="loss", xlabel="epoch")
    axes[0].legend()
    for k in metrics:
        axes[1].plot(epochs, history[k], "o-", label=k + (" (monitored)" if k == monitor else ""))
    axes[1].set(title="validation metrics", xlabel="epoch")
    if metrics:
        axes[1].legend()
    axes[2].plot(epochs, history.get("lr", []), "o-")
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch", yscale="log" if any(history.get("lr", [])) else "linear")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    if show and matplotlib.get_backend().lower() != "agg":
        plt.show()
    plt.close(fig)


def plot_confusion(matrix, class_names: list[str], path: str, title: str) -> None:
    import numpy as np

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 3, 1.0 * len(class_names) + 2.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    peak = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_figure(fig, path: str, dpi: int = 100) -> None:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def text_samples_figure(samples, title: str):
    """OCR samples: each line image (float (3, H, W) tensor in [0, 1]) with its truth and prediction."""
    fig, axes = plt.subplots(len(samples), 1, figsize=(8, 0.9 * len(samples) + 0.6), squeeze=False)
    for ax, (img, truth, pred) in zip(axes[:, 0], samples):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        same = truth == pred
        ax.set_title(f"truth: {truth}   {'=' if same else '≠'}   pred: {pred}", fontsize=8, loc="left",
                     color="black" if same else "firebrick")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def draw_grounding(image, phrases: list[str], boxes, scores=None, true_boxes=None):
    """PIL image with one colour per phrase: predicted boxes (solid, with the phrase and score) and,
    when given, true boxes (thin). ``boxes[p]`` / ``true_boxes[p]``: lists of xyxy pixel boxes."""
    from PIL import ImageDraw

    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    for p, phrase in enumerate(phrases):
        colour = PALETTE[p % len(PALETTE)]
        for box in (true_boxes[p] if true_boxes is not None else []):
            draw.rectangle([float(v) for v in box], outline=colour, width=1)
        for j, box in enumerate(boxes[p]):
            box = [float(v) for v in box]
            draw.rectangle(box, outline=colour, width=2)
            label = phrase if scores is None else f"{phrase} {float(scores[p][j]):.2f}"
            draw.text((box[0] + 2, max(0.0, box[1] - 11)), label, fill=colour)
    return image


def grounding_samples_figure(samples, title: str):
    """Grid of PIL images already drawn by :func:`draw_grounding`, each titled with its caption."""
    cols = min(4, len(samples))
    rows = (len(samples) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption) in zip(axes.flat, samples):
        ax.imshow(image)
        ax.set_title(caption if len(caption) < 60 else caption[:57] + "...", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
