//! The kernels on plain slices against direct loops: convolutions (every piece, with and
//! without the AVX-512 paths), pooling, batch norm, cross-entropy and the optimiser updates.

use seg_kernels::{conv, norm, pool, update, xent, Geom, Settings};

/// A small seeded generator (xorshift), values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
}

/// `y[n, o, oy, ox] = Σ x[n, c, oy·s + ky·d − p, ox·s + kx·d − p] · w[o, c, ky, kx]`, directly.
fn direct(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; g.n * g.co * g.ho * g.wo];
    for n in 0..g.n {
        for o in 0..g.co {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut s = 0f64;
                    for c in 0..g.c {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky * g.dil) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx * g.dil) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                let wv = w[((o * g.c + c) * g.kh + ky) * g.kw + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((n * g.co + o) * g.ho + oy) * g.wo + ox] = s as f32;
                }
            }
        }
    }
    y
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

/// (n, c, co, k, stride, pad, dil, h, w): pointwise, strided, dilated, padded, and 3×3 layers
/// wide enough for Winograd.
/// (n, c, co, k, stride, pad, dil, h, w).
type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: [Case; 8] = [
    (2, 3, 4, 1, 1, 0, 1, 5, 7),
    (1, 2, 3, 3, 1, 1, 1, 6, 5),
    (2, 3, 2, 3, 2, 1, 1, 9, 8),
    (1, 2, 3, 3, 1, 2, 2, 7, 7),
    (2, 4, 3, 4, 2, 1, 1, 8, 10),
    (1, 3, 5, 7, 1, 3, 1, 9, 9),
    (2, 16, 16, 3, 1, 1, 1, 10, 12),
    (1, 24, 32, 3, 1, 2, 1, 7, 9),
];

/// Forward against the direct sum, and the two gradients as its exact adjoints:
/// `<conv(x, w), dy> = <x, input_grad(dy, w)> = <w, weight_grad(x, dy)>`.
fn check_conv_pieces() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (n, c, co, k, stride, pad, dil, h, w) in CASES {
        let g = Geom::conv((n, c, h, w), (co, c, k, k), stride, pad, dil).unwrap();
        let x = rng.vec(n * c * h * w);
        let wt = rng.vec(co * c * k * k);
        let dy = rng.vec(n * co * g.ho * g.wo);
        let y = conv::forward(&g, &x, &wt);
        let reference = direct(&g, &x, &wt);
        let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(max_diff(&y, &reference) < 1e-5 * scale, "forward {g:?}");
        let dx = conv::input_grad(&g, &dy, &wt);
        let dw = conv::weight_grad(&g, &x, &dy);
        assert_eq!((dx.len(), dw.len()), (x.len(), wt.len()));
        let (lhs, by_x, by_w) = (dot(&reference, &dy), dot(&x, &dx), dot(&wt, &dw));
        let tol = 1e-4 * (1.0 + lhs.abs());
        assert!((lhs - by_x).abs() < tol, "input grad {g:?}: {lhs} vs {by_x}");
        assert!((lhs - by_w).abs() < tol, "weight grad {g:?}: {lhs} vs {by_w}");
        let b = rng.vec(co);
        let fused = conv::forward_bias_relu(&g, &x, &wt, &b);
        let plane = g.ho * g.wo;
        let unfused: Vec<f32> = reference
            .iter()
            .enumerate()
            .map(|(i, v)| (v + b[(i / plane) % co]).max(0.0))
            .collect();
        assert!(max_diff(&fused, &unfused) < 1e-5 * scale, "bias + relu {g:?}");
    }
}

/// Both settings, in one process: the AVX-512 sgemm and Winograd where present, and the
/// portable `gemm` path, each against the direct loops.
#[test]
fn convolutions_match_direct_loops_on_every_path() {
    let before = Settings::current();
    for s in [
        Settings {
            sgemm: true,
            winograd: true,
        },
        Settings {
            sgemm: false,
            winograd: false,
        },
    ] {
        s.apply();
        assert_eq!(Settings::current(), s);
        assert_eq!(
            seg_kernels::winograd::enabled(),
            s.winograd && seg_kernels::sgemm::available()
        );
        check_conv_pieces();
    }
    before.apply();
}

#[test]
fn geometry_errors_name_the_mismatch() {
    let e = Geom::conv((1, 3, 8, 8), (4, 2, 3, 3), 1, 1, 1).unwrap_err();
    assert!(e.to_string().contains("3 channels"), "{e}");
    let e = Geom::conv((1, 3, 2, 2), (4, 3, 5, 5), 1, 0, 1).unwrap_err();
    assert!(e.to_string().contains("smaller than"), "{e}");
    assert!(Geom::conv((1, 3, 8, 8), (4, 3, 3, 3), 0, 1, 1).is_err());
    assert!(Geom::conv((0, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1).is_err());
    let g = Geom::conv((2, 3, 9, 8), (4, 3, 3, 3), 2, 1, 1).unwrap();
    assert_eq!((g.ho, g.wo), (5, 4));
}

#[test]
fn relu_and_bias_gradients_match_direct_sums() {
    let mut rng = Rng(7);
    let (n, c, plane) = (3, 4, 37);
    let d = rng.vec(n * c * plane);
    let r = rng.vec(n * c * plane);
    let (g, db) = direct_relu_grad(c, plane, &d, &r);
    let (kg, kdb) = conv::relu_grad_and_bias_sum(n, c, plane, &d, &r);
    assert_eq!(g, kg);
    assert!(max_diff(&db, &kdb) < 1e-5);
}

fn direct_relu_grad(c: usize, plane: usize, d: &[f32], r: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let g: Vec<f32> = d.iter().zip(r).map(|(&d, &r)| if r > 0.0 { d } else { 0.0 }).collect();
    let mut db = vec![0f32; c];
    for (i, v) in g.iter().enumerate() {
        db[(i / plane) % c] += v;
    }
    (g, db)
}

#[test]
fn max_pool_takes_the_first_maximum_of_each_window() {
    // One 2×4 plane with a tie in the second window.
    let x = [1.0, 5.0, 3.0, 3.0, 2.0, 4.0, 0.0, 3.0];
    assert_eq!(pool::max_pool2(&x, 1, 2, 4), vec![5.0, 3.0]);
    let dx = pool::max_pool2_grad(&x, &[10.0, 20.0], 1, 2, 4);
    assert_eq!(dx, vec![0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let mut rng = Rng(3);
    let x = rng.vec(2 * 3 * 6 * 8);
    let y = pool::max_pool2(&x, 6, 6, 8);
    for (p, plane) in x.chunks(48).enumerate() {
        for oy in 0..3 {
            for ox in 0..4 {
                let m = [0, 1, 8, 9]
                    .iter()
                    .map(|o| plane[2 * oy * 8 + 2 * ox + o])
                    .fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(y[p * 12 + oy * 4 + ox], m);
            }
        }
    }
}

#[test]
fn batch_norm_normalises_and_its_gradient_matches_finite_differences() {
    let mut rng = Rng(11);
    let d = norm::Dims { n: 2, c: 3, hw: 10 };
    let x = rng.vec(60);
    let (gamma, beta) = (vec![1.5, -0.5, 2.0], vec![0.1, 0.2, -0.3]);
    let y = norm::forward(&x, d, &gamma, &beta, 1e-5);
    for (ch, (&gm, &bt)) in gamma.iter().zip(&beta).enumerate() {
        let vals: Vec<f32> = (0..2).flat_map(|b| y[(b * 3 + ch) * 10..][..10].to_vec()).collect();
        let mean = vals.iter().sum::<f32>() / 20.0;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 20.0;
        assert!(
            (mean - bt).abs() < 1e-4 && (var.sqrt() - gm.abs()).abs() < 1e-3,
            "channel {ch}"
        );
    }
    // L = <y, u> for a fixed u: dL/dx by central differences.
    let u = rng.vec(60);
    let (dx, dgamma, dbeta) = norm::backward(&x, &u, d, &gamma, 1e-5);
    let loss = |x: &[f32]| dot(&norm::forward(x, d, &gamma, &beta, 1e-5), &u);
    for i in [0, 7, 23, 59] {
        let (mut a, mut b) = (x.clone(), x.clone());
        a[i] += 1e-2;
        b[i] -= 1e-2;
        let fd = (loss(&a) - loss(&b)) / 2e-2;
        assert!(
            (fd - dx[i] as f64).abs() < 2e-2 * (1.0 + fd.abs()),
            "dx[{i}]: {fd} vs {}",
            dx[i]
        );
    }
    for ch in 0..3 {
        let sum: f32 = (0..2).flat_map(|b| u[(b * 3 + ch) * 10..][..10].to_vec()).sum();
        assert!((dbeta[ch] - sum).abs() < 1e-4);
    }
    assert_eq!(dgamma.len(), 3);
}

#[test]
fn cross_entropy_skips_ignored_pixels_and_its_gradient_matches_finite_differences() {
    let mut rng = Rng(5);
    let (c, hw) = (4, 6);
    let x = rng.vec(2 * c * hw);
    let labels: Vec<u32> = vec![0, 1, 2, 3, 255, 1, 2, 9, 0, 255, 3, 3];
    let valid = xent::valid(&labels, c, 255);
    assert_eq!(valid, 9);
    let mut total = 0f64;
    for (i, &t) in labels.iter().enumerate() {
        if t == 255 || t as usize >= c {
            continue;
        }
        let (img, p) = (i / hw, i % hw);
        let z: Vec<f64> = (0..c).map(|k| x[img * c * hw + k * hw + p] as f64).collect();
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        total += lse - z[t as usize];
    }
    let loss = xent::loss(&x, &labels, c, hw, 255);
    assert!((loss as f64 - total / valid as f64).abs() < 1e-5);
    let g = xent::grad(&x, &labels, c, hw, 255, 1.0 / valid as f32);
    for i in [0, 5, 13, 30, 47] {
        let (mut a, mut b) = (x.clone(), x.clone());
        a[i] += 1e-2;
        b[i] -= 1e-2;
        let fd = (xent::loss(&a, &labels, c, hw, 255) - xent::loss(&b, &labels, c, hw, 255)) / 2e-2;
        assert!((fd - g[i]).abs() < 1e-3, "grad[{i}]: {fd} vs {}", g[i]);
    }
    assert_eq!(xent::loss(&x, &[255; 12], c, hw, 255), 0.0);
}

#[test]
fn optimiser_updates_follow_their_formulas() {
    let mut rng = Rng(9);
    let n = 200_000; // several parallel chunks
    let (g, p0) = (rng.vec(n), rng.vec(n));
    let mut buf = rng.vec(n);
    let b0 = buf.clone();
    update::momentum(&mut buf, &g, &p0, 0.9, 1e-4);
    for i in [0, 65_536, n - 1] {
        assert_eq!(buf[i], b0[i] * 0.9 + (g[i] + p0[i] * 1e-4));
    }
    let mut p = p0.clone();
    update::descend(&mut p, &buf, 0.01);
    assert_eq!(p[7], p0[7] - buf[7] * 0.01);
    let mut v = vec![0f32; n];
    update::moment(&mut v, &g, &p0, 0.999, 0.001, 0.0, true);
    assert_eq!(v[3], g[3] * g[3] * 0.001);
    let mut q = p0.clone();
    update::adam_step(&mut q, &g, &v, 1e-3, 0.1, 0.001, 1e-8);
    let expect = p0[3] - (g[3] / 0.1) / ((v[3] / 0.001).sqrt() + 1e-8) * 1e-3;
    assert_eq!(q[3], expect);
}
