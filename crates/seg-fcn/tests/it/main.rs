//! Shape, tap and weight-loading tests of the FCN models.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use seg_core::FeatureTap;
use seg_fcn::{build, ModelName};

/// The error loading `path` into `vars` gives, as text.
fn refusal(vars: &VarMap, path: &Path) -> String {
    seg_fcn::weights::load_init_weights(vars, "model", path)
        .unwrap_err()
        .to_string()
}

fn model(name: ModelName) -> (VarMap, Box<dyn seg_core::Backbone>) {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let m = build(name, 19, vb.pp("model"), &vars).unwrap();
    (vars, m)
}

/// Every tap's map has the channels and stride the model reports for it.
fn taps_match_what_the_model_reports(m: &dyn seg_core::Backbone, f: &seg_core::Features, h: usize, w: usize) {
    for &tap in m.taps() {
        let (_, c, th, tw) = f.get(tap).unwrap().dims4().unwrap();
        let s = m.tap_stride(tap).unwrap();
        assert_eq!(
            (c, th * s, tw * s),
            (m.tap_channels(tap).unwrap(), h, w),
            "{}",
            tap.name()
        );
    }
}

#[test]
fn small_model_taps_have_the_documented_shapes() {
    let (_, m) = model(ModelName::Small);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 40, 56), &Device::Cpu).unwrap();
    let f = m.forward_taps(&x, true, m.taps()).unwrap();
    assert_eq!(f.logits().unwrap().dims(), &[2, 19, 40, 56]);
    assert_eq!(f.get(FeatureTap::Conv1).unwrap().dims(), &[2, 16, 40, 56]);
    assert_eq!(f.get(FeatureTap::Fc7).unwrap().dims(), &[2, 64, 5, 7]);
    assert!(m.tap_channels(FeatureTap::Pool4).is_none());
    assert!(m.tap_stride(FeatureTap::Pool4).is_none());
    taps_match_what_the_model_reports(m.as_ref(), &f, 40, 56);
    // Resuming from conv5 with the same map reproduces the logits (eval mode is deterministic).
    let f = m.forward_taps(&x, false, m.taps()).unwrap();
    let again = m
        .forward_from(&f, FeatureTap::Conv5, f.get(FeatureTap::Conv5).unwrap(), false)
        .unwrap();
    let d = (again - f.logits().unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5);
}

#[test]
fn reduced_vgg_fcn8s_has_torchvision_names_and_stride_32() {
    let (vars, m) = model(ModelName::Vgg16Fcn8sReduced);
    let names: Vec<String> = vars.data().lock().unwrap().keys().cloned().collect();
    for n in [
        "model.features.0.weight",
        "model.features.28.bias",
        "model.fc6.weight",
        "model.upscore8.weight",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing");
    }
    assert_eq!(m.stride(), 32);
    assert_eq!(ModelName::Vgg16Fcn8sReduced.stride(), m.stride());
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 96), &Device::Cpu).unwrap();
    let f = m.forward_taps(&x, false, m.taps()).unwrap();
    assert_eq!(f.logits().unwrap().dims(), &[1, 19, 64, 96]);
    assert_eq!(f.get(FeatureTap::Pool3).unwrap().dims(), &[1, 256, 8, 12]);
    assert_eq!(f.get(FeatureTap::Pool4).unwrap().dims(), &[1, 512, 4, 6]);
    assert_eq!(f.get(FeatureTap::Fc7).unwrap().dims(), &[1, 1024, 2, 3]);
    taps_match_what_the_model_reports(m.as_ref(), &f, 64, 96);
}

#[test]
fn torchvision_keys_load_into_the_model_and_mismatches_are_errors() {
    let (vars, _m) = model(ModelName::Vgg16Fcn8sReduced);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vgg16.safetensors");
    let w = Tensor::full(0.5f32, (64, 3, 3, 3), &Device::Cpu).unwrap();
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("features.0.weight".into(), w);
    t.insert(
        "features.0.bias".into(),
        Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "classifier.6.weight".into(),
        Tensor::zeros((10, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &path).unwrap();
    let r = seg_fcn::weights::load_init_weights(&vars, "model", &path).unwrap();
    assert_eq!(r.loaded, vec!["features.0.bias", "features.0.weight"]);
    assert_eq!(r.skipped, vec!["classifier.6.weight"]);
    // The reduced model's other 12 conv layers are not in the file: named, as a warning says.
    assert_eq!(r.missing.len(), 24, "{:?}", r.missing);
    assert!(r.missing.contains(&"features.28.weight".to_string()), "{:?}", r.missing);
    assert!(
        !r.missing.iter().any(|k| k.starts_with("classifier.")),
        "reduced fc6/fc7 are not VGG16's"
    );
    // DataParallel's `module.` prefix is dropped in safetensors files too, and a safetensors
    // file renamed `.pth` is read by its bytes.
    let prefixed: HashMap<String, Tensor> = t.iter().map(|(k, v)| (format!("module.{k}"), v.clone())).collect();
    let renamed = dir.path().join("dp.pth");
    candle_core::safetensors::save(&prefixed, &renamed).unwrap();
    let r = seg_fcn::weights::load_init_weights(&vars, "model", &renamed).unwrap();
    assert_eq!(r.loaded, vec!["features.0.bias", "features.0.weight"]);
    assert_eq!(
        r.summary(&renamed),
        format!(
            "loaded 2 tensors from {} (1 skipped: classifier.6.weight)",
            renamed.display()
        )
    );
    // A classifier in another shape is the reduced model's to skip (its fc7 is not VGG16's),
    // and refused with both shapes by a model whose fc7 is VGG16's.
    t.insert(
        "classifier.3.weight".into(),
        Tensor::zeros((10, 10), DType::F32, &Device::Cpu).unwrap(),
    );
    let odd = dir.path().join("odd-classifier.safetensors");
    candle_core::safetensors::save(&t, &odd).unwrap();
    let r = seg_fcn::weights::load_init_weights(&vars, "model", &odd).unwrap();
    assert!(
        r.skipped.contains(&"classifier.3.weight".to_string()),
        "{:?}",
        r.skipped
    );
    let fc7 = VarMap::new();
    let vb = VarBuilder::from_varmap(&fc7, DType::F32, &Device::Cpu).pp("model");
    vb.pp("features.0").get((64, 3, 3, 3), "weight").unwrap();
    vb.pp("fc7").get((4096, 4096, 1, 1), "weight").unwrap();
    let e = refusal(&fc7, &odd);
    assert!(
        e.contains("classifier.3.weight") && e.contains("[10, 10]") && e.contains("[4096, 4096, 1, 1]"),
        "{e}"
    );
    let warning = r.missing_warning(&path).unwrap();
    assert!(
        warning.contains("vgg16.safetensors")
            && warning.contains("24 of the model's ImageNet-initialised tensors")
            && warning.contains("and 18 more"),
        "{warning}"
    );
    let v = vars.data().lock().unwrap()["model.features.0.weight"]
        .as_tensor()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(v, 0.5);

    t.insert(
        "features.2.weight".into(),
        Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &path).unwrap();
    let e = refusal(&vars, &path);
    assert!(e.contains("features.2.weight") && e.contains("[64, 64, 3, 3]"), "{e}");
    // A model without VGG16's layers takes no ImageNet weights; a run's checkpoint is pointed
    // to model.init_from.
    let (small, _m) = model(ModelName::Small);
    let e = refusal(&small, &path);
    assert!(
        e.contains("has no layer that takes ImageNet weights") && e.contains("init_from"),
        "{e}"
    );
    let mut ck: HashMap<String, Tensor> = HashMap::new();
    ck.insert(
        "model.features.0.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let ck_path = dir.path().join("checkpoint.safetensors");
    candle_core::safetensors::save(&ck, &ck_path).unwrap();
    let e = refusal(&vars, &ck_path);
    assert!(
        e.contains("no tensor in the file matches") && e.contains("model.init_from"),
        "{e}"
    );
    // A NaN in the file is refused naming the file and the tensor (it trained on as zeros
    // behind the ReLUs until the first checkpoint refused to be written).
    let mut nan: HashMap<String, Tensor> = HashMap::new();
    let mut w = vec![0.5f32; 64 * 27];
    w[100] = f32::NAN;
    nan.insert(
        "features.0.weight".into(),
        Tensor::from_vec(w, (64, 3, 3, 3), &Device::Cpu).unwrap(),
    );
    let nan_path = dir.path().join("nan.safetensors");
    candle_core::safetensors::save(&nan, &nan_path).unwrap();
    let e = refusal(&vars, &nan_path);
    assert!(
        e.contains("nan.safetensors") && e.contains("features.0.weight") && e.contains("NaN"),
        "{e}"
    );
    std::fs::write(&path, b"not safetensors").unwrap();
    let e = refusal(&vars, &path);
    assert!(e.contains("vgg16.safetensors"), "{e}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Loads a fixture holding VGG16's first layer: the report, the weight's values in row-major
/// order and the bias.
fn load_first_layer(file: &str) -> (seg_fcn::weights::InitReport, Vec<f32>, Vec<f32>) {
    let (vars, _m) = model(ModelName::Vgg16Fcn8sReduced);
    let r = seg_fcn::weights::load_init_weights(&vars, "model", &fixture(file)).unwrap();
    assert_eq!(r.loaded, vec!["features.0.bias", "features.0.weight"], "{file}");
    let data = vars.data().lock().unwrap();
    let w = data["model.features.0.weight"].as_tensor().flatten_all().unwrap();
    let b = data["model.features.0.bias"].as_tensor();
    (r, w.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap())
}

/// Loads a fixture holding VGG16's first layer and checks every value.
fn first_layer_loads(file: &str) {
    let (r, w, b) = load_first_layer(file);
    assert_eq!(r.skipped, vec!["classifier.6.bias"], "{file}");
    assert_eq!(w.len(), 1728);
    assert!(
        w.iter().enumerate().all(|(k, &v)| v == k as f32 / 1000.0),
        "{file}: {:?}",
        &w[..4]
    );
    assert_eq!(
        b,
        (10..74).map(|k| k as f32).collect::<Vec<_>>(),
        "{file}: the view's storage offset"
    );
}

#[test]
fn torchvision_pth_archives_load_as_they_come() {
    // Written by PyTorch's torch.save with torchvision's key names (tests/fixtures/README.md),
    // in the zip format and in the legacy one torchvision's vgg16-397923af.pth uses.
    for file in ["vgg16-first-layer.pth", "vgg16-first-layer-legacy.pth"] {
        first_layer_loads(file);
    }
    let (vars, _m) = model(ModelName::Vgg16Fcn8sReduced);
    // Renamed `.safetensors`, each is still read as what its bytes say.
    let dir = tempfile::tempdir().unwrap();
    for file in ["vgg16-first-layer.pth", "vgg16-first-layer-legacy.pth"] {
        let renamed = dir.path().join(file.replace(".pth", ".safetensors"));
        std::fs::copy(fixture(file), &renamed).unwrap();
        let r = seg_fcn::weights::load_init_weights(&vars, "model", &renamed).unwrap();
        assert_eq!(r.loaded, vec!["features.0.bias", "features.0.weight"], "{file}");
    }

    // A state_dict with anything but tensors is refused, naming the entry.
    let e = refusal(&vars, &fixture("not-only-tensors.pth"));
    assert!(
        e.contains("not-only-tensors.pth") && e.contains("`epoch`") && e.contains("integer 3"),
        "{e}"
    );

    // A file named .pth that is not an archive names the file and the reason.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("vgg16.pth");
    std::fs::write(&bad, b"not a zip").unwrap();
    let e = refusal(&vars, &bad);
    assert!(e.contains("vgg16.pth") && e.contains("not a PyTorch file"), "{e}");
    // A zip archive cut short says so; a broken .safetensors is called one.
    let whole = std::fs::read(fixture("vgg16-first-layer.pth")).unwrap();
    std::fs::write(&bad, &whole[..whole.len() / 2]).unwrap();
    let e = refusal(&vars, &bad);
    assert!(e.contains("vgg16.pth") && e.contains("a zip archive, cut short"), "{e}");
    let broken = dir.path().join("w.safetensors");
    std::fs::write(&broken, b"\x10\0\0\0\0\0\0\0{\"a\":").unwrap();
    let e = refusal(&vars, &broken);
    assert!(
        e.contains("w.safetensors: cannot load weights: not a valid safetensors file"),
        "{e}"
    );
    // A config given as weights says it was read as safetensors and what is expected; a folder
    // is called a folder.
    let toml = dir.path().join("run.toml");
    std::fs::write(&toml, "[data]\nsource_dataset = \"gta5\"\n").unwrap();
    let e = refusal(&vars, &toml);
    assert!(
        e.contains("run.toml") && e.contains("cannot be read as safetensors") && e.contains(".pth"),
        "{e}"
    );
    let e = refusal(&vars, dir.path());
    assert!(e.contains("a folder, not a weights file"), "{e}");
    // A link to a device is there, but is no file (it was called missing).
    let device = dir.path().join("zero.pth");
    std::os::unix::fs::symlink("/dev/zero", &device).unwrap();
    let e = refusal(&vars, &device);
    assert!(e.contains("zero.pth") && e.contains("not a regular file"), "{e}");
    // A legacy file whose state_dict nests lists a million deep (candle's reader overflowed
    // the stack dropping them and aborted) or was saved with protocol 4.
    let magic = [
        0x80u8, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ];
    let mut deep = magic.to_vec();
    deep.extend([0x80, 2, b'M', 0xe9, 0x03, b'.', 0x80, 2, b'}', b'.', 0x80, 2]);
    deep.extend(std::iter::repeat_n(b']', 1_000_000));
    deep.extend(std::iter::repeat_n(b'a', 999_999));
    deep.push(b'.');
    let nested = dir.path().join("nested.pth");
    std::fs::write(&nested, &deep).unwrap();
    let e = refusal(&vars, &nested);
    assert!(
        e.contains("nested.pth") && e.contains("state_dict") && e.contains("nest over"),
        "{e}"
    );
    let mut four = magic.to_vec();
    four.extend([0x80, 4, 0x95, 1, 0, 0, 0, 0, 0, 0, 0, b'.']);
    std::fs::write(&nested, &four).unwrap();
    let e = refusal(&vars, &nested);
    // At its byte of the file: 15 of magic, 2 of PROTO.
    assert!(e.contains("FRAME (pickle protocol 4) at byte 17"), "{e}");
    // A truncated legacy file too.
    let legacy = std::fs::read(fixture("vgg16-first-layer-legacy.pth")).unwrap();
    std::fs::write(&bad, &legacy[..legacy.len() - 100]).unwrap();
    let e = refusal(&vars, &bad);
    assert!(e.contains("vgg16.pth") && e.contains("truncated"), "{e}");

    // A zip archive whose tensor declares more elements than its storage holds (2^30 x 3 x 3 x
    // 3 floats, 116 GiB, over 6912 bytes) is refused by name before anything is allocated.
    let huge = dir.path().join("huge.pth");
    let file = std::fs::File::open(fixture("vgg16-first-layer.pth")).unwrap();
    let mut src = zip::ZipArchive::new(file).unwrap();
    let mut out = zip::ZipWriter::new(std::fs::File::create(&huge).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..src.len() {
        let mut entry = src.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            // The pickled shape (64, 3, 3, 3) as four one-byte ints; 2^30 as a four-byte int.
            let shape = b"(K@K\x03K\x03K\x03t";
            let at = bytes.windows(shape.len()).position(|w| w == shape).unwrap();
            bytes.splice(at..at + 3, *b"(J\x00\x00\x00\x40");
        }
        out.start_file(name, opts).unwrap();
        std::io::Write::write_all(&mut out, &bytes).unwrap();
    }
    out.finish().unwrap();
    let e = refusal(&vars, &huge);
    assert!(
        e.contains("huge.pth") && e.contains("features.0.weight") && e.contains("runs past its storage"),
        "{e}"
    );
}

/// The values of the hand-written fixtures (`tests/fixtures/README.md`).
fn hand_value(key: usize, k: usize) -> f32 {
    ((k % 251) as f32 - 125.0) / 256.0 + key as f32 / 8.0
}

#[test]
fn pth_variants_torch_writes_load_or_are_refused_by_name() {
    // PyTorch before 0.4 (`_rebuild_tensor`, in both formats), a state_dict with `_metadata`,
    // channels-last strides, and a training checkpoint's `state_dict` with DataParallel's
    // `module.` prefix load every value where PyTorch would put it.
    for file in [
        "hand-legacy-v1.pth",
        "hand-v1zip.pth",
        "hand-metadata.pth",
        "hand-channels-last.pth",
        "hand-wrapped.pth",
        "hand-parameter.pth",
        "hand-legacy-p3.pth",
        "hand-model-and-state-dict.pth",
    ] {
        let (_, w, b) = load_first_layer(file);
        assert!(w.iter().enumerate().all(|(k, &v)| v == hand_value(1, k)), "{file}");
        assert!(b.iter().enumerate().all(|(k, &v)| v == hand_value(2, k)), "{file}");
    }
    let (vars, _m) = model(ModelName::Vgg16Fcn8sReduced);
    let refused = |file: &str| refusal(&vars, &fixture(file));
    for file in ["hand-bigendian.pth", "hand-legacy-big.pth"] {
        let e = refused(file);
        assert!(e.contains(file) && e.contains("big-endian"), "{e}");
    }
    // 1728 elements as [3, 64, 3, 3]: the count fits, the shape does not.
    let e = refused("hand-same-count-shape.pth");
    assert!(e.contains("[3, 64, 3, 3]") && e.contains("[64, 3, 3, 3]"), "{e}");
    // A legacy file pickled with protocol 4 names the opcode it stops on (it was called "not a
    // PyTorch file"); a negative stride is named as such (it was "not a tensor").
    let e = refused("hand-legacy-p4.pth");
    assert!(
        e.contains("magic number") && e.contains("FRAME (pickle protocol 4) at byte 2"),
        "{e}"
    );
    let e = refused("hand-legacy-v1000.pth");
    assert!(
        e.contains("protocol version the integer 1000 (PyTorch's is 1001)"),
        "{e}"
    );
    let e = refused("hand-negative-stride.pth");
    assert!(
        e.contains("features.0.weight`: its size, stride or storage cannot be read"),
        "{e}"
    );
    // A checkpoint with both a `model` and a `state_dict` dict: the summary says which was read.
    let summary = seg_fcn::weights::load_init_weights(&vars, "model", &fixture("hand-model-and-state-dict.pth"))
        .unwrap()
        .summary(Path::new("both.pth"));
    assert_eq!(
        summary,
        "loaded 2 tensors from both.pth (0 skipped; read from its `state_dict` entry (it also holds a `model` dict, not read))"
    );
    // An offset of 2^62 inside an `nn.Parameter`'s rebuild call is refused as it is outside one.
    let e = refused("hand-parameter-offset.pth");
    assert!(e.contains("storage offset 4611686018427387904"), "{e}");
    // int32 storages are tensors, of a type the loader does not read.
    let e = refused("hand-int32.pth");
    assert!(
        e.contains("IntStorage") && e.contains("features.0.") && e.contains("int64"),
        "{e}"
    );
    // A rebuild call with too few arguments: candle's reader panics, caught and named.
    let e = refused("hand-short-args.pth");
    assert!(e.contains("hand-short-args.pth") && e.contains("malformed"), "{e}");
}
