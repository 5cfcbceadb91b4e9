//! The machine's single-precision matrix-product ceiling as the convolutions see it: the best
//! of five 2048×2048×2048 products on all rayon threads, through `gemm` and through
//! `seg_kernels::sgemm` (where AVX-512 runs), in GFLOP/s; the ceiling is the faster of the two.
//! `cargo run --release -p seg-kernels --example gemm_ceiling`
use std::time::Instant;

fn best(f: &mut dyn FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

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
    let flop = 2.0 * (n as f64).powi(3);
    let t_gemm = best(&mut || {
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
        }
    });
    assert_eq!(c[0], n as f32 * 0.5);
    println!("gemm crate: {:.1} GFLOP/s", flop / t_gemm / 1e9);
    let mut rate = flop / t_gemm / 1e9;
    if seg_kernels::sgemm::available() {
        let v = seg_kernels::sgemm::View { rs: n as isize, cs: 1 };
        let t_ours = best(&mut || {
            // SAFETY: as above; AVX-512 checked.
            unsafe { seg_kernels::sgemm::sgemm(n, n, n, c.as_mut_ptr(), v, false, a.as_ptr(), v, b.as_ptr(), v) }
        });
        assert_eq!(c[0], n as f32 * 0.5);
        println!("seg_kernels::sgemm: {:.1} GFLOP/s", flop / t_ours / 1e9);
        rate = rate.max(flop / t_ours / 1e9);
    }
    println!("gemm ceiling: {rate:.1} GFLOP/s ({n}^3 f32, {threads} threads)");
}
