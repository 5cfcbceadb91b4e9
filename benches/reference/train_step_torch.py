"""PyTorch reference for `cargo bench -p seg-benches --bench train_step`: one training step
(forward, masked cross-entropy, backward, SGD with momentum 0.9 and weight decay 5e-4) of
VGG16-FCN8s (fc6 7x7x4096 / fc7 1x1x4096) and the reduced variant (fc6 3x3x1024 / fc7 1x1x1024)
at 1x3x256x512, with the same layer shapes as `crates/seg-fcn/src/vgg.rs`.

    python benches/reference/train_step_torch.py --threads 2
    python benches/reference/train_step_torch.py --device cuda --iters 20
    python benches/reference/train_step_torch.py --device cuda --size 1x512x1024 --size 4x512x1024 --amp bf16

`--size NxHxW` (repeatable; default 1x256x512) sets the batch and crop; `--amp bf16` runs the
forward and loss under `torch.autocast(dtype=torch.bfloat16)` (PyTorch's mixed precision: bf16
convolutions, f32 weights, optimiser and reductions), `--channels-last` stores the model and the
input channels-last. Each variant names itself in the output line (`torch vgg16-fcn8s bf16
4x3x512x1024: ...`); the default line is unchanged (`torch vgg16-fcn8s 1x3x256x512: ...`).

It also times inference (eval mode, forward + argmax) at 1x3x1024x2048 (`--infer`), and prints
the process's peak resident memory (`--peak-rss`, CPU only: one model per process then).
GPU work is synchronised inside the timed region.
"""
import argparse
import contextlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class Fcn8s(nn.Module):
    def __init__(self, fc=4096, k6=7, classes=19):
        super().__init__()
        layers, c = [], 3
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(512, fc, k6, padding=k6 // 2)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, classes, 1)
        self.score_pool4 = nn.Conv2d(512, classes, 1)
        self.score_pool3 = nn.Conv2d(256, classes, 1)
        self.up2 = nn.ConvTranspose2d(classes, classes, 4, 2, 1, bias=False)
        self.up4 = nn.ConvTranspose2d(classes, classes, 4, 2, 1, bias=False)
        self.up8 = nn.ConvTranspose2d(classes, classes, 16, 8, 4, bias=False)

    def forward(self, x):
        pool3 = pool4 = None
        pools = 0
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                pools += 1
                if pools == 3:
                    pool3 = x
                elif pools == 4:
                    pool4 = x
        x = F.max_pool2d(x, 2)
        x = F.relu(self.fc7(F.relu(self.fc6(x))))
        x = self.up2(self.score_fr(x)) + self.score_pool4(pool4)
        x = self.up4(x) + self.score_pool3(pool3)
        return self.up8(x)


MODELS = {"vgg16-fcn8s-reduced": (1024, 3), "vgg16-fcn8s": (4096, 7)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", choices=sorted(MODELS), action="append")
    ap.add_argument("--infer", action="store_true", help="also time inference at 1x3x1024x2048")
    ap.add_argument("--peak-rss", action="store_true", help="print peak resident memory at exit")
    ap.add_argument(
        "--no-tf32", action="store_true", help="FP32-only convolutions (cudnn.allow_tf32 = False; True is the default)"
    )
    ap.add_argument("--size", action="append", help="NxHxW of the training batch (repeatable; default 1x256x512)")
    ap.add_argument("--amp", choices=["bf16"], help="train under torch.autocast with this dtype")
    ap.add_argument("--channels-last", action="store_true", help="model and input in channels-last memory format")
    a = ap.parse_args()
    if a.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    where = f"{a.threads} threads" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    if dev.type == "cuda":
        where += f" (cudnn {torch.backends.cudnn.version()}, conv tf32={torch.backends.cudnn.allow_tf32})"
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    tag = "".join([f" {a.amp}" if a.amp else "", " channels-last" if a.channels_last else ""])
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.amp == "bf16" else contextlib.nullcontext
    sizes = [tuple(int(v) for v in s.split("x")) for s in (a.size or ["1x256x512"])]
    for name in a.model or ["vgg16-fcn8s-reduced", "vgg16-fcn8s"]:
        fc, k = MODELS[name]
        m = Fcn8s(fc, k).to(dev).to(memory_format=fmt)
        opt = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        for n, h, w in sizes:
            x = torch.randn(n, 3, h, w, device=dev).to(memory_format=fmt)
            y = torch.zeros(n, h, w, dtype=torch.long, device=dev)

            def step():
                opt.zero_grad(set_to_none=True)
                with amp():
                    loss = F.cross_entropy(m(x), y, ignore_index=255)
                loss.backward()
                opt.step()
                sync()

            step()
            t = time.perf_counter()
            for _ in range(a.iters):
                step()
            dt = (time.perf_counter() - t) / a.iters
            print(
                f"torch {name}{tag} {n}x3x{h}x{w}: {dt:.4f} s/step ({n / dt:.3f} images/s), {where}, "
                f"torch {torch.__version__}"
            )
            if dev.type == "cuda":
                print(f"torch {name}{tag} {n}x3x{h}x{w} peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB")
                torch.cuda.reset_peak_memory_stats(dev)
        if a.infer:
            m.eval()
            xf = torch.randn(1, 3, 1024, 2048, device=dev).contiguous(memory_format=fmt)

            def infer():
                with torch.no_grad(), amp():
                    ids = m(xf).argmax(1)
                sync()
                return ids

            infer()
            t = time.perf_counter()
            for _ in range(a.iters):
                infer()
            dt = (time.perf_counter() - t) / a.iters
            print(f"torch infer {name}{tag} 1x3x1024x2048: {dt:.4f} s/image ({1 / dt:.3f} images/s), {where}")
    if a.peak_rss:
        import resource

        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
