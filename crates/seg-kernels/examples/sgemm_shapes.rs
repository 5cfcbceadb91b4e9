//! GFLOP/s of `seg_kernels::sgemm` next to the `gemm` crate at the products a VGG16-FCN8s step makes
//! (and 2048³), both operand layouts: `cargo run --release -p seg-kernels --example sgemm_shapes`.
use seg_kernels::sgemm::{sgemm, View};
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

fn view(rows: usize, cols: usize, by_rows: bool) -> View {
    if by_rows {
        View {
            rs: cols as isize,
            cs: 1,
        }
    } else {
        View {
            rs: 1,
            cs: rows as isize,
        }
    }
}

fn main() {
    assert!(seg_kernels::sgemm::available(), "needs AVX-512");
    let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
    // (m, n, k, A by rows, B by rows, what)
    let shapes = [
        (2048, 2048, 2048, true, true, "square"),
        (64, 1536, 576, false, true, "conv1_2 fwd band"),
        (576, 1536, 64, false, true, "conv1_2 dx band"),
        (64, 576, 1536, true, false, "conv1_2 dw band"),
        (512, 512, 4608, false, true, "conv5 fwd"),
        (4096, 128, 25088, true, true, "fc6 fwd"),
        (25088, 128, 4096, false, true, "fc6 dx"),
        (4096, 25088, 128, true, false, "fc6 dw"),
        (4096, 128, 4096, false, true, "fc7 dx"),
    ];
    for (m, n, k, ar, br, what) in shapes {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let (va, vb, vc) = (view(m, k, ar), view(k, n, br), view(m, n, true));
        let flops = 2.0 * (m * n * k) as f64;
        // SAFETY: AVX-512 asserted at the start; the buffers hold m·k, k·n and m·n values for these views.
        let mut ours = || unsafe { sgemm(m, n, k, c.as_mut_ptr(), vc, false, a.as_ptr(), va, b.as_ptr(), vb) };
        let t1 = best(&mut ours);
        let mut c2 = vec![0f32; m * n];
        // SAFETY: the same buffers and views, for `gemm`.
        let mut theirs = || unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c2.as_mut_ptr(),
                vc.cs,
                vc.rs,
                false,
                a.as_ptr(),
                va.cs,
                va.rs,
                b.as_ptr(),
                vb.cs,
                vb.rs,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        };
        let t2 = best(&mut theirs);
        assert!((c[0] - c2[0]).abs() < 1e-3 * c2[0].abs());
        println!(
            "{what:<18} {m:>5}x{n:<5}x{k:<5}: sgemm {:6.1} GF/s  gemm {:6.1} GF/s",
            flops / t1 / 1e9,
            flops / t2 / 1e9
        );
    }
}
