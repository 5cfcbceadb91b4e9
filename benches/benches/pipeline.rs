//! Data pipeline throughput, images per second: decode + augment (random scale, 1024×512 crop,
//! flip, normalise) + collate of full-resolution Cityscapes-format PNGs (2048×1024), batch 8, on
//! all cores. The PyTorch `DataLoader` reference is `benches/reference/dataloader_torch.py`.

use std::sync::Arc;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use seg_core::Domain;
use seg_data::{open_dataset, Augment, DatasetName, DatasetOptions, Loader};
use seg_labels::png_io;

/// Large buffers are reused across training steps instead of re-faulted (see `seg_alloc`).
#[global_allocator]
static ALLOC: seg_alloc::CachingAlloc = seg_alloc::CachingAlloc::new();

fn fixture(dir: &std::path::Path, n: usize) {
    let (w, h) = (2048u32, 1024u32);
    for i in 0..n {
        let stem = format!("frankfurt_{i:06}_000019");
        let data: Vec<u8> = (0..w * h * 3)
            .map(|v| ((v / 3 * 7 + i as u32 * 13 + (v / (3 * w)) * 5) % 251) as u8)
            .collect();
        let img = png_io::RgbImage {
            width: w,
            height: h,
            data,
        };
        png_io::write_rgb(
            &dir.join(format!("leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png")),
            &img,
        )
        .unwrap();
        let ids: Vec<u8> = (0..w * h)
            .map(|v| [7u8, 8, 11, 21, 23, 26][((v % w) / 341) as usize % 6])
            .collect();
        png_io::write_gray8(
            &dir.join(format!("gtFine/val/frankfurt/{stem}_gtFine_labelIds.png")),
            w,
            h,
            &ids,
        )
        .unwrap();
    }
}

fn bench(c: &mut Criterion) {
    // SEG_BENCH_PIPELINE_DIR keeps the fixture for the PyTorch reference to read the same files.
    let tmp = tempfile::tempdir().unwrap();
    let dir =
        std::env::var_os("SEG_BENCH_PIPELINE_DIR").map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    if !dir.join("leftImg8bit").exists() {
        fixture(&dir, 16);
    }
    let opts = DatasetOptions {
        require_labels: true,
        ..Default::default()
    };
    let ds = Arc::new(open_dataset(DatasetName::Cityscapes, &dir, "val", opts).unwrap());
    let aug = Augment {
        crop: Some([1024, 512]),
        scale_range: [0.75, 1.25],
        ..Default::default()
    };
    let mut loader = Loader::new(ds, 8, aug, 0, Domain::Source, Device::Cpu);
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(8));
    g.bench_function("cityscapes_2048x1024_crop1024x512_batch8", |b| {
        b.iter(|| loader.next_batch().unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
