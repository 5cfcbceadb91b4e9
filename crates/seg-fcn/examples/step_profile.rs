//! Times the pieces of one training step of the small model (forward, loss, backward).
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = seg_nn::init::seeded_builder(&vars, 1, DType::F32, &dev);
    let m = seg_fcn::build(seg_fcn::ModelName::Small, 19, vb.pp("model"), &vars).unwrap();
    let x = Tensor::randn(0f32, 1.0, (8, 3, 64, 128), &dev).unwrap();
    let y = Tensor::zeros((8, 64, 128), DType::U32, &dev).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let f = m.forward_taps(&x, true, &[]).unwrap();
        let t1 = t.elapsed();
        let l = seg_nn::cross_entropy_ignore(f.logits().unwrap(), &y, 255).unwrap();
        let t2 = t.elapsed();
        let _g = seg_nn::backward(&l).unwrap();
        let t3 = t.elapsed();
        println!("fwd {:?} loss {:?} bwd {:?}", t1, t2 - t1, t3 - t2);
    }
}
