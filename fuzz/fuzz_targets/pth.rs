//! The ImageNet-weights loader on arbitrary bytes: PyTorch archives (zip and legacy pickle) and
//! safetensors, into a VGG16 first layer's variables (so shape checks run too).
#![no_main]
use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader guards candle's pickle reader with `catch_unwind`; libFuzzer's hook would turn
    // that caught panic into a crash, so this target's hook stays silent. A panic outside the
    // guard still reaches libfuzzer-sys's own `catch_unwind`, which aborts: a crash.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    });
    let dir = std::env::temp_dir().join(format!("seg-fuzz-pth-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let vars = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let _ = vb.get((64, 3, 3, 3), "model.features.0.weight");
    let _ = vb.get(64, "model.features.0.bias");
    for name in ["w.pth", "w.safetensors"] {
        let file = dir.join(name);
        if std::fs::write(&file, data).is_ok() {
            if let Ok(r) = seg_fcn::weights::load_init_weights(&vars, "model", &file) {
                // What was loaded is finite-sized and readable.
                let d = vars.data().lock().unwrap();
                for n in r.loaded {
                    let _ = d.get(&format!("model.{n}")).map(|v| v.as_tensor().sum_all());
                }
            }
        }
    }
});
