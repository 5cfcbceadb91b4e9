//! What the output-space discriminators look at (AdaptSegNet's softmax, AdvEnt's weighted
//! self-information).

use candle_core::{Device, Tensor};
use seg_core::Rng;
use seg_heads::entropy::normalized_entropy;
use seg_heads::OutputMap;

use crate::common::randn;

#[test]
fn advents_maps_are_normalised_by_log_c_and_sum_to_the_normalised_entropy() {
    let logits = (randn(&mut Rng::new(3), &[2, 19, 4, 6], 0.0) * 3.0).unwrap();
    let maps = OutputMap::SelfInformation.of(&logits).unwrap();
    assert_eq!(maps.dims(), &[2, 19, 4, 6]);
    let per_pixel = maps.sum(1).unwrap();
    let (lo, hi) = (
        per_pixel.min_all().unwrap().to_scalar::<f32>().unwrap(),
        per_pixel.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!(lo >= 0.0 && hi <= 1.0 + 1e-6, "{lo}..{hi}");
    let mean = per_pixel.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let want = normalized_entropy(&logits).unwrap().to_scalar::<f32>().unwrap();
    assert!((mean - want).abs() < 1e-5, "{mean} vs {want}");
    // Uniform predictions: every class's map is log C / C / log C = 1 / C.
    let uniform = OutputMap::SelfInformation
        .of(&Tensor::zeros((1, 19, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let v = uniform.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| (x - 1.0 / 19.0).abs() < 1e-6), "{v:?}");
}
