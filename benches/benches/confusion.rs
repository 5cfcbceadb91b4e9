//! Confusion-matrix accumulation on full-resolution Cityscapes-sized maps (2048x1024), in
//! pixels per second, next to memory-bandwidth references over the same bytes: a plain sum
//! of both maps (what any single pass must at least cost once the maps are in cache) and a
//! sum over a 256 MiB buffer (main-memory bandwidth, reported as pixel equivalents at 2 bytes
//! per pixel). Compare with `benches/reference/confusion_numpy.py` (`numpy.bincount`).
//!
//! Measured on the 2-vCPU development machine (Intel Xeon @ 2.50GHz, shared, so expect
//! ±20% run to run), `cargo bench -p seg-benches --bench confusion`, medians:
//!
//! | what                                              | pixels/s      |
//! |---------------------------------------------------|---------------|
//! | `ConfusionMatrix::add`, 2 threads                 | 1.00 G        |
//! | `ConfusionMatrix::add`, 1 thread                  | 0.73 G        |
//! | numpy 2.3.5 masked bincount (same computation)    | 0.078 G       |
//! | numpy 2.3.5 bare `bincount(gt*256+pred)`          | 0.127 G       |
//! | sum of the same 2 x 2 MiB (cached), 1 thread      | 10.6 G        |
//! | 256 MiB sum (main memory), 1 / 2 threads          | 4.2 G / 7.4 G |
//!
//! So `add` runs 13x the equivalent numpy (8x the bare bincount) and is compute-bound at
//! about 3.4 cycles per pixel: about 7% of what a single cached pass over the bytes costs,
//! and 13% of main-memory bandwidth with both threads.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use seg_metrics::ConfusionMatrix;
use std::hint::black_box;

const W: usize = 2048;
const H: usize = 1024;

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Label-map-like data: 16x16 blocks of one class (about 10% ignore), and a prediction that
/// agrees on about 70% of pixels, with per-pixel noise elsewhere.
fn maps() -> (Vec<u8>, Vec<u8>) {
    let mut seed = 42;
    let bw = W / 16;
    let blocks: Vec<u8> = (0..bw * (H / 16))
        .map(|_| {
            let v = (lcg(&mut seed) % 21) as u8;
            if v >= 19 {
                255
            } else {
                v
            }
        })
        .collect();
    let gt: Vec<u8> = (0..W * H).map(|i| blocks[(i / W / 16) * bw + (i % W) / 16]).collect();
    let pred = gt
        .iter()
        .map(|&g| match lcg(&mut seed) % 10 {
            0..=6 if g != 255 => g,
            9 => 255,
            _ => (lcg(&mut seed) % 19) as u8,
        })
        .collect();
    (gt, pred)
}

/// Reads every byte once, eight at a time (wrapping u64 sums vectorise to full load width),
/// so it runs at the speed the memory or cache can deliver the bytes.
fn sum_bytes(a: &[u8]) -> u64 {
    let words = a.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|&v| v as u64).sum();
    words
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .fold(tail, u64::wrapping_add)
}

fn bench(c: &mut Criterion) {
    let (gt, pred) = maps();
    let pixels = (W * H) as u64;
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let threads = rayon::current_num_threads();

    let mut g = c.benchmark_group("confusion_2048x1024");
    g.throughput(Throughput::Elements(pixels));
    g.bench_function(BenchmarkId::new("add", format!("{threads}_threads")), |b| {
        b.iter(|| {
            let mut m = ConfusionMatrix::new();
            m.add(black_box(&gt), black_box(&pred)).unwrap();
            m
        })
    });
    g.bench_function(BenchmarkId::new("add", "1_thread"), |b| {
        single.install(|| {
            b.iter(|| {
                let mut m = ConfusionMatrix::new();
                m.add(black_box(&gt), black_box(&pred)).unwrap();
                m
            })
        })
    });
    // Bandwidth reference: read the same 2 x 2 MiB once, 1 thread (cache-resident).
    g.bench_function(BenchmarkId::new("sum_same_bytes", "1_thread"), |b| {
        b.iter(|| sum_bytes(black_box(&gt)) + sum_bytes(black_box(&pred)))
    });
    g.finish();

    // Main-memory bandwidth: 256 MiB does not fit in any cache.
    let big = vec![1u8; 256 << 20];
    let mut g = c.benchmark_group("memory_bandwidth_256MiB");
    g.throughput(Throughput::Elements(big.len() as u64 / 2));
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("sum_as_pixel_pairs", "1_thread"), |b| {
        b.iter(|| sum_bytes(black_box(&big)))
    });
    g.bench_function(
        BenchmarkId::new("sum_as_pixel_pairs", format!("{threads}_threads")),
        |b| {
            use rayon::prelude::*;
            b.iter(|| black_box(&big).par_chunks(1 << 20).map(sum_bytes).sum::<u64>())
        },
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
