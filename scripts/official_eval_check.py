#!/usr/bin/env python3
"""Checks `seg-adapt eval` against the official Cityscapes pixel-level evaluator
(cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling) on generated data.

Writes a small dataset in the real Cityscapes layout (fixed seed): three val cities, several
64x48 images and one 2048x1024 image, ground truth with every label id 0..33 (void and
ignored ids included) except `train` (31, absent from the ground truth but predicted) and
`motorcycle` (32, in neither); predictions with every other id 0..33. Runs the official
evaluator through its Python API and `seg-adapt eval` on the same files (label ids, and the
same predictions as train ids), and compares every class IoU and the means to 1e-6. Each
ground-truth image also has its `*_gtFine_instanceIds.png` (instances of every class with
instances, of varied sizes, caravan and trailer ones too, whose label ids the predictions also
hold): the instance-level iIoU per class and category and the category IoU are compared as well.
Exit status 0 when everything agrees, 1 on any disagreement.
Run through scripts/official-eval-check.sh, which prepares the virtual environment.
"""

import argparse
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
from PIL import Image

TOL = 1e-6
CITIES = {"frankfurt": 3, "lindau": 2, "munster": 3}
SMALL = (64, 48)  # width, height
BIG = (2048, 1024)
ABSENT_FROM_GT = 31  # train: predicted somewhere, never in the ground truth -> IoU 0, counts
IN_NEITHER = 32  # motorcycle: TP+FP+FN = 0 -> NaN, left out of the mean
PROTOCOL_16 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
PROTOCOL_13 = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]


def label_ids(rng, w, h, allowed):
    """Blocky label map (8x8 blocks of random ids) plus per-pixel noise."""
    bw, bh = -(-w // 8), -(-h // 8)
    blocks = rng.choice(allowed, size=(bh, bw)).astype(np.uint8)
    img = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))[:h, :w]
    noise = rng.random((h, w)) < 0.1
    img[noise] = rng.choice(allowed, size=int(noise.sum()))
    return img


def generate(root, pred_dir, pred_train_dir, seed=20240613):
    from cityscapesscripts.helpers.labels import id2label

    rng = np.random.default_rng(seed)
    gt_ids = np.array([i for i in range(34) if i not in (ABSENT_FROM_GT, IN_NEITHER)], dtype=np.uint8)
    pred_ids = np.array([i for i in range(34) if i != IN_NEITHER], dtype=np.uint8)
    to_train = np.full(256, 255, dtype=np.uint8)
    for i in range(34):
        t = id2label[i].trainId
        to_train[i] = t if 0 <= t < 19 else 255
    names = []
    for city, n in CITIES.items():
        for k in range(n):
            w, h = BIG if (city == "frankfurt" and k == 0) else SMALL
            stem = f"{city}_{k:06d}_000019"
            names.append(stem)
            gt = label_ids(rng, w, h, gt_ids)
            # Predictions: the ground truth with a third of the pixels replaced at random.
            pred = gt.copy()
            flip = rng.random((h, w)) < 0.33
            pred[flip] = rng.choice(pred_ids, size=int(flip.sum()))
            # Make sure every predicted id occurs at least once.
            pred.flat[: len(pred_ids)] = pred_ids
            for d in (f"{root}/gtFine/val/{city}", f"{root}/leftImg8bit/val/{city}",
                      f"{pred_dir}/{city}", f"{pred_train_dir}/{city}"):
                os.makedirs(d, exist_ok=True)
            Image.fromarray(gt, mode="L").save(f"{root}/gtFine/val/{city}/{stem}_gtFine_labelIds.png")
            # Instances: the ground truth's pixels of classes with instances, grouped into
            # instances by 8x8 blocks (an index 0..5 per block, so that an instance is one or
            # several blocks, of varied sizes); other pixels keep their plain label id.
            bw, bh = -(-w // 8), -(-h // 8)
            k = np.kron(rng.integers(0, 6, size=(bh, bw)), np.ones((8, 8), dtype=np.int64))[:h, :w]
            has_inst = np.array([id2label[i].hasInstances for i in range(34)])
            inst = np.where(has_inst[gt], gt.astype(np.int64) * 1000 + k, gt).astype(np.uint16)
            Image.fromarray(inst).save(f"{root}/gtFine/val/{city}/{stem}_gtFine_instanceIds.png")
            yy, xx = np.mgrid[0:h, 0:w]
            rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                            np.full_like(xx, 128)], axis=-1).astype(np.uint8)
            Image.fromarray(rgb, mode="RGB").save(f"{root}/leftImg8bit/val/{city}/{stem}_leftImg8bit.png")
            Image.fromarray(pred, mode="L").save(f"{pred_dir}/{city}/{stem}_pred.png")
            Image.fromarray(to_train[pred], mode="L").save(f"{pred_train_dir}/{city}/{stem}_trainIds.png")
    return names


def official(root, pred_dir):
    """The official evaluator via its Python API: per-class IoU by label name, and the mean."""
    if not hasattr(np, "in1d"):  # removed in numpy 2.4; the nIoU path uses it
        np.in1d = lambda a, b, **kw: np.isin(a, b, **kw).ravel()
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev

    ev.args.evalInstLevelScore = True
    ev.args.JSONOutput = False
    ev.args.quiet = True
    ev.args.colorized = False
    ev.args.predictionPath = pred_dir
    ev.args.predictionWalk = None
    gts = sorted(glob.glob(os.path.join(root, "gtFine", "val", "*", "*_gtFine_labelIds.png")))
    preds = [ev.getPrediction(ev.args, g) for g in gts]
    result = ev.evaluateImgLists(preds, gts, ev.args)
    return result, len(gts)


def ours(binary, root, pred_dir, out, fmt, protocol):
    cmd = [binary, "eval", "--dataset", "cityscapes", "--root", root, "--split", "val",
           "--pred", pred_dir, "--pred-format", fmt, "--protocol", protocol, "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"official-eval-check: `{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def close(a, b):
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and not math.isnan(b) and abs(a - b) <= TOL


def fmt(v):
    return "  NaN   " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="path of the seg-adapt binary")
    ap.add_argument("--work", required=True, help="empty scratch folder")
    a = ap.parse_args()
    root = os.path.join(a.work, "cityscapes")
    pred_dir = os.path.join(a.work, "pred_labelids")
    pred_train_dir = os.path.join(a.work, "pred_trainids")
    names = generate(root, pred_dir, pred_train_dir)

    from cityscapesscripts.helpers.labels import trainId2label

    result, n = official(root, pred_dir)
    scores, mean = result["classScores"], result["averageScoreClasses"]
    assert n == len(names), (n, len(names))
    class_names = [trainId2label[t].name for t in range(19)]
    off = [scores[c] for c in class_names]
    off_mean = {
        "19": mean,
        "16": float(np.nanmean([off[t] for t in PROTOCOL_16])),
        "13": float(np.nanmean([off[t] for t in PROTOCOL_13])),
    }

    failures = []
    runs = [("labelids", "19"), ("trainids", "19"), ("labelids", "16"), ("labelids", "13")]
    reports = {}
    for fmt_, proto in runs:
        src = pred_dir if fmt_ == "labelids" else pred_train_dir
        rep = ours(a.bin, root, src, os.path.join(a.work, f"out_{fmt_}_{proto}"), fmt_, proto)
        reports[(fmt_, proto)] = rep
        if rep["images"] != n:
            failures.append(f"{fmt_}/{proto}: {rep['images']} images, official {n}")
        for name, o in zip(class_names, off):
            v = rep["class_iou_all"].get(name, "missing")
            if v == "missing" or not close(o, v):
                failures.append(f"{fmt_}/{proto} {name}: ours {v}, official {o}")
        if not close(off_mean[proto], rep["miou"]):
            failures.append(f"{fmt_}/{proto} mIoU: ours {rep['miou']}, official {off_mean[proto]}")

    # Instance-level and category scores. Train-id predictions cannot hold caravan or trailer,
    # which the official vehicle category masks count: that one score is compared for label ids.
    inst_names = [c for c in class_names if c in result["classInstScores"] and not math.isnan(result["classInstScores"][c])]
    for (fmt_, proto), rep in reports.items():
        protocol_ids = {"19": range(19), "16": PROTOCOL_16, "13": PROTOCOL_13}[proto]
        mine = [class_names[t] for t in protocol_ids if class_names[t] in rep["class_iiou"]]
        for name in mine:
            if not close(result["classInstScores"][name], rep["class_iiou"][name]):
                failures.append(f"{fmt_}/{proto} iIoU {name}: ours {rep['class_iiou'][name]}, official {result['classInstScores'][name]}")
        want = float(np.nanmean([result["classInstScores"][c] for c in mine])) if mine else None
        if not close(want, rep["mean_iiou"]):
            failures.append(f"{fmt_}/{proto} mean iIoU: ours {rep['mean_iiou']}, official {want}")
        for cat, o in result["categoryScores"].items():
            if cat == "void":
                continue
            if not close(o, rep["category_iou"].get(cat)):
                failures.append(f"{fmt_}/{proto} category IoU {cat}: ours {rep['category_iou'].get(cat)}, official {o}")
        if not close(result["averageScoreCategories"], rep["mean_category_iou"]):
            failures.append(f"{fmt_}/{proto} mean category IoU: ours {rep['mean_category_iou']}, official {result['averageScoreCategories']}")
        for cat in ("human", "vehicle"):
            if fmt_ == "trainids" and cat == "vehicle":
                continue
            o = result["categoryInstScores"][cat]
            if not close(o, rep["category_iiou"].get(cat)):
                failures.append(f"{fmt_}/{proto} category iIoU {cat}: ours {rep['category_iiou'].get(cat)}, official {o}")
        if fmt_ == "labelids" and not close(result["averageScoreInstCategories"], rep["mean_category_iiou"]):
            failures.append(f"{fmt_}/{proto} mean category iIoU: ours {rep['mean_category_iiou']}, official {result['averageScoreInstCategories']}")

    main_rep = reports[("labelids", "19")]
    print(f"{'class':<14} {'official':>9} {'seg-adapt':>9}")
    for name, o in zip(class_names, off):
        v = main_rep["class_iou_all"].get(name)
        print(f"{name:<14} {fmt(o):>9} {fmt(v):>9}{'' if close(o, v) else '  <-- differs'}")
    for proto in ("19", "16", "13"):
        key = ("labelids", proto)
        print(f"{'mIoU ' + proto:<14} {fmt(off_mean[proto]):>9} {fmt(reports[key]['miou']):>9}")
    print(f"{'class iIoU':<14} {'official':>9} {'seg-adapt':>9}")
    for name in inst_names:
        o, v = result["classInstScores"][name], main_rep["class_iiou"].get(name)
        print(f"{name:<14} {fmt(o):>9} {fmt(v):>9}{'' if close(o, v) else '  <-- differs'}")
    print(f"{'mean iIoU':<14} {fmt(result['averageScoreInstClasses']):>9} {fmt(main_rep['mean_iiou']):>9}")
    for cat in ("flat", "construction", "object", "nature", "sky", "human", "vehicle"):
        o, v = result["categoryScores"][cat], main_rep["category_iou"].get(cat)
        print(f"{'cat ' + cat:<14} {fmt(o):>9} {fmt(v):>9}{'' if close(o, v) else '  <-- differs'}")
    for cat in ("human", "vehicle"):
        o, v = result["categoryInstScores"][cat], main_rep["category_iiou"].get(cat)
        print(f"{'cat iIoU ' + cat:<14} {fmt(o):>9} {fmt(v):>9}{'' if close(o, v) else '  <-- differs'}")
    if not close(result["averageScoreInstClasses"], main_rep["mean_iiou"]):
        failures.append(f"labelids/19 mean iIoU: ours {main_rep['mean_iiou']}, official {result['averageScoreInstClasses']}")
    # The generated data must exercise the rules it is meant to check.
    if not (off[16] == 0.0 and math.isnan(off[17])):
        failures.append(f"generator: expected train IoU 0 and motorcycle NaN, got {off[16]}, {off[17]}")
    print(f"{len(names)} images ({BIG[0]}x{BIG[1]} and {SMALL[0]}x{SMALL[1]}), {len(runs)} seg-adapt runs, tolerance {TOL}")
    if failures:
        print("official-eval-check: DISAGREEMENT", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print("official-eval-check: seg-adapt eval agrees with the official evaluator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
