#!/usr/bin/env python3
"""Checks `seg-adapt eval --task detection` against py-faster-rcnn's voc_eval logic and pycocotools.

Writes a small dataset in the real Cityscapes layout (fixed seed): twelve val images in three
cities (96x64, 128x96 and one 2048x1024), 16-bit instanceIds with rectangles, blobs, L-shapes,
rings, an instance split in two parts and later instances occluding earlier ones, plus caravan
and trailer instances (29xxx, 30xxx: not boxes) and bare label ids (7, 24, 26: not boxes).
Ground-truth boxes follow Detectron's Cityscapes converter, computed here with OpenCV as it
does: `cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE)` per instance, an instance with an
outer contour of at most 4 coordinates left out (built in: a car with a stray pixel, left out;
a ring car with a one-pixel island in its hole, kept; random instances of scattered pixels), the
box the contours' extent.
Detections are jittered copies of the ground-truth boxes plus false positives, with built-in
cases: `train` only predicted (-> null), `motorcycle` never predicted (-> 0), an image with GT
but no detections and one with detections but no GT, a duplicate between two overlapping cars
(voc_eval: FP, since its max-IoU box is taken; COCO: TP on the other box), a truck at IoU exactly
0.5 (voc_eval needs > 0.5, COCO >= 0.5), buses at IoU 0.4995/0.5005, ten buses so that recall
hits 0.3 exactly (voc07 uses np.arange(0, 1.1, 0.1), whose 0.3 is 0.30000000000000004), and
116 person detections in one image (COCO keeps the top 100 per image and class).
References: voc_eval re-implemented here (use_07_metric True -> "voc07", False -> "all_point";
+1 pixel boxes) and pycocotools COCOeval (bbox, AP at IoU 0.5, area all, maxDets 100, boxes as
[x, y, x2 - x + 1, y2 - y + 1]). Compares every class's three APs and the image count to 1e-6.
Exit status 0 when everything agrees, 1 on any disagreement. `--self-test` checks the
references on hand-computed cases and the comparison path without the binary.
Run through scripts/detection-eval-check.sh, which prepares the virtual environment.
"""

import argparse
import contextlib
import glob
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
from PIL import Image

TOL = 1e-6
LABELS = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train",
          32: "motorcycle", 33: "bicycle"}
IDS = {name: i for i, name in LABELS.items()}
CLASSES = list(LABELS.values())
FLAVOURS = ("voc07", "all_point", "coco")
BIG = (2048, 1024)
# (city, (width, height)); the sequence number is the index within the city.
IMAGES = [("frankfurt", (128, 96)), ("frankfurt", (96, 64)), ("frankfurt", BIG),
          ("frankfurt", (128, 96)), ("frankfurt", (96, 64)), ("lindau", (128, 96)),
          ("lindau", (96, 64)), ("lindau", (96, 64)), ("munster", (128, 96)),
          ("munster", (96, 64)), ("munster", (128, 96)), ("munster", (96, 64))]
NO_GT, NO_DETS, BIG_IDX = 7, 11, 2
STRAY = set()  # (stem, value) of the built-in instances the converter leaves out
TIGHT = {}  # "boxes": how many instances the tight-box rule would keep
BUSES = {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 1, 8: 1, 9: 1, 10: 1}  # image -> bus count (10)
RANDOM_CLASSES = ["person", "rider", "car", "truck", "bicycle"]
BACKGROUND = [0, 1, 7, 8, 11, 17, 21, 23, 24, 26]  # bare label ids, never boxes


def paint(img, v, box, shape, rng=None):
    x1, y1, x2, y2 = box
    sub = img[y1:y2 + 1, x1:x2 + 1]
    h, w = sub.shape
    yy, xx = np.mgrid[0:h, 0:w]
    m = {
        "rect": np.ones((h, w), bool),
        "blob": ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1,
        "L": (xx < max(w // 3, 1)) | (yy >= h - max(h // 3, 1)),
        "ring": (xx < 2) | (xx >= w - 2) | (yy < 2) | (yy >= h - 2),
        "split": ((xx < w // 3) & (yy < h // 2)) | ((xx >= w - w // 3) & (yy >= h // 2)),
        "stray": ((xx < w // 2) & (yy < h // 2)) | ((xx == w - 1) & (yy == h - 1)),
        "island": (xx < 2) | (xx >= w - 2) | (yy < 2) | (yy >= h - 2) | ((xx == w // 2) & (yy == h // 2)),
        # Scattered pixels, thin walls and pockets: where the contour rule is hardest to get right.
        "noise": (rng.random((h, w)) < 0.45) if shape == "noise" else None,
    }[shape]
    sub[m] = v


def hits(box, boxes, margin=2):
    return any(box[0] <= b[2] + margin and b[0] <= box[2] + margin and box[1] <= b[3] + margin
               and b[1] <= box[3] + margin for b in boxes)


def gt_boxes(path, labels=LABELS, detectron=True):
    """[(value, class, [x1, y1, x2, y2])] of an instanceIds PNG, in value order: Detectron's
    converter (convert_cityscapes_to_coco.py), or with `detectron=False` the tight box of every
    instance's pixels."""
    a = np.array(Image.open(path)).astype(np.int64)
    out = []
    for v in np.unique(a):
        if v >= 1000 and v // 1000 in labels:
            if detectron:
                mask = (a == v).astype(np.uint8)
                contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
                polys = [c.reshape(-1).tolist() for c in contours]
                if min(len(p) for p in polys) <= 4:  # "Warning: invalid contours."
                    continue
                xs = [x for p in polys for x in p[0::2]]
                ys = [y for p in polys for y in p[1::2]]
            else:
                ys, xs = np.nonzero(a == v)
            out.append((int(v), labels[v // 1000], [int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))]))
    return out


def generate(root, seed=20240614):
    """Writes the dataset; returns (stems, gt {stem: [(value, class, box)]}, detections)."""
    rng = np.random.default_rng(seed)
    stems, sizes, special, plan, per_city = [], {}, set(), {}, {}
    for idx, (city, (w, h)) in enumerate(IMAGES):
        seq = per_city[city] = per_city.get(city, -1) + 1
        stem = f"{city}_{seq:06d}_000019"
        stems.append(stem)
        sizes[stem] = w, h
        bw, bh = -(-w // 8), -(-h // 8)
        img = np.kron(rng.choice(BACKGROUND, size=(bh, bw)), np.ones((8, 8), np.int64))[:h, :w]
        nxt = {}

        def value(label):
            nxt[label] = nxt.get(label, -1) + 1
            return label * 1000 + nxt[label]

        # Built-in cases: (class, box, shape), painted last, kept clear of random instances.
        fixed = []
        if idx == 0:  # car ring G1 with car G2 occluding part of it; their boxes overlap (IoU 0.68)
            fixed += [("car", [10, 10, 49, 49], "ring"), ("car", [14, 14, 53, 53], "rect")]
        if idx == 1:  # truck for the IoU == 0.5 case
            fixed.append(("truck", [60, 10, 69, 19], "rect"))
        if idx == BIG_IDX:
            fixed += [("person", [100 + 300 * k, 100 + 50 * k, 160 + 300 * k, 260 + 50 * k], "blob")
                      for k in range(6)]
        if idx == 3:
            fixed.append(("bicycle", [40, 20, 79, 45], "split"))
        if idx == 5:  # left out by the converter / kept by it
            fixed += [("car", [90, 10, 109, 29], "stray"), ("car", [90, 40, 109, 59], "island")]
        if idx in (4, NO_DETS):
            fixed.append(("motorcycle", [50, 5, 75, 25], "L"))
        for k in range(BUSES.get(idx, 0)):
            bw_, bh_ = int(rng.integers(16, 25)), int(rng.integers(10, 17))
            fixed.append(("bus", [2 + 40 * k, h - 3 - bh_ + 1, 2 + 40 * k + bw_ - 1, h - 3], "rect"))
        reserved = [b for _, b, _ in fixed]
        scale = max(1, w // 128)
        n_random = 0 if idx == NO_GT else int(rng.integers(3, 7)) * (4 if idx == BIG_IDX else 1)
        extra = [("caravan", 29), ("trailer", 30)] if idx == NO_GT or rng.random() < 0.5 else []
        for _, label in extra + [(None, None)] * n_random:
            for _ in range(100):
                sw, sh = int(rng.integers(6, 40)) * scale, int(rng.integers(6, 30)) * scale
                x, y = int(rng.integers(0, w - sw)), int(rng.integers(0, h - sh))
                box = [x, y, x + sw - 1, y + sh - 1]
                if not hits(box, reserved):
                    lab = label or IDS[RANDOM_CLASSES[rng.integers(len(RANDOM_CLASSES))]]
                    paint(img, value(lab), box, ["rect", "blob", "L", "split", "ring", "noise"][rng.integers(6)], rng)
                    break
        for name, box, shape in fixed:
            v = value(IDS[name])
            special.add((stem, v))
            if shape == "stray":
                STRAY.add((stem, v))
            paint(img, v, box, shape)
            plan.setdefault(stem, []).append((name, box, v))
        for d in (f"{root}/gtFine/val/{city}", f"{root}/leftImg8bit/val/{city}"):
            os.makedirs(d, exist_ok=True)
        base = f"{root}/gtFine/val/{city}/{stem}_gtFine"
        Image.fromarray(img.astype(np.uint16)).save(f"{base}_instanceIds.png")
        Image.fromarray(np.where(img >= 1000, img // 1000, img).astype(np.uint8)).save(f"{base}_labelIds.png")
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx * yy) % 256], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(f"{root}/leftImg8bit/val/{city}/{stem}_leftImg8bit.png")
    path = {s: glob.glob(f"{root}/gtFine/val/*/{s}_gtFine_instanceIds.png")[0] for s in stems}
    gt = {s: gt_boxes(path[s]) for s in stems}
    TIGHT["boxes"] = sum(len(gt_boxes(path[s], detectron=False)) for s in stems)
    for stem, items in plan.items():  # the built-in boxes must come back exactly
        got = {v: b for v, _, b in gt[stem]}
        want = {v: (None if (stem, v) in STRAY else b) for _, b, v in items}
        assert all(got.get(v) == b for v, b in want.items()), (stem, want, got)

    dets = []

    def add(stem, cls, box, score):
        w, h = sizes[stem]
        x1, x2 = sorted(float(np.clip(c, 0, w - 1)) for c in (box[0], box[2]))
        y1, y2 = sorted(float(np.clip(c, 0, h - 1)) for c in (box[1], box[3]))
        dets.append({"image": stem, "class": cls, "box": [x1, y1, x2, y2], "score": float(score)})

    def jitter(box, s):
        bw, bh = box[2] - box[0] + 1, box[3] - box[1] + 1
        return list(np.array(box, float) + rng.normal(0, s, 4) * [bw, bh, bw, bh])

    def random_box(stem):
        w, h = sizes[stem]
        sw, sh = rng.uniform(4, w / 3), rng.uniform(4, h / 3)
        x, y = rng.uniform(0, w - sw), rng.uniform(0, h - sh)
        return [x, y, x + sw - 1, y + sh - 1]

    for stem in stems:
        for v, cls, box in gt[stem]:
            if (stem, v) in special:
                continue
            if rng.random() < 0.8:
                add(stem, cls, jitter(box, 0.08), rng.random())
            if rng.random() < 0.25:  # duplicate
                add(stem, cls, jitter(box, 0.15), rng.random())
            if rng.random() < 0.15:  # wrong class
                add(stem, RANDOM_CLASSES[rng.integers(5)], jitter(box, 0.05), rng.random())
        for _ in range(int(rng.integers(1, 4))):  # hit nothing (mostly); never motorcycle
            add(stem, [c for c in CLASSES if c != "motorcycle"][rng.integers(7)], random_box(stem), rng.random())
    s0, s1, s2, s3, s7, s10 = (stems[i] for i in (0, 1, 2, 3, NO_GT, 10))
    add(s0, "train", random_box(s0), rng.random())
    add(s7, "train", random_box(s7), rng.random())
    for _, _, box in gt_boxes(path[s7], {29: "caravan", 30: "trailer"}, False):  # cars on them: FP
        add(s7, "car", jitter(box, 0.03), rng.random())
    g1 = plan[s0][0][1]  # the ring
    add(s0, "car", jitter(g1, 0.005), rng.uniform(0.9, 0.95))  # d1 -> G1
    add(s0, "car", jitter([11, 11, 50, 50], 0.005), rng.uniform(0.8, 0.85))  # IoU 0.91 G1, 0.75 G2
    add(s0, "car", jitter(g1, 0.01), rng.uniform(0.0, 0.5))  # plain duplicate on G1
    add(s1, "truck", [60.0, 10.0, 69.0, 29.0], rng.random())  # IoU exactly 0.5
    for box in (b for n, b, _ in plan[s2] if n == "person"):  # P4, P5 ranked after 110 FPs
        add(s2, "person", jitter(box, 0.02), rng.uniform(0.6, 1) if box[0] < 1200 else rng.uniform(0.01, 0.04))
    for _ in range(110):
        sw, sh = rng.uniform(20, 200), rng.uniform(20, 200)
        x, y = rng.uniform(0, BIG[0] - sw), rng.uniform(400, BIG[1] - sh)
        add(s2, "person", [x, y, x + sw, y + sh], rng.uniform(0.05, 0.55))
    add(s3, "bicycle", jitter(plan[s3][0][1], 0.005), rng.random())
    add(s3, "bicycle", [40.2, 20.1, 52.3, 32.4], rng.random())  # one part only: IoU 0.16
    buses = [(s, b) for s in stems for n, b, _ in plan.get(s, []) if n == "bus"]
    assert len(buses) == 10
    for j, (stem, box) in enumerate(buses[:9]):  # recall 0.3 at precision 1, then FPs
        add(stem, "bus", jitter(box, 0.01), rng.uniform(0.9, 0.95) if j < 3 else rng.uniform(0.2, 0.85))
    stem, (x1, y1, x2, y2) = buses[9]
    assert stem == s10
    for iou, score in ((0.4995, rng.uniform(0.86, 0.88)), (0.5005, rng.uniform(0.1, 0.2))):
        add(stem, "bus", [x1, y2 + 1 - (y2 - y1 + 1) / iou, x2, y2], score)  # GT inside the box
    add(s0, "bus", random_box(s0), rng.uniform(0.85, 0.9))
    add(s7, "bus", random_box(s7), rng.uniform(0.85, 0.9))
    dets = [d for d in dets if d["image"] != stems[NO_DETS]]
    assert len({d["score"] for d in dets}) == len(dets), "scores must be distinct"
    assert not gt[stems[NO_GT]] and any(d["image"] == stems[NO_GT] for d in dets)
    return stems, gt, dets


def voc_ap(rec, prec, use_07, thresholds=None):
    if use_07:  # eleven-point: voc_eval's np.arange(0., 1.1, 0.1), float quirks included
        ts = np.arange(0.0, 1.1, 0.1) if thresholds is None else thresholds
        return float(sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) / 11.0 for t in ts))
    r = np.concatenate(([0.0], rec, [1.0]))
    p = np.concatenate(([0.0], prec, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope, non-increasing
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())


def voc_eval(gt, dets, use_07, thresholds=None):
    """{class: AP or None}: py-faster-rcnn voc_eval logic (IoU > 0.5, +1 pixel areas)."""
    out = {}
    for cls in CLASSES:
        boxes = {s: np.array([b for _, c, b in g if c == cls], float).reshape(-1, 4) for s, g in gt.items()}
        npos = sum(len(b) for b in boxes.values())
        if npos == 0:
            out[cls] = None
            continue
        taken = {s: np.zeros(len(b), bool) for s, b in boxes.items()}
        mine = sorted((d for d in dets if d["class"] == cls), key=lambda d: -d["score"])
        tp = np.zeros(len(mine))
        for i, d in enumerate(mine):
            g, bb = boxes[d["image"]], np.array(d["box"], float)
            if len(g) == 0:
                continue
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                     + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inter)
            iou = inter / union
            j = int(np.argmax(iou))
            if iou[j] > 0.5 and not taken[d["image"]][j]:
                taken[d["image"]][j] = True
                tp[i] = 1.0
        tpc, fpc = np.cumsum(tp), np.cumsum(1.0 - tp)
        rec = tpc / float(npos)
        prec = tpc / np.maximum(tpc + fpc, np.finfo(np.float64).eps)
        out[cls] = voc_ap(rec, prec, use_07, thresholds)
    return out


def coco_eval(stems, gt, dets, max_dets=(1, 10, 100)):
    """{class: AP or None}: pycocotools COCOeval bbox, IoU 0.5, area all, the last maxDets."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    img_id = {s: i + 1 for i, s in enumerate(stems)}
    wh = lambda b: [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1]
    anns = [{"id": n + 1, "image_id": img_id[s], "category_id": IDS[c], "bbox": wh(b),
             "area": wh(b)[2] * wh(b)[3], "iscrowd": 0}
            for n, (s, c, b) in enumerate((s, c, b) for s in stems for _, c, b in gt[s])]
    res = [{"image_id": img_id[d["image"]], "category_id": IDS[d["class"]], "bbox": wh(d["box"]),
            "score": d["score"]} for d in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = {"images": [{"id": i} for i in img_id.values()], "annotations": anns,
                      "categories": [{"id": i, "name": n} for i, n in LABELS.items()]}
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(res), "bbox")
        ev.params.catIds = sorted(LABELS)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        pr = ev.eval["precision"][0, :, k, 0, len(max_dets) - 1]
        out[LABELS[cid]] = float(pr[pr > -1].mean()) if (pr > -1).any() else None
    return out


def references(stems, gt, dets):
    per = {"voc07": voc_eval(gt, dets, True), "all_point": voc_eval(gt, dets, False),
           "coco": coco_eval(stems, gt, dets)}
    return {c: None if per["coco"][c] is None else {f: per[f][c] for f in FLAVOURS} for c in CLASSES}


def compare(report, refs, n, show=True):
    failures = []
    if report.get("images") != n:
        failures.append(f"images: ours {report.get('images')}, reference {n}")
    ap50 = report.get("ap50") or {}
    if show:
        print(f"{'class':<11} {'flavour':<9} {'seg-adapt':>9} {'reference':>9} {'|diff|':>9}")
    for cls in CLASSES:
        ref, got = refs[cls], ap50.get(cls)
        if ref is None:
            ok = got is None
            if not ok:
                failures.append(f"{cls}: no ground truth, expected null, ours {got}")
            if show:
                print(f"{cls:<11} {'all':<9} {'null' if ok else 'not null':>9} {'null':>9}")
            continue
        for f in FLAVOURS:
            v = got.get(f) if isinstance(got, dict) else None
            ok = isinstance(v, (int, float)) and abs(v - ref[f]) <= TOL
            diff = f"{abs(v - ref[f]):.2e}" if isinstance(v, (int, float)) else "-"
            if not ok:
                failures.append(f"{cls} {f}: ours {v}, reference {ref[f]}")
            if show:
                vs = f"{v:.6f}" if isinstance(v, (int, float)) else str(v)
                print(f"{cls:<11} {f:<9} {vs:>9} {ref[f]:>9.6f} {diff:>9}{'' if ok else '  <-- differs'}")
    return failures


def exercised(stems, gt, dets, refs):
    """The generated data must exercise the rules it is meant to check."""
    bad = []
    if refs["train"] is not None:
        bad.append("train should have no ground truth")
    if refs["motorcycle"] != {f: 0.0 for f in FLAVOURS}:
        bad.append(f"motorcycle should be 0 everywhere: {refs['motorcycle']}")
    exact = voc_eval(gt, dets, True, [i / 10 for i in range(11)])["bus"]
    if abs(exact - refs["bus"]["voc07"]) < 1e-3:
        bad.append("bus voc07 does not depend on np.arange's 0.30000000000000004")
    if abs(coco_eval(stems, gt, dets, (1, 10, 1000))["person"] - refs["person"]["coco"]) < 1e-3:
        bad.append("person coco does not depend on the 100-detection cap")
    if TIGHT["boxes"] - sum(len(b) for b in gt.values()) < 3:
        bad.append("the converter's contour rule should leave out the stray car and noise instances")
    return bad


HAND = [  # (gt boxes, (box, score) dets, expected voc07, all_point, coco), one class, one image
    # d2's best box (A) is taken: voc_eval FP; COCO matches it to B (IoU 0.75). d3 hits nothing.
    ([[0, 0, 39, 39], [4, 4, 43, 43]], [([0, 0, 39, 39], 0.9), ([1, 1, 40, 40], 0.8),
                                        ([60, 60, 69, 69], 0.7)], 6 / 11, 0.5, 1.0),
    # TP, FP, TP: rec .5 .5 1, prec 1 .5 2/3; 11-point (6 + 5 * 2/3) / 11; COCO (51 + 50 * 2/3) / 101
    ([[0, 0, 9, 9], [20, 0, 29, 9]], [([0, 0, 9, 9], 0.9), ([40, 40, 49, 49], 0.8),
                                      ([20, 0, 29, 9], 0.7)], 28 / 33, 5 / 6, 253 / 303),
]


def self_test(work):
    for i, (boxes, ds, *want) in enumerate(HAND):
        gt = {"img": [(0, "car", b) for b in boxes]}
        dets = [{"image": "img", "class": "car", "box": b, "score": s} for b, s in ds]
        got = list(references(["img"], gt, dets)["car"].values())
        print(f"hand case {i + 1}: voc07 {got[0]:.6f} all_point {got[1]:.6f} coco {got[2]:.6f}")
        assert all(abs(g - w) < 1e-12 for g, w in zip(got, want)), (i, got, want)
    stems, gt, dets = generate(os.path.join(work, "cityscapes"))
    refs = references(stems, gt, dets)
    report = {"ap50": refs, "images": len(stems)}
    out = os.path.join(work, "out_selftest")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    fails = compare(report, refs, len(stems))
    assert not fails, fails
    bad = exercised(stems, gt, dets, refs)
    assert not bad, bad
    for change, expect in ((lambda r: r["ap50"]["car"].update(coco=r["ap50"]["car"]["coco"] + 2e-6), "car coco"),
                           (lambda r: r["ap50"].update(bus=None), "bus voc07"),
                           (lambda r: r["ap50"].update(train={"voc07": 0.0}), "train"),
                           (lambda r: r.update(images=11), "images")):
        r = json.loads(json.dumps(report))
        change(r)
        fails = compare(r, refs, len(stems), show=False)
        assert fails and fails[0].startswith(expect), (expect, fails)
    print(f"{len(stems)} images, {len(dets)} detections; every perturbation of the report was caught")
    print("detection-eval-check: self-test passed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", help="path of the seg-adapt binary")
    ap.add_argument("--work", required=True, help="empty scratch folder")
    ap.add_argument("--self-test", action="store_true", help="check the references, not the binary")
    a = ap.parse_args()
    if a.self_test:
        return self_test(a.work)
    if not a.bin:
        ap.error("--bin is required")
    root = os.path.join(a.work, "cityscapes")
    stems, gt, dets = generate(root)
    pred = os.path.join(a.work, "dets.json")
    with open(pred, "w") as f:
        json.dump(dets, f)
    refs = references(stems, gt, dets)
    failures = [f"generator: {b}" for b in exercised(stems, gt, dets, refs)]
    out = os.path.join(a.work, "out")
    cmd = [a.bin, "eval", "--task", "detection", "--root", root, "--split", "val",
           "--pred", pred, "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"detection-eval-check: `{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    failures += compare(report, refs, len(stems))
    print(f"{len(stems)} images ({BIG[0]}x{BIG[1]}, 128x96, 96x64), {len(dets)} detections, tolerance {TOL}")
    if failures:
        print("detection-eval-check: DISAGREEMENT", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print("detection-eval-check: seg-adapt eval --task detection agrees with voc_eval and pycocotools")
    return 0


if __name__ == "__main__":
    sys.exit(main())
