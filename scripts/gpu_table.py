"""The tables of docs/perf.md and docs/real-data.md from one `scripts/gpu-check.sh` run.

    python3 scripts/gpu_table.py OUT/summary.txt

Reads the summary the GPU script writes (one section per step, headed `NAME: rc=...`) and
prints, as markdown: the CUDA tests' results; the VGG16-FCN8s training steps at each size, ours
against PyTorch eager, in f32 (both sides' defaults) and in bf16 (ours against autocast, and
against autocast channels-last), with peak GPU memory; the steps with FP32-only convolutions;
full-resolution inference in f32 and bf16; and the presets' table. Ratio = PyTorch's time /
ours (above 1: ours is faster). Times are criterion's central estimate for ours and the mean of
the timed iterations for PyTorch (from its images/s, which carries more digits than its
s/step). A figure missing from the summary (a step that failed, timed out or was skipped) is
left out, and the line says so.
"""
import re
import sys
from collections import defaultdict

UNITS = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3, "ns": 1e-6}
MODELS = ["vgg16-fcn8s-reduced", "vgg16-fcn8s"]
SIZES = ["1x3x256x512", "1x3x512x1024", "4x3x512x1024"]


def sections(lines):
    """{step name: (rc, [lines], header line)}, in the order of the summary."""
    out, name = {}, None
    head = re.compile(r"^([A-Za-z0-9_.-]+): (rc=(\d+)|skipped)")
    for line in lines:
        m = head.match(line)
        if m and not line.startswith(("torch ", "train_step/", "infer/", "peak ", "cuDNN ")):
            name = m.group(1)
            out[name] = (m.group(3) if m.group(3) is not None else "skipped", [], line.strip())
        elif name is not None:
            out[name][1].append(line.rstrip("\n"))
    return out


def criterion(lines):
    """{bench name: ms} (the first `time:` line after each name) and {bench name: MiB}."""
    times, peaks, name = {}, {}, None
    for line in lines:
        s = line.strip()
        if re.match(r"^(train_step|infer)/\S+$", s):
            name = s
            continue
        m = re.match(r"^time:\s+\[\S+ \S+ ([0-9.]+) (\S+) \S+ \S+\]", s)
        if m and name and name not in times:
            times[name] = float(m.group(1)) * UNITS[m.group(2)]
        m = re.match(r"^peak GPU memory (\S+): ([0-9.]+) MiB", s)
        if m:
            peaks[m.group(1)] = float(m.group(2))
    return times, peaks


def torch(lines):
    """{(kind, model, tag, size): ms} and {(model, tag, size): MiB}; kind is step or infer."""
    times, peaks = {}, {}
    step = re.compile(r"^torch (infer )?(\S+)((?: bf16)?(?: channels-last)?) (\d+x3x\d+x\d+): [0-9.]+ s/(?:step|image) \(([0-9.]+) images/s\)")
    peak = re.compile(r"^torch (\S+)((?: bf16)?(?: channels-last)?) (\d+x3x\d+x\d+) peak GPU memory: ([0-9.]+) MiB")
    for line in lines:
        m = step.match(line)
        if m:
            n = int(m.group(4).split("x")[0])
            kind = "infer" if m.group(1) else "step"
            times[(kind, m.group(2), m.group(3).strip(), m.group(4))] = n / float(m.group(5)) * 1e3
            continue
        m = peak.match(line)
        if m:
            peaks[(m.group(1), m.group(2).strip(), m.group(3))] = float(m.group(4))
    return times, peaks


def fmt(v, unit="ms"):
    return "—" if v is None else f"{v:.2f} {unit}"


def pair(ours, theirs):
    return "—" if ours is None or theirs is None else f"{ours:.0f} / {theirs:.0f}"


def ratio(theirs, ours):
    return "—" if theirs is None or ours is None else f"**{theirs / ours:.2f}**"


def main(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    secs = sections(lines)
    print("\n".join(f"<!-- {l} -->" for l in lines[:4]))
    missing = []

    def sec(name):
        if name not in secs:
            missing.append(f"{name} (not run)")
            return []
        rc, lines, _ = secs[name]
        if rc != "0":
            missing.append(f"{name} (rc={rc})")
        return lines

    print("\n### CUDA tests\n")
    for name in ["test-seg-nn", "test-seg-adapt", "test-seg-nn-no-cudnn"]:
        lines = sec(name)
        result = [l for l in lines if l.startswith("test result")]
        failed = [l for l in lines if l.startswith("test ") and " ... " in l and not l.endswith(" ok")]
        print(f"- {name}: {result[-1] if result else 'no result'}" + (f"; {len(failed)} not ok: " + ", ".join(failed) if failed else ""))

    ours, ours_peak = criterion(sec("bench-ours-sizes"))
    t = defaultdict(dict)
    tp = {}
    for label, name in [("f32", "bench-torch-f32"), ("bf16", "bench-torch-bf16"), ("bf16-cl", "bench-torch-bf16-cl")]:
        times, peaks = torch(sec(name))
        t[label] = times
        tp[label] = peaks
    print("\n### Training step, VGG16-FCN8s (PyTorch eager on the same card; ratio = PyTorch / ours)\n")
    print("| model, batch | ours f32 | PyTorch f32 | ratio | ours bf16 | PyTorch autocast | ratio | PyTorch autocast channels-last | ratio | peak MiB f32, ours / PyTorch | peak MiB bf16, ours / PyTorch autocast |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in MODELS:
        for size in SIZES:
            o32 = ours.get(f"train_step/{model}/{size}")
            o16 = ours.get(f"train_step/{model}/bf16/{size}")
            p32 = t["f32"].get(("step", model, "", size))
            p16 = t["bf16"].get(("step", model, "bf16", size))
            pcl = t["bf16-cl"].get(("step", model, "bf16 channels-last", size))
            mem = [
                pair(ours_peak.get(f"train_step/{model}/{size}"), tp["f32"].get((model, "", size))),
                pair(ours_peak.get(f"train_step/{model}/bf16/{size}"), tp["bf16"].get((model, "bf16", size))),
            ]
            print(
                f"| {model} {size} | {fmt(o32)} | {fmt(p32)} | {ratio(p32, o32)} | {fmt(o16)} | {fmt(p16)} | "
                f"{ratio(p16, o16)} | {fmt(pcl)} | {ratio(pcl, o16)} | {mem[0]} | {mem[1]} |"
            )

    print("\n### FP32-only convolutions (SEG_CUDA_TF32=0 against --no-tf32), 1x3x256x512\n")
    o, _ = criterion(sec("bench-ours-fp32"))
    p, _ = torch(sec("bench-torch-fp32"))
    print("| model | ours | PyTorch | ratio |\n|---|---:|---:|---:|")
    for model in MODELS:
        a, b = o.get(f"train_step/{model}/1x3x256x512"), p.get(("step", model, "", "1x3x256x512"))
        print(f"| {model} | {fmt(a)} | {fmt(b)} | {ratio(b, a)} |")

    print("\n### Inference, VGG16-FCN8s 1x3x1024x2048 (forward + argmax)\n")
    o, _ = criterion(sec("infer-ours"))
    p32, _ = torch(sec("infer-torch"))
    p16, _ = torch(sec("infer-torch-bf16"))
    print("| precision | ours | PyTorch | ratio |\n|---|---:|---:|---:|")
    a, b = o.get("infer/vgg16-fcn8s/1x3x1024x2048"), p32.get(("infer", "vgg16-fcn8s", "", "1x3x1024x2048"))
    print(f"| f32 | {fmt(a)} | {fmt(b)} | {ratio(b, a)} |")
    a, b = o.get("infer/vgg16-fcn8s/bf16/1x3x1024x2048"), p16.get(("infer", "vgg16-fcn8s", "bf16", "1x3x1024x2048"))
    print(f"| bf16 (autocast) | {fmt(a)} | {fmt(b)} | {ratio(b, a)} |")

    left = [l for l in sec("bench-ours-sizes") if l.startswith("cuDNN geometries")]
    if left:
        print(f"\n{left[-1]}")

    rows = [l for l in sec("presets") if l.startswith("|")]
    if rows:
        print("\n### Presets (20 timed steps each)\n")
        print("\n".join(rows))
    for name in ["demo-quick", "demo"]:
        if name in secs:
            print(f"\n- {secs[name][2]}")
        else:
            missing.append(f"{name} (not run)")
    if missing:
        print("\nMissing or failed: " + ", ".join(missing))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    main(sys.argv[1])
