//! The embedded benchmark: procedural street scenes with a built-in synthetic-to-real gap,
//! written in the real on-disk formats (GTA5 and SYNTHIA for the sources, Cityscapes for the
//! target) so that the same readers, trainer and evaluator run on it as on the real datasets.
//!
//! Scenes are drawn in label-id space first (horizon, sky, buildings, road in perspective,
//! sidewalks, terrain, fences, poles with signs and lights, trees, cars, trucks, buses, people,
//! riders on two-wheelers), then rendered with a domain's look: the synthetic source is flat
//! shaded with clean edges and a fixed colour per class; the "real" target shifts each class's
//! colour part of the way toward another (never so far that it lands nearer another class's
//! source colour: see [`target_palette`]), adds procedural textures, a per-image exposure and
//! white balance, shadows, blur and sensor noise, sees everything through one fixed camera
//! response, and moves the camera and the class frequencies a little. The same settings serve
//! every method; adaptation never reads target train labels.
//!
//! Version 2 (this one) against version 1: the per-class colour shift is capped per class so that
//! no target class colour lies nearer another class's source colour (in version 1, 9 of 18 classes
//! did, a label swap that no unsupervised method can undo); a fixed camera response (white balance
//! and gamma) was added to the target; poles, signs, lights, people, riders and two-wheelers are
//! drawn at least a twentieth of the image wide (6.4 pixels at the demo's training scale, so a
//! model trained on target labels can learn them), people and riders at least 18% of its height
//! tall, and riders appear in half the source scenes (60% of the target's).
//!
//! Version 3 adds the detection view: `sim10k/` holds further scenes of the GTA5-like source
//! in Sim10k's layout (JPEG images, PASCAL VOC XML boxes of cars, motorbikes and persons, the
//! split list `trainval10k.txt`); the target's boxes come from the Cityscapes `instanceIds` it
//! already wrote. The segmentation datasets' bytes are unchanged from version 2.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use seg_core::Rng;
use seg_labels::cityscapes::{id_to_train_id, label_by_id, label_id_palette};
use seg_labels::png_io::{self, RgbImage};
use seg_labels::{DatasetKind, LabelMap, IGNORE};

use crate::error::DataError;

/// Version of the generator; bumped whenever the bytes it writes change.
pub const GENERATOR_VERSION: u32 = 3;

/// Benchmark size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 64×128 images, small splits: for tests and `demo --quick`.
    Quick,
    /// 128×256 images: the README's demo.
    Default,
    /// Cityscapes' 1024×2048, a handful of images per split: for timing the real-size presets
    /// (`configs/`) before a real dataset is at hand.
    Full,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "quick" => Ok(Preset::Quick),
            "default" => Ok(Preset::Default),
            "full" => Ok(Preset::Full),
            o => Err(format!("unknown preset `{o}`: expected quick, default or full")),
        }
    }
}

/// Sizes of one generated benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToySizes {
    pub width: u32,
    pub height: u32,
    pub gta5: usize,
    pub synthia: usize,
    /// Sim10k-layout source images (detection).
    #[serde(default)]
    pub sim10k: usize,
    pub target_train: usize,
    pub target_val: usize,
}

impl Preset {
    pub fn sizes(self) -> ToySizes {
        match self {
            Preset::Quick => ToySizes {
                width: 128,
                height: 64,
                gta5: 160,
                sim10k: 160,
                synthia: 80,
                target_train: 120,
                target_val: 30,
            },
            Preset::Default => ToySizes {
                width: 256,
                height: 128,
                gta5: 600,
                sim10k: 600,
                synthia: 300,
                target_train: 400,
                target_val: 100,
            },
            Preset::Full => ToySizes {
                width: 2048,
                height: 1024,
                gta5: 4,
                sim10k: 4,
                synthia: 4,
                target_train: 4,
                target_val: 2,
            },
        }
    }
}

/// What was generated, written as `toy.json` beside the datasets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToyManifest {
    pub generator_version: u32,
    pub seed: u64,
    pub preset: Preset,
    pub sizes: ToySizes,
    /// What was written ([`contents`]), so that a damaged benchmark is told from a whole one
    /// ([`stale`]); absent in manifests of earlier versions.
    #[serde(default)]
    pub contents: Option<Contents>,
}

/// The benchmark's files as written: their count and an FNV-1a digest of every file's path
/// (relative, sorted) and bytes. Hidden names (`.DS_Store`, a stopped write's temp file) are
/// passed over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contents {
    pub files: usize,
    pub digest: String,
}

const TRAIN_CITIES: [&str; 4] = ["aachen", "bochum", "bremen", "cologne"];
const VAL_CITIES: [&str; 3] = ["frankfurt", "lindau", "munster"];

// Label ids used by the scene drawer (official Cityscapes ids).
const EGO: u8 = 1;
const ROAD: u8 = 7;
const SIDEWALK: u8 = 8;
const BUILDING: u8 = 11;
const WALL: u8 = 12;
const FENCE: u8 = 13;
const POLE: u8 = 17;
const LIGHT: u8 = 19;
const SIGN: u8 = 20;
const VEGETATION: u8 = 21;
const TERRAIN: u8 = 22;
const SKY: u8 = 23;
const PERSON: u8 = 24;
const RIDER: u8 = 25;
const CAR: u8 = 26;
const TRUCK: u8 = 27;
const BUS: u8 = 28;
const MOTORCYCLE: u8 = 32;
const BICYCLE: u8 = 33;

/// Scene layout statistics of a domain (camera and class frequencies).
#[derive(Debug, Clone, Copy)]
struct Layout {
    horizon: (f32, f32),
    cars: (usize, usize),
    people: (usize, usize),
    poles: (usize, usize),
    trees: (usize, usize),
    big_vehicle: f32,
    riders: f32,
    fence: f32,
    wall: f32,
    ego_vehicle: bool,
}

/// How a domain renders a class.
#[derive(Debug, Clone, Copy)]
struct Look {
    /// Largest fraction of the way a class colour moves toward its "real" colour (capped per
    /// class by [`target_palette`]).
    shift: f32,
    /// A fixed camera response: per-channel gain and gamma (1 = none).
    camera_gain: [f32; 3],
    camera_gamma: f32,
    /// Amplitude of per-object colour jitter.
    tint: f32,
    /// Procedural texture strength (0 = flat).
    texture: f32,
    /// Global colour cast / exposure strength.
    cast: f32,
    /// Probability of a shadow band.
    shadow: f32,
    blur: bool,
    /// Sensor noise standard deviation (0..255 units).
    noise: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Domain {
    Gta5,
    Synthia,
    Target,
}

impl Domain {
    fn key(self) -> u64 {
        match self {
            Domain::Gta5 => 1,
            Domain::Synthia => 2,
            Domain::Target => 3,
        }
    }

    fn layout(self) -> Layout {
        match self {
            Domain::Gta5 => Layout {
                horizon: (0.42, 0.52),
                cars: (2, 6),
                people: (0, 3),
                poles: (1, 4),
                trees: (0, 3),
                big_vehicle: 0.35,
                riders: 0.5,
                fence: 0.4,
                wall: 0.4,
                ego_vehicle: false,
            },
            Domain::Synthia => Layout {
                horizon: (0.30, 0.55),
                cars: (1, 5),
                people: (1, 5),
                poles: (1, 4),
                trees: (0, 3),
                big_vehicle: 0.25,
                riders: 0.5,
                fence: 0.3,
                wall: 0.5,
                ego_vehicle: false,
            },
            Domain::Target => Layout {
                horizon: (0.36, 0.46),
                cars: (1, 4),
                people: (1, 5),
                poles: (2, 5),
                trees: (1, 5),
                big_vehicle: 0.2,
                riders: 0.6,
                fence: 0.5,
                wall: 0.3,
                ego_vehicle: true,
            },
        }
    }

    fn look(self) -> Look {
        match self {
            Domain::Gta5 => Look {
                shift: 0.0,
                camera_gain: [1.0; 3],
                camera_gamma: 1.0,
                tint: 0.07,
                texture: 0.0,
                cast: 0.0,
                shadow: 0.0,
                blur: false,
                noise: 0.0,
            },
            Domain::Synthia => Look {
                shift: 0.1,
                camera_gain: [1.0; 3],
                camera_gamma: 1.0,
                tint: 0.09,
                texture: 0.25,
                cast: 0.15,
                shadow: 0.0,
                blur: false,
                noise: 1.5,
            },
            Domain::Target => Look {
                shift: 0.45,
                camera_gain: [1.08, 1.0, 0.9],
                camera_gamma: 0.9,
                tint: 0.12,
                texture: 1.0,
                cast: 1.0,
                shadow: 0.6,
                blur: true,
                noise: 7.0,
            },
        }
    }
}

/// Synthetic base colour of a label id.
fn source_color(id: u8) -> [f32; 3] {
    match id {
        ROAD => [95.0, 92.0, 100.0],
        SIDEWALK => [160.0, 140.0, 150.0],
        BUILDING => [130.0, 105.0, 95.0],
        WALL => [150.0, 150.0, 110.0],
        FENCE => [120.0, 95.0, 70.0],
        POLE => [75.0, 75.0, 80.0],
        LIGHT => [230.0, 170.0, 40.0],
        SIGN => [230.0, 225.0, 30.0],
        VEGETATION => [55.0, 130.0, 40.0],
        TERRAIN => [140.0, 170.0, 80.0],
        SKY => [110.0, 165.0, 235.0],
        PERSON => [210.0, 50.0, 70.0],
        RIDER => [240.0, 110.0, 30.0],
        CAR => [40.0, 55.0, 160.0],
        TRUCK => [90.0, 100.0, 120.0],
        BUS => [200.0, 150.0, 40.0],
        MOTORCYCLE => [60.0, 30.0, 120.0],
        BICYCLE => [150.0, 40.0, 120.0],
        EGO => [25.0, 25.0, 30.0],
        _ => [0.0, 0.0, 0.0],
    }
}

/// The "real" colour each class drifts toward in the target.
fn real_color(id: u8) -> [f32; 3] {
    match id {
        ROAD => [70.0, 72.0, 70.0],
        SIDEWALK => [175.0, 170.0, 160.0],
        BUILDING => [110.0, 110.0, 115.0],
        WALL => [165.0, 160.0, 150.0],
        FENCE => [100.0, 105.0, 95.0],
        POLE => [120.0, 120.0, 115.0],
        LIGHT => [60.0, 60.0, 50.0],
        SIGN => [210.0, 60.0, 50.0],
        VEGETATION => [70.0, 95.0, 45.0],
        TERRAIN => [150.0, 140.0, 90.0],
        SKY => [200.0, 210.0, 225.0],
        PERSON => [90.0, 70.0, 80.0],
        RIDER => [130.0, 90.0, 60.0],
        CAR => [150.0, 150.0, 160.0],
        TRUCK => [200.0, 200.0, 190.0],
        BUS => [220.0, 200.0, 120.0],
        MOTORCYCLE => [40.0, 40.0, 40.0],
        BICYCLE => [60.0, 60.0, 70.0],
        EGO => [30.0, 35.0, 40.0],
        _ => [0.0, 0.0, 0.0],
    }
}

/// The classes the scene drawer paints that count in evaluation (the ego vehicle is ignored).
pub const DRAWN_CLASSES: [u8; 18] = [
    ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS,
    MOTORCYCLE, BICYCLE,
];

/// A shifted class colour stays at most this fraction of its distance to the nearest other
/// class's source colour away from its own source colour.
pub const NEAREST_RATIO: f32 = 0.6;

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// The base colour of `id` in a domain whose largest shift is `max_shift`: the source colour
/// moved toward the class's "real" colour by the largest fraction `k <= max_shift` (in steps of
/// 0.01) for which it stays within [`NEAREST_RATIO`] of the distance to every other class's
/// source colour. So every class keeps its own source colour as the nearest one: a colour shift
/// that feature alignment can undo, never a label swap.
pub fn shifted_color(id: u8, max_shift: f32) -> [f32; 3] {
    let (src, real) = (source_color(id), real_color(id));
    let at = |k: f32| std::array::from_fn(|c| src[c] + (real[c] - src[c]) * k);
    if !DRAWN_CLASSES.contains(&id) {
        return at(max_shift);
    }
    let steps = (max_shift.max(0.0) * 100.0).round() as u32;
    let mut best = src;
    for i in 1..=steps {
        let t = at(i as f32 / 100.0);
        let own = distance(t, src);
        let other = DRAWN_CLASSES
            .iter()
            .filter(|&&o| o != id)
            .map(|&o| distance(t, source_color(o)))
            .fold(f32::INFINITY, f32::min);
        if own > NEAREST_RATIO * other {
            break;
        }
        best = t;
    }
    best
}

/// `(id, source colour, target base colour)` of every evaluated class, as the generator draws
/// them (before per-object jitter, textures, exposure, camera and noise).
pub fn target_palette() -> Vec<(u8, [f32; 3], [f32; 3])> {
    let shift = Domain::Target.look().shift;
    DRAWN_CLASSES
        .iter()
        .map(|&id| (id, source_color(id), shifted_color(id, shift)))
        .collect()
}

/// A drawn scene: label ids, instance ids, and per-pixel object index.
struct Scene {
    w: usize,
    h: usize,
    ids: Vec<u8>,
    objects: Vec<u16>,
    /// Per object: class id and colour jitter.
    object_info: Vec<(u8, [f32; 3], u16)>,
}

impl Scene {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            ids: vec![0; w * h],
            objects: vec![0; w * h],
            object_info: vec![(0, [0.0; 3], 0)],
        }
    }

    fn object(&mut self, id: u8, rng: &mut Rng, tint: f32) -> u16 {
        let jitter = [rng.normal() * tint, rng.normal() * tint, rng.normal() * tint];
        let inst = if label_by_id(id).is_some_and(|l| l.has_instances) {
            self.object_info.iter().filter(|o| o.0 == id && o.2 > 0).count() as u16 + 1
        } else {
            0
        };
        self.object_info.push((id, jitter, inst));
        (self.object_info.len() - 1) as u16
    }

    fn set(&mut self, x: i64, y: i64, obj: u16) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = y as usize * self.w + x as usize;
            self.ids[i] = self.object_info[obj as usize].0;
            self.objects[i] = obj;
        }
    }

    fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, obj: u16) {
        let (xa, xb) = (x0.round() as i64, x1.round().max(x0.round() + 1.0) as i64);
        let (ya, yb) = (y0.round() as i64, y1.round().max(y0.round() + 1.0) as i64);
        for y in ya.max(0)..yb.min(self.h as i64) {
            for x in xa.max(0)..xb.min(self.w as i64) {
                self.set(x, y, obj);
            }
        }
    }

    fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, obj: u16) {
        let (rx, ry) = (rx.max(0.6), ry.max(0.6));
        for y in (cy - ry).floor() as i64..=(cy + ry).ceil() as i64 {
            for x in (cx - rx).floor() as i64..=(cx + rx).ceil() as i64 {
                let dx = (x as f32 + 0.5 - cx) / rx;
                let dy = (y as f32 + 0.5 - cy) / ry;
                if dx * dx + dy * dy <= 1.0 {
                    self.set(x, y, obj);
                }
            }
        }
    }
}

fn range(rng: &mut Rng, r: (usize, usize)) -> usize {
    r.0 + rng.below(r.1 - r.0 + 1)
}

/// Draws one scene of a domain's layout.
fn draw_scene(w: usize, h: usize, layout: &Layout, look: &Look, rng: &mut Rng) -> Scene {
    let mut s = Scene::new(w, h);
    let (wf, hf) = (w as f32, h as f32);
    let yh = hf * rng.range_f32(layout.horizon.0, layout.horizon.1);
    let vx = wf * rng.range_f32(0.35, 0.65);
    let tint = look.tint;
    // Thin things are at least this wide (12.8 pixels at 256 wide, 6.4 at the demo's training
    // scale, most of one cell of a stride-8 network), so that a model trained on target labels
    // can learn them.
    let min_w = wf / 20.0;
    let min_h = hf * 0.18;

    let sky = s.object(SKY, rng, tint * 0.5);
    s.rect(0.0, 0.0, wf, yh + 1.0, sky);
    let terrain = s.object(TERRAIN, rng, tint);
    s.rect(0.0, yh, wf, hf, terrain);

    // Buildings along the horizon, with gaps.
    let mut x = -rng.range_f32(0.0, 0.1) * wf;
    while x < wf {
        let bw = wf * rng.range_f32(0.08, 0.22);
        if rng.chance(0.82) {
            let top = yh - hf * rng.range_f32(0.08, 0.38);
            let b = s.object(BUILDING, rng, tint);
            s.rect(x, top, x + bw, yh + hf * 0.03, b);
        }
        x += bw
            + if rng.chance(0.2) {
                wf * rng.range_f32(0.0, 0.08)
            } else {
                0.0
            };
    }
    // Background trees between buildings.
    for _ in 0..range(rng, layout.trees) {
        let tx = wf * rng.f32();
        let r = hf * rng.range_f32(0.06, 0.14);
        let v = s.object(VEGETATION, rng, tint);
        s.ellipse(tx, yh - r * 0.6, r * 1.2, r, v);
    }

    // Road and sidewalks in perspective, row by row below the horizon.
    let road = s.object(ROAD, rng, tint * 0.5);
    let walk_l = s.object(SIDEWALK, rng, tint);
    let walk_r = s.object(SIDEWALK, rng, tint);
    let road_half = rng.range_f32(0.45, 0.65);
    let walk_frac = rng.range_f32(0.18, 0.3);
    let edge = |y: f32| -> (f32, f32, f32) {
        let t = ((y - yh) / (hf - yh)).clamp(0.0, 1.0);
        let cx = vx + (wf * 0.5 - vx) * t;
        let half = t * wf * road_half;
        (cx, half, half * walk_frac * 2.0)
    };
    for yi in yh.ceil() as i64..h as i64 {
        let (cx, half, walk) = edge(yi as f32 + 0.5);
        for xi in 0..w as i64 {
            let xf = xi as f32 + 0.5;
            let d = (xf - cx).abs();
            if d <= half {
                s.set(xi, yi, road);
            } else if d <= half + walk {
                s.set(xi, yi, if xf < cx { walk_l } else { walk_r });
            }
        }
    }
    // A low wall or fence along the far side of a sidewalk.
    for side in [-1.0f32, 1.0] {
        let kind = if rng.chance(layout.wall) {
            Some(WALL)
        } else if rng.chance(layout.fence) {
            Some(FENCE)
        } else {
            None
        };
        if let Some(kind) = kind {
            let o = s.object(kind, rng, tint);
            let height = rng.range_f32(0.05, 0.12) * hf;
            let t0 = rng.range_f32(0.1, 0.5);
            let t1 = (t0 + rng.range_f32(0.2, 0.5)).min(1.0);
            let steps = (w * 2).max(1);
            for k in 0..steps {
                let t = t0 + (t1 - t0) * k as f32 / steps as f32;
                let y = yh + t * (hf - yh);
                let (cx, half, walk) = edge(y);
                let xo = cx + side * (half + walk + 0.5);
                s.rect(xo - 0.5 - t * 2.0, y - height * t * 2.0, xo + 0.5 + t * 2.0, y, o);
            }
        }
    }
    // Poles with a sign or a traffic light, on the sidewalks.
    let mut poles: Vec<(f32, f32)> = (0..range(rng, layout.poles))
        .map(|_| (rng.range_f32(0.15, 0.9), if rng.chance(0.5) { -1.0 } else { 1.0 }))
        .collect();
    poles.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (t, side) in poles {
        let y = yh + t * (hf - yh);
        let (cx, half, walk) = edge(y);
        let px = cx + side * (half + walk * 0.6);
        let ph = hf * (0.15 + 0.5 * t);
        let pw = (0.8 + 2.5 * t).max(min_w);
        let p = s.object(POLE, rng, tint * 0.5);
        s.rect(px - pw * 0.5, y - ph, px + pw * 0.5, y, p);
        if rng.chance(0.5) {
            let g = s.object(SIGN, rng, tint);
            let r = (pw * 1.1).max(min_w * 0.9);
            s.rect(px - r, y - ph - r * 0.2, px + r, y - ph + r * 1.4, g);
        } else {
            let l = s.object(LIGHT, rng, tint);
            let r = (pw * 0.9).max(min_w * 0.8);
            s.rect(px - r, y - ph, px + r, y - ph + r * 3.0, l);
        }
    }
    // Foreground trees on the sidewalk edges.
    for _ in 0..range(rng, (0, layout.trees.1 / 2)) {
        let t = rng.range_f32(0.2, 0.7);
        let y = yh + t * (hf - yh);
        let (cx, half, walk) = edge(y);
        let side = if rng.chance(0.5) { -1.0 } else { 1.0 };
        let tx = cx + side * (half + walk * 1.3);
        let r = hf * (0.05 + 0.2 * t);
        let v = s.object(VEGETATION, rng, tint);
        s.rect(tx - r * 0.1, y - r * 1.6, tx + r * 0.1, y, v);
        s.ellipse(tx, y - r * 2.0, r, r * 0.9, v);
    }

    // Vehicles and people, far to near.
    enum Thing {
        Vehicle(u8),
        Person,
        Rider(u8),
    }
    let mut things: Vec<(f32, Thing)> = Vec::new();
    for _ in 0..range(rng, layout.cars) {
        let kind = if rng.chance(layout.big_vehicle) {
            if rng.chance(0.5) {
                TRUCK
            } else {
                BUS
            }
        } else {
            CAR
        };
        things.push((rng.range_f32(0.08, 0.95), Thing::Vehicle(kind)));
    }
    for _ in 0..range(rng, layout.people) {
        things.push((rng.range_f32(0.1, 0.95), Thing::Person));
    }
    if rng.chance(layout.riders) {
        let kind = if rng.chance(0.5) { BICYCLE } else { MOTORCYCLE };
        things.push((rng.range_f32(0.2, 0.9), Thing::Rider(kind)));
    }
    things.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (t, thing) in things {
        let y = yh + t * (hf - yh);
        let (cx, half, walk) = edge(y);
        let scale = t * hf;
        match thing {
            Thing::Vehicle(kind) => {
                let lane = rng.range_f32(-0.8, 0.8);
                let vxc = cx + lane * half;
                let (vw, vh) = match kind {
                    CAR => (scale * 0.55, scale * 0.3),
                    TRUCK => (scale * 0.6, scale * 0.5),
                    _ => (scale * 0.75, scale * 0.55),
                };
                let v = s.object(kind, rng, tint * 1.5);
                s.rect(vxc - vw * 0.5, y - vh * 0.65, vxc + vw * 0.5, y, v);
                s.rect(vxc - vw * 0.35, y - vh, vxc + vw * 0.35, y - vh * 0.6, v);
            }
            Thing::Person => {
                let side = if rng.chance(0.5) { -1.0 } else { 1.0 };
                let px = cx + side * (half + walk * rng.range_f32(0.2, 0.9));
                let ph = (scale * 0.55).max(min_h);
                let p = s.object(PERSON, rng, tint * 1.5);
                let half_w = (ph * 0.12).max(min_w * 0.5);
                s.rect(px - half_w, y - ph * 0.85, px + half_w, y, p);
                s.ellipse(px, y - ph * 0.9, half_w * 0.75, ph * 0.1, p);
            }
            Thing::Rider(kind) => {
                let px = cx + rng.range_f32(0.5, 0.95) * half * if rng.chance(0.5) { -1.0 } else { 1.0 };
                let ph = (scale * 0.6).max(min_h * 1.1);
                let b = s.object(kind, rng, tint);
                s.rect(
                    px - (ph * 0.3).max(min_w),
                    y - ph * 0.35,
                    px + (ph * 0.3).max(min_w),
                    y,
                    b,
                );
                let r = s.object(RIDER, rng, tint * 1.5);
                let half_w = (ph * 0.1).max(min_w * 0.5);
                s.rect(px - half_w, y - ph * 0.85, px + half_w, y - ph * 0.3, r);
                s.ellipse(px, y - ph * 0.9, half_w * 0.8, ph * 0.09, r);
            }
        }
    }
    if layout.ego_vehicle {
        let e = s.object(EGO, rng, 0.0);
        let top = hf * rng.range_f32(0.9, 0.94);
        for yi in top as i64..h as i64 {
            let f = (yi as f32 - top) / (hf - top);
            let inset = wf * 0.15 * (1.0 - f);
            s.rect(inset, yi as f32, wf - inset, yi as f32 + 1.0, e);
        }
    }
    s
}

/// Smooth value noise in [-1, 1].
fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    fn hash(seed: u64, xi: i64, yi: i64) -> f32 {
        let mut v =
            seed ^ (xi as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (yi as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        v ^= v >> 29;
        v = v.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        v ^= v >> 32;
        (v >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    let (xf, yf) = (x.floor(), y.floor());
    let (fx, fy) = (x - xf, y - yf);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (xi, yi) = (xf as i64, yf as i64);
    let a = hash(seed, xi, yi) * (1.0 - sx) + hash(seed, xi + 1, yi) * sx;
    let b = hash(seed, xi, yi + 1) * (1.0 - sx) + hash(seed, xi + 1, yi + 1) * sx;
    a * (1.0 - sy) + b * sy
}

/// Texture value (in 0..255 units) of a class at a pixel, for a domain with texture strength 1.
fn texture(id: u8, x: f32, y: f32, w: f32, seed: u64) -> f32 {
    let u = x / w * 256.0;
    let v = y / w * 256.0;
    match id {
        ROAD => 10.0 * value_noise(seed, u * 0.6, v * 0.6) + 6.0 * value_noise(seed ^ 1, u * 0.1, v * 0.1),
        SIDEWALK => {
            let tile = if ((u / 6.0).floor() as i64 + (v / 6.0).floor() as i64) % 2 == 0 {
                8.0
            } else {
                -8.0
            };
            tile + 5.0 * value_noise(seed, u * 0.5, v * 0.5)
        }
        BUILDING => {
            // Rows of windows.
            let wx = (u / 7.0).fract();
            let wy = (v / 9.0).fract();
            let window = if (0.3..0.75).contains(&wx) && (0.3..0.8).contains(&wy) {
                -35.0
            } else {
                0.0
            };
            window + 8.0 * value_noise(seed, u * 0.2, v * 0.2)
        }
        VEGETATION => 30.0 * value_noise(seed, u * 0.7, v * 0.7) + 10.0 * value_noise(seed ^ 3, u * 2.0, v * 2.0),
        TERRAIN => 18.0 * value_noise(seed, u * 0.5, v * 0.9),
        SKY => 12.0 * value_noise(seed, u * 0.05, v * 0.1) - (y / w) * 40.0,
        WALL | FENCE => {
            let stripes = if (u / 3.0).fract() < 0.3 { -15.0 } else { 0.0 };
            stripes + 6.0 * value_noise(seed, u * 0.4, v * 0.4)
        }
        CAR | TRUCK | BUS => {
            let window = if (v / 3.0).fract() < 0.25 { -30.0 } else { 0.0 };
            window + 6.0 * value_noise(seed, u * 0.3, v * 0.3)
        }
        _ => 10.0 * value_noise(seed, u * 0.4, v * 0.4),
    }
}

/// Renders a scene with a domain's look.
fn render(scene: &Scene, look: &Look, rng: &mut Rng) -> RgbImage {
    let (w, h) = (scene.w, scene.h);
    let tex_seed = rng.next_u64();
    let gains = if look.cast > 0.0 {
        let base = 1.0 + look.cast * rng.range_f32(-0.35, 0.25);
        [
            base * (1.0 + look.cast * rng.range_f32(-0.2, 0.2)),
            base * (1.0 + look.cast * rng.range_f32(-0.15, 0.15)),
            base * (1.0 + look.cast * rng.range_f32(-0.25, 0.25)),
        ]
    } else {
        [1.0; 3]
    };
    let offset = look.cast * rng.range_f32(-12.0, 12.0);
    let shadow = rng.chance(look.shadow).then(|| {
        let x0 = rng.range_f32(-0.3, 0.7) * w as f32;
        let slope = rng.range_f32(-1.5, 1.5);
        let width = rng.range_f32(0.2, 0.5) * w as f32;
        (x0, slope, width, rng.range_f32(0.45, 0.7))
    });
    // Base colour per label id, computed once.
    let base_colors: Vec<[f32; 3]> = (0..=u8::MAX).map(|id| shifted_color(id, look.shift)).collect();
    let camera = |v: f32, c: usize| -> f32 {
        if look.camera_gamma == 1.0 && look.camera_gain[c] == 1.0 {
            v
        } else {
            255.0
                * (v * look.camera_gain[c] / 255.0)
                    .clamp(0.0, 1.0)
                    .powf(look.camera_gamma)
        }
    };
    let mut px = vec![0f32; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (id, jitter, _) = scene.object_info[scene.objects[i] as usize];
            let id = if scene.objects[i] == 0 { scene.ids[i] } else { id };
            let base = base_colors[id as usize];
            let t = if look.texture > 0.0 {
                look.texture * texture(id, x as f32, y as f32, w as f32, tex_seed)
            } else {
                0.0
            };
            let mut shade = 1.0;
            if let Some((x0, slope, width, dark)) = shadow {
                let edge = x0 + slope * y as f32;
                if (x as f32) > edge && (x as f32) < edge + width && y as f32 > h as f32 * 0.35 && id != SKY {
                    shade = dark;
                }
            }
            for c in 0..3 {
                let v = (base[c] * (1.0 + jitter[c]) + t) * shade;
                px[i * 3 + c] = camera(v * gains[c] + offset, c);
            }
        }
    }
    if look.blur {
        px = box_blur(&px, w, h);
    }
    let data = px
        .iter()
        .map(|&v| {
            let n = if look.noise > 0.0 {
                rng.normal() * look.noise
            } else {
                0.0
            };
            (v + n).round().clamp(0.0, 255.0) as u8
        })
        .collect();
    RgbImage {
        width: w as u32,
        height: h as u32,
        data,
    }
}

fn box_blur(px: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0f32; px.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut sum = 0.0;
                let mut n = 0.0;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                        if xx >= 0 && yy >= 0 && (xx as usize) < w && (yy as usize) < h {
                            let wgt = if dx == 0 && dy == 0 { 2.0 } else { 1.0 };
                            sum += wgt * px[(yy as usize * w + xx as usize) * 3 + c];
                            n += wgt;
                        }
                    }
                }
                out[(y * w + x) * 3 + c] = sum / n;
            }
        }
    }
    out
}

/// One generated sample: image, label ids and Cityscapes-style instance ids.
pub struct ToySample {
    pub image: RgbImage,
    pub label_ids: Vec<u8>,
    pub instance_ids: Vec<u16>,
}

fn generate_one(domain: Domain, seed: u64, index: u64, w: u32, h: u32) -> ToySample {
    let mut rng = Rng::derive(seed, &[domain.key(), index]);
    let (layout, look) = (domain.layout(), domain.look());
    let scene = draw_scene(w as usize, h as usize, &layout, &look, &mut rng);
    let image = render(&scene, &look, &mut rng);
    let instance_ids = scene
        .objects
        .iter()
        .zip(&scene.ids)
        .map(|(&o, &id)| {
            let (_, _, inst) = scene.object_info[o as usize];
            if inst > 0 {
                id as u16 * 1000 + inst - 1
            } else {
                id as u16
            }
        })
        .collect();
    ToySample {
        image,
        label_ids: scene.ids,
        instance_ids,
    }
}

fn io<T>(r: Result<T, seg_labels::PngError>) -> Result<T, DataError> {
    r.map_err(DataError::from)
}

/// The folders [`generate`] writes under its output folder.
pub const DATASET_DIRS: [&str; 4] = ["gta5", "synthia", "sim10k", "cityscapes"];

/// The marker [`generate`] writes before anything else and removes after `toy.json`: dataset
/// folders beside it are a benchmark whose writing was stopped, which a new one replaces.
pub const INCOMPLETE: &str = "toy.incomplete";

/// Writes the whole benchmark under `out`: `gta5/`, `synthia/`, `sim10k/`, `cityscapes/` and
/// `toy.json` (last, so a folder without it is incomplete). A benchmark already there (with its
/// `toy.json`, or its [`INCOMPLETE`] marker when its writing was stopped) is replaced whole, so
/// no file of another preset stays behind; dataset folders with neither (real data, perhaps)
/// are refused, never overwritten.
pub fn generate(out: &Path, seed: u64, preset: Preset) -> Result<ToyManifest, DataError> {
    let sizes = preset.sizes();
    let (w, h) = (sizes.width, sizes.height);
    let present: Vec<&str> = DATASET_DIRS.into_iter().filter(|d| out.join(d).exists()).collect();
    let (manifest, marker) = (out.join("toy.json"), out.join(INCOMPLETE));
    if !present.is_empty() && !manifest.exists() && !marker.exists() {
        return Err(DataError::Invalid {
            path: out.to_path_buf(),
            reason: format!(
                "already holds {} without a toy.json or {INCOMPLETE}: not written by gen-toy, so nothing is \
                 overwritten; remove them or choose another folder",
                present.iter().map(|d| format!("{d}/")).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let remove = |path: &Path, r: std::io::Result<()>| {
        r.map_err(|e| DataError::Invalid {
            path: path.to_path_buf(),
            reason: format!("cannot remove the previous benchmark: {e}"),
        })
    };
    if manifest.exists() {
        remove(&manifest, std::fs::remove_file(&manifest))?;
    }
    for d in present {
        let dir = out.join(d);
        remove(&dir, std::fs::remove_dir_all(&dir))?;
    }
    // Said before the first file: a stop from here on leaves a benchmark the next run replaces.
    seg_labels::fsutil::create_dir_all(out).map_err(|cause| DataError::Write {
        path: out.to_path_buf(),
        cause,
    })?;
    seg_labels::fsutil::write_atomic(&marker, b"a benchmark is being written here by seg-adapt gen-toy\n").map_err(
        |cause| DataError::Write {
            path: marker.clone(),
            cause,
        },
    )?;
    let palette = label_id_palette();

    // GTA5: images/NNNNN.png, labels/NNNNN.png (palette index = label id).
    (0..sizes.gta5).into_par_iter().try_for_each(|i| {
        let s = generate_one(Domain::Gta5, seed, i as u64, w, h);
        let name = format!("{:05}.png", i + 1);
        io(png_io::write_rgb(&out.join("gta5/images").join(&name), &s.image))?;
        io(png_io::write_palette8(
            &out.join("gta5/labels").join(&name),
            w,
            h,
            &s.label_ids,
            &palette,
        ))
    })?;

    // SYNTHIA: RGB/NNNNNNN.png, GT/LABELS/NNNNNNN.png (16-bit; class, instance, 0).
    let synthia = LabelMap::new(DatasetKind::Synthia);
    (0..sizes.synthia).into_par_iter().try_for_each(|i| {
        let s = generate_one(Domain::Synthia, seed, i as u64, w, h);
        let name = format!("{i:07}.png");
        let px: Vec<[u16; 3]> = s
            .label_ids
            .iter()
            .zip(&s.instance_ids)
            .map(|(&id, &inst)| {
                let t = id_to_train_id(id);
                let class = if t == IGNORE { 0 } else { synthia.raw_for_train_id(t) };
                [class, if inst >= 1000 { inst % 1000 + 1 } else { 0 }, 0]
            })
            .collect();
        io(png_io::write_rgb(&out.join("synthia/RGB").join(&name), &s.image))?;
        io(png_io::write_rgb16(
            &out.join("synthia/GT/LABELS").join(&name),
            w,
            h,
            &px,
        ))
    })?;

    // Sim10k: VOC2012/JPEGImages/NNNNNNN.jpg, VOC2012/Annotations/NNNNNNN.xml (boxes of cars,
    // motorbikes and persons: the tight boxes of their visible pixels), and the split list.
    // Scenes of the GTA5-like source, numbered after the GTA5 set's (so not the same images).
    let voc = out.join("sim10k/VOC2012");
    let ids: Vec<String> = (0..sizes.sim10k).map(|i| format!("{}", 3_000_000 + i)).collect();
    ids.par_iter().enumerate().try_for_each(|(i, id)| {
        let s = generate_one(Domain::Gta5, seed, (1_000_000 + i) as u64, w, h);
        let boxes: Vec<seg_detect::GtBox> = seg_detect::dataset::boxes_from_instance_ids(
            w,
            h,
            &s.instance_ids,
            seg_detect::ClassSet::All,
            seg_detect::dataset::BoxRule::Tight,
        )
        .into_iter()
        .filter(|b| matches!(seg_detect::DET_CLASSES[b.class].name, "car" | "motorcycle" | "person"))
        .collect();
        let jpg = voc.join("JPEGImages").join(format!("{id}.jpg"));
        write_jpeg(&jpg, &s.image)?;
        let xml = seg_detect::voc::to_voc_xml(&format!("{id}.jpg"), w, h, &boxes);
        let xp = voc.join("Annotations").join(format!("{id}.xml"));
        write_file(&xp, xml.as_bytes())
    })?;
    if sizes.sim10k > 0 {
        let list = ids.join("\n") + "\n";
        write_file(&voc.join("ImageSets/Main/trainval10k.txt"), list.as_bytes())?;
    }

    // Cityscapes: leftImg8bit + gtFine (labelIds, instanceIds, color).
    let cs = out.join("cityscapes");
    let jobs: Vec<(&str, &str, usize)> = (0..sizes.target_train)
        .map(|i| ("train", TRAIN_CITIES[i % TRAIN_CITIES.len()], i))
        .chain((0..sizes.target_val).map(|i| ("val", VAL_CITIES[i % VAL_CITIES.len()], sizes.target_train + i)))
        .collect();
    jobs.par_iter().try_for_each(|&(split, city, i)| {
        let s = generate_one(Domain::Target, seed, i as u64, w, h);
        let frame = if matches!(city, "lindau" | "munster") {
            19
        } else {
            (i * 37 % 900 + 19) as u32
        };
        let stem = format!("{city}_{:06}_{frame:06}", i);
        let img_path = cs
            .join("leftImg8bit")
            .join(split)
            .join(city)
            .join(format!("{stem}_leftImg8bit.png"));
        io(png_io::write_rgb(&img_path, &s.image))?;
        let gt = cs.join("gtFine").join(split).join(city);
        io(png_io::write_gray8(
            &gt.join(format!("{stem}_gtFine_labelIds.png")),
            w,
            h,
            &s.label_ids,
        ))?;
        io(png_io::write_gray16(
            &gt.join(format!("{stem}_gtFine_instanceIds.png")),
            w,
            h,
            &s.instance_ids,
        ))?;
        let rgba: Vec<u8> = s
            .label_ids
            .iter()
            .flat_map(|&id| {
                let c = palette[id as usize];
                [c[0], c[1], c[2], 255]
            })
            .collect();
        io(png_io::write_rgba(
            &gt.join(format!("{stem}_gtFine_color.png")),
            w,
            h,
            &rgba,
        ))
    })?;

    let manifest = ToyManifest {
        generator_version: GENERATOR_VERSION,
        seed,
        preset,
        sizes,
        contents: Some(contents(out)?),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| DataError::Invalid {
        path: out.join("toy.json"),
        reason: e.to_string(),
    })?;
    seg_labels::fsutil::write_atomic(&out.join("toy.json"), &json).map_err(|cause| DataError::Write {
        path: out.join("toy.json"),
        cause,
    })?;
    std::fs::remove_file(&marker).map_err(|cause| DataError::Write { path: marker, cause })?;
    Ok(manifest)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let err = |cause| DataError::Write {
        path: path.to_path_buf(),
        cause,
    };
    if let Some(dir) = path.parent() {
        seg_labels::fsutil::create_dir_all(dir).map_err(err)?;
    }
    seg_labels::fsutil::write_atomic(path, bytes).map_err(err)
}

/// Writes an RGB image as a JPEG (quality 90).
pub fn write_jpeg(path: &Path, img: &RgbImage) -> Result<(), DataError> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode(&img.data, img.width, img.height, image::ExtendedColorType::Rgb8)
        .map_err(|e| DataError::Invalid {
            path: path.to_path_buf(),
            reason: format!("cannot encode JPEG: {e}"),
        })?;
    write_file(path, &bytes)
}

/// The [`Contents`] of the benchmark's dataset folders under `dir`.
pub fn contents(dir: &Path) -> Result<Contents, DataError> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> Result<(), DataError> {
        let listing = |cause| DataError::ReadDir {
            path: dir.to_path_buf(),
            cause,
        };
        for entry in std::fs::read_dir(dir).map_err(listing)? {
            let entry = entry.map_err(listing)?;
            if seg_labels::fsutil::is_hidden(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, files)?;
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                files.push((rel.to_string_lossy().replace('\\', "/"), path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for d in DATASET_DIRS {
        if dir.join(d).is_dir() {
            walk(dir, &dir.join(d), &mut files)?;
        }
    }
    files.sort();
    let mut h = seg_labels::fsutil::Fnv::default();
    for (rel, path) in &files {
        let bytes = std::fs::read(path).map_err(|e| DataError::Invalid {
            path: path.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        h.write(rel.as_bytes());
        h.write(&[0]);
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(&bytes);
    }
    Ok(Contents {
        files: files.len(),
        digest: h.hex(),
    })
}

/// Why the benchmark under `dir` must be written (again) to be instance `seed` of `preset`, or
/// `None` when the one there is that benchmark, whole: another preset, seed or generator
/// version, or files missing, added or changed since it was written (the generator is
/// deterministic, so writing it again restores the very files the runs were trained on).
pub fn stale(dir: &Path, seed: u64, preset: Preset) -> Option<String> {
    let Some(m) = read_manifest(dir) else {
        return Some("no complete benchmark there".into());
    };
    if m.preset != preset || m.seed != seed || m.generator_version != GENERATOR_VERSION {
        return Some(format!(
            "the one there is {:?}, seed {}, generator version {}",
            m.preset, m.seed, m.generator_version
        ));
    }
    let Some(written) = m.contents else {
        return Some("the one there has no record of its files (written by an earlier version)".into());
    };
    match contents(dir) {
        Err(e) => Some(format!("the one there cannot be read whole: {e}")),
        Ok(now) if now.files != written.files => Some(format!(
            "the one there holds {} files where {} were written",
            now.files, written.files
        )),
        Ok(now) if now != written => Some("a file of the one there changed since it was written".into()),
        Ok(_) => None,
    }
}

/// Reads `toy.json` if a complete benchmark is present under `dir`.
pub fn read_manifest(dir: &Path) -> Option<ToyManifest> {
    let bytes = std::fs::read(dir.join("toy.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The generated Sim10k-layout source (detection).
pub fn sim10k_path(dir: &Path) -> PathBuf {
    dir.join("sim10k")
}

/// Paths of the generated datasets.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("gta5"), dir.join("synthia"), dir.join("cityscapes"))
}
