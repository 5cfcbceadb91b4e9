"""PyTorch DataLoader reference for `cargo bench -p seg-benches --bench pipeline`.

Same work as the Rust pipeline: decode Cityscapes-format PNGs (2048x1024 leftImg8bit + gtFine
labelIds) with PIL, map label ids to train ids, random scale 0.75-1.25 (bilinear image, nearest
label), random 1024x512 crop (label padded with 255), horizontal flip, ImageNet normalisation,
batches of 8, num_workers = cores. Point it at the fixture the Rust bench keeps when run with
SEG_BENCH_PIPELINE_DIR=DIR:

    SEG_BENCH_PIPELINE_DIR=/tmp/pipe cargo bench -p seg-benches --bench pipeline
    python benches/reference/dataloader_torch.py --root /tmp/pipe
"""
import argparse
import glob
import os
import random
import time

import numpy as np
import torch
from PIL import Image

ID_TO_TRAIN = np.full(256, 255, dtype=np.uint8)
for i, t in zip([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], range(19)):
    ID_TO_TRAIN[i] = t
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class Cityscapes(torch.utils.data.Dataset):
    def __init__(self, root, crop=(1024, 512)):
        self.images = sorted(glob.glob(os.path.join(root, "leftImg8bit/val/*/*_leftImg8bit.png")))
        self.crop = crop

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        path = self.images[i]
        label = path.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        img = Image.open(path).convert("RGB")
        lab = Image.open(label)
        s = random.uniform(0.75, 1.25)
        w, h = img.size
        nw, nh = round(w * s), round(h * s)
        img = img.resize((nw, nh), Image.BILINEAR)
        lab = lab.resize((nw, nh), Image.NEAREST)
        img = np.asarray(img, dtype=np.float32) / 255.0
        lab = ID_TO_TRAIN[np.asarray(lab)]
        cw, ch = self.crop
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=255)
        y = random.randint(0, img.shape[0] - ch)
        x = random.randint(0, img.shape[1] - cw)
        img, lab = img[y:y + ch, x:x + cw], lab[y:y + ch, x:x + cw]
        if random.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        img = (img - MEAN) / STD
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(lab.astype(np.int64))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    a = ap.parse_args()
    ds = Cityscapes(a.root)
    assert len(ds) > 0, f"no images under {a.root}"
    dl = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=a.workers, drop_last=True,
                                     persistent_workers=True)
    it = iter(dl)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(dl)
            return next(it)

    next_batch()  # warm-up (worker start)
    t = time.perf_counter()
    for _ in range(a.batches):
        next_batch()
    dt = time.perf_counter() - t
    print(f"torch DataLoader: {8 * a.batches / dt:.2f} images/s ({dt / a.batches * 1000:.0f} ms per batch of 8, "
          f"{a.workers} workers, torch {torch.__version__})")


if __name__ == "__main__":
    main()
