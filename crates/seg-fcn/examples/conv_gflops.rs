//! GFLOP/s of the three convolution kernels at VGG16-FCN8s's layer shapes (1×3×256×512 input):
//! `cargo run --release -p seg-fcn --example conv_gflops [layer index …] [-- reps]`. The GF/s
//! count the direct convolution's multiply-adds whatever algorithm runs (`SEG_WINOGRAD=0` for
//! the im2col products alone).
use seg_kernels::conv::{forward as forward_cpu, input_grad as input_grad_cpu, weight_grad as weight_grad_cpu};
use seg_kernels::Geom;
use std::time::Instant;

/// Large buffers are reused across training steps instead of re-faulted (see `seg_alloc`).
#[global_allocator]
static ALLOC: seg_alloc::CachingAlloc = seg_alloc::CachingAlloc::new();

fn best(reps: usize, f: &mut dyn FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // (c, co, k, pad, h, w)
    let layers = [
        (3, 64, 3, 1, 256, 512),
        (64, 64, 3, 1, 256, 512),
        (64, 128, 3, 1, 128, 256),
        (128, 128, 3, 1, 128, 256),
        (256, 256, 3, 1, 64, 128),
        (512, 512, 3, 1, 32, 64),
        (512, 512, 3, 1, 16, 32),
        (512, 4096, 7, 3, 8, 16),
        (4096, 4096, 1, 0, 8, 16),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (which, reps) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], args.get(i + 1).and_then(|r| r.parse().ok()).unwrap_or(3)),
        None => (&args[..], 3),
    };
    let which: Vec<usize> = which.iter().filter_map(|a| a.parse().ok()).collect();
    let (mut tf, mut tb, mut tw) = (0.0, 0.0, 0.0);
    for (i, (c, co, k, pad, h, w)) in layers.into_iter().enumerate() {
        if !which.is_empty() && !which.contains(&i) {
            continue;
        }
        let g = Geom::conv((1, c, h, w), (co, c, k, k), 1, pad, 1).unwrap();
        let x = vec![0.5f32; c * h * w];
        let wt = vec![0.01f32; co * c * k * k];
        let dy = vec![0.1f32; co * g.ho * g.wo];
        let flops = 2.0 * (co * c * k * k * g.ho * g.wo) as f64;
        let f = best(reps, &mut || drop(forward_cpu(&g, &x, &wt)));
        let b = best(reps, &mut || drop(input_grad_cpu(&g, &dy, &wt)));
        let wg = best(reps, &mut || drop(weight_grad_cpu(&g, &x, &dy)));
        (tf, tb, tw) = (tf + f, tb + b, tw + wg);
        println!(
            "{c:>4}->{co:<4} k{k} {h}x{w}: fwd {:6.1} ms {:5.1} GF/s | dx {:6.1} ms {:5.1} GF/s | dw {:6.1} ms {:5.1} GF/s",
            f * 1e3,
            flops / f / 1e9,
            b * 1e3,
            flops / b / 1e9,
            wg * 1e3,
            flops / wg / 1e9
        );
    }
    println!("one of each: fwd {tf:.3}s dx {tb:.3}s dw {tw:.3}s");
}
