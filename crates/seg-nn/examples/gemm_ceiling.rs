//! The machine's single-precision matrix-product ceiling as the convolutions see it: the best
//! of five 2048×2048×2048 products through `gemm` on all rayon threads, in GFLOP/s.
//! `cargo run --release -p seg-nn --example gemm_ceiling`
use std::time::Instant;

fn main() {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        // SAFETY: three n×n row-major buffers of the right length, no aliasing.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        };
        best = best.min(t.elapsed().as_secs_f64());
    }
    assert_eq!(c[0], n as f32 * 0.5);
    println!(
        "gemm ceiling: {:.1} GFLOP/s ({n}^3 f32, {threads} threads)",
        2.0 * (n as f64).powi(3) / best / 1e9
    );
}
