"""PyTorch reference for `cargo bench -p seg-benches --bench ssd_step`: one training step of
torchvision's `ssd300_vgg16` (random initial weights, two classes: background and car) on 8
images of 3x300x300 with two car boxes each: forward with targets (torchvision's transform,
anchor matching and MultiBox loss: softmax cross-entropy with 3:1 hard-negative mining plus
smooth L1, divided by the matched count), backward, SGD with momentum 0.9 and weight decay 5e-4.

    python benches/reference/ssd_step_torch.py --threads 2

Prints `torch ssd300 8x3x300x300: <seconds per step>` (the median of --iters steps after one
warm-up step). GPU work is synchronised inside the timed region.
"""
import argparse
import statistics
import time

import torch
from torchvision.models.detection import ssd300_vgg16


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=2).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    images = [torch.randn(3, 300, 300, device=dev) for _ in range(8)]
    boxes = torch.tensor([[30.0, 40.0, 120.0, 150.0], [150.0, 60.0, 280.0, 200.0]], device=dev)
    targets = [{"boxes": boxes.clone(), "labels": torch.tensor([1, 1], device=dev)} for _ in range(8)]

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    step()
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(f"torch ssd300 8x3x300x300: {statistics.median(times):.4f} s/step ({a.iters} steps, {a.threads} threads)")


if __name__ == "__main__":
    main()
