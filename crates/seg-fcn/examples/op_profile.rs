//! Times forward+backward of single ops at the small model's shapes.
use candle_core::{Device, Tensor, Var};
use std::time::Instant;

fn time(name: &str, f: impl Fn() -> Tensor, x: &Var) {
    let t = Instant::now();
    for _ in 0..5 {
        let y = f();
        let _ = seg_nn::backward(&y.sum_all().unwrap()).unwrap();
    }
    let _ = x;
    println!("{name}: {:?}/iter", t.elapsed() / 5);
}

fn main() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 16, 64, 128), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (24, 16, 3, 3), &dev).unwrap()).unwrap();
    time("pool reshape+max", || seg_nn::max_pool2x2(x.as_tensor()).unwrap(), &x);
    time("pool candle", || x.as_tensor().max_pool2d(2).unwrap(), &x);
    time(
        "conv ops 16->24",
        || seg_nn::ops::conv::conv2d(x.as_tensor(), w.as_tensor(), 1, 1, 1).unwrap(),
        &x,
    );
    time(
        "conv candle 16->24",
        || x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap(),
        &x,
    );
    time("relu", || x.as_tensor().relu().unwrap(), &x);
    let vars = candle_nn::VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 1, candle_core::DType::F32, &dev);
    let bn = seg_nn::BatchNorm2d::new(16, vb, &vars).unwrap();
    use candle_core::ModuleT;
    time("bn", || bn.forward_t(x.as_tensor(), true).unwrap(), &x);
    let l = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 19, 8, 16), &dev).unwrap()).unwrap();
    time(
        "resize 8x16->64x128 (19ch)",
        || seg_nn::resize_bilinear(l.as_tensor(), 64, 128).unwrap(),
        &l,
    );
}
