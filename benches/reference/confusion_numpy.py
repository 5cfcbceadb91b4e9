#!/usr/bin/env python3
"""numpy reference for benches/benches/confusion.rs: confusion-matrix accumulation on
2048x1024 train-id maps of the same structure (16x16 blocks, ~10% ignore, ~70% agreement),
printed in pixels per second.

  official-style: np.bincount(20*gt[valid] + predcol[valid], minlength=380), with predicted
                  255 mapped to the void column 19 and ignored ground truth masked out, which
                  is what ConfusionMatrix::add computes;
  bare bincount:  np.bincount(gt*256 + pred, minlength=65536) with no masking, the fastest
                  numpy formulation (a lower bound on numpy's cost).

Run with any python that has numpy, e.g. target/official-eval-venv/bin/python
(scripts/official-eval-check.sh creates it).
"""
import time

import numpy as np

W, H = 2048, 1024


def maps(seed=42):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 21, size=(H // 16, W // 16)).astype(np.uint8)
    blocks[blocks >= 19] = 255
    gt = np.kron(blocks, np.ones((16, 16), dtype=np.uint8))
    r = rng.integers(0, 10, size=(H, W))
    noise = rng.integers(0, 19, size=(H, W)).astype(np.uint8)
    pred = np.where((r <= 6) & (gt != 255), gt, noise)
    pred[r == 9] = 255
    return gt.ravel(), pred.ravel().astype(np.uint8)


def official_style(gt, pred):
    valid = gt != 255
    predcol = np.where(pred == 255, 19, pred)
    idx = gt[valid].astype(np.int64) * 20 + predcol[valid]
    return np.bincount(idx, minlength=19 * 20).reshape(19, 20)


def bare(gt, pred):
    return np.bincount(gt.astype(np.intp) * 256 + pred, minlength=65536)


def rate(fn, gt, pred, repeats=20):
    fn(gt, pred)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(gt, pred)
        times.append(time.perf_counter() - t0)
    return gt.size / float(np.median(times))


def main():
    gt, pred = maps()
    m = official_style(gt, pred)
    assert m.sum() == (gt != 255).sum()
    print(f"numpy {np.__version__}, {W}x{H} maps, median of 20 runs")
    print(f"official-style masked bincount: {rate(official_style, gt, pred) / 1e6:8.1f} Mpixels/s")
    print(f"bare bincount (no masking):     {rate(bare, gt, pred) / 1e6:8.1f} Mpixels/s")


if __name__ == "__main__":
    main()
