//! Training on a CUDA device gives the CPU's losses: every method, one step of the small model on
//! the quick benchmark from the same weights (later steps drift apart by rounding, which Adam on
//! near-zero adversarial gradients amplifies to about 1% after three steps), then evaluation.
//! Compiled only with `--features cuda`.

use super::{ok, p, toy, train_args};

fn final_losses(run_dir: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let last = text.lines().rfind(|l| l.contains("\"losses\"")).expect("a logged step");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    v["losses"].as_object().unwrap().clone()
}

#[test]
fn every_method_trains_on_cuda_with_the_cpu_losses() {
    let dir = tempfile::tempdir().unwrap();
    let (gta, cs) = (toy().join("gta5"), toy().join("cityscapes"));
    for method in ["source-only", "dann", "fcn-wild", "cross-city", "san"] {
        let mut losses = Vec::new();
        for device in ["cpu", "cuda"] {
            let out = dir.path().join(format!("{method}-{device}"));
            let mut args = train_args(p(&out), p(&gta), p(&cs), method);
            let steps = args.iter().position(|a| *a == "--steps").unwrap() + 1;
            args[steps] = "1";
            args.extend(["--device", device]);
            let text = ok(&args);
            assert!(text.contains("target val mIoU"), "{method} on {device}: {text}");
            losses.push(final_losses(&out));
        }
        assert_eq!(
            losses[0].keys().collect::<Vec<_>>(),
            losses[1].keys().collect::<Vec<_>>()
        );
        for (k, c) in &losses[0] {
            let (c, g) = (c.as_f64().unwrap(), losses[1][k].as_f64().unwrap());
            assert!(g.is_finite(), "{method}: {k} is {g} on CUDA");
            assert!(
                (c - g).abs() <= 1e-2 * c.abs().max(1e-2),
                "{method}: {k} CPU {c} vs CUDA {g}"
            );
        }
    }
}
