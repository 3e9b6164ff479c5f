"""What the three examples share: their command line, your arrays, a histogram figure."""
from __future__ import annotations

import argparse
import os

import numpy as np


def args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a finished run directory")
    p.add_argument("--checkpoint", default="best", help="best | latest | a step number")
    p.add_argument("--out", default=".", help="where the figure goes")
    return p.parse_args()


def arrays(run, n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """Your own arrays, here: n test images of the run's data (uint8, as a numpy array
    from anywhere would be) and n uniform-noise images (float pixels in [0, 1])."""
    test = run.experiment.splits.test
    n = min(n, len(test))
    images = test.get(np.arange(n))["image"]
    noise = np.random.default_rng(seed).random((n, *run.image_shape), dtype=np.float32)
    return {"test": images, "uniform noise": noise}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an in-distribution image > score of an OOD one), ties counted half."""
    diff = inside[:, None] - outside[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def histogram(scores: dict[str, np.ndarray], name: str, out_dir: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, s in scores.items():
        ax.hist(s, bins=30, alpha=0.6, label=label)
    ax.set_xlabel(name)
    ax.legend()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name.replace('>', 'gt').replace(' ', '_')}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(out: dict[str, dict], scores: list[str], out_dir: str) -> None:
    """Each score's AUROC, test images against uniform noise, and its histogram."""
    for score in scores:
        s = {name: o[score] for name, o in out.items()}
        print(f"  {score}: AUROC test vs uniform noise {auroc(s['test'], s['uniform noise']):.4f}"
              f"  -> {histogram(s, score, out_dir)}")
