//! Integration tests of the detectors, the detection methods and the detection readers on
//! files written here.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use seg_core::{Batch, DetTargets, Domain, GroupId, Stage, StepCx, StepInfo};
use seg_detect::{ClassSet, DetDataset, GtBox, PixelBox};
use seg_ssd::{DetMethodConfig, SsdArch, SsdConfig};

fn small() -> SsdConfig {
    SsdConfig {
        input: [128, 64],
        widths: [8, 8, 8, 8, 8, 8],
        ..Default::default()
    }
}

#[test]
fn ssd300_gives_8732_boxes_from_six_source_maps() {
    let cfg = SsdConfig::vgg300(ClassSet::All);
    let vars = VarMap::new();
    let m = DetMethodConfig::SourceOnly.build(&cfg, &vars, &Device::Cpu, 0).unwrap();
    let ssd = m.detector();
    let x = Tensor::zeros((1, 3, 300, 300), DType::F32, &Device::Cpu).unwrap();
    let out = ssd.forward(&x, false).unwrap();
    assert_eq!(out.loc.dims3().unwrap(), (1, 8732, 4));
    assert_eq!(out.conf.dims3().unwrap(), (1, 8732, 9));
    let shapes: Vec<(usize, usize, usize)> = out
        .sources
        .iter()
        .map(|s| {
            let (_, c, h, w) = s.dims4().unwrap();
            (c, h, w)
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            (512, 38, 38),
            (1024, 19, 19),
            (512, 10, 10),
            (256, 5, 5),
            (256, 3, 3),
            (256, 1, 1)
        ]
    );
    // torchvision's VGG16 names, so ImageNet weights load; conv4_3's L2Norm scale starts at 20.
    let data = vars.data().lock().unwrap();
    assert!(data.contains_key("model.features.28.weight") && data.contains_key("model.fc6.weight"));
    let l2 = data["model.l2norm.weight"].as_tensor().to_vec1::<f32>().unwrap();
    assert!(l2.iter().all(|&v| v == 20.0));
    drop(data);
    assert!(DetMethodConfig::Adabn
        .validate(&cfg)
        .unwrap_err()
        .contains("no batch norm"));
    assert!(ssd.config().arch == SsdArch::Vgg300);
}

fn batch(n: usize, cfg: &SsdConfig, domain: Domain, seed: u64) -> Batch {
    let (w, h) = cfg.input_size();
    let mut rng = seg_core::Rng::new(seed);
    let px: Vec<f32> = (0..n * 3 * h * w).map(|_| rng.normal()).collect();
    let images = Tensor::from_vec(px, (n, 3, h, w), &Device::Cpu).unwrap();
    let priors = cfg.prior_spec().priors();
    let mut classes = Vec::new();
    let mut offsets = Vec::new();
    for _ in 0..n {
        let (c, o) = seg_ssd::coding::match_priors(&[[0.1, 0.2, 0.4, 0.8]], &[0], &priors, 0.5);
        classes.extend(c);
        offsets.extend(o.into_iter().flatten());
    }
    let p = priors.len();
    Batch {
        images,
        labels: None,
        domain,
        names: (0..n).map(|i| format!("img{i}")).collect(),
        det: Some(DetTargets {
            classes: Tensor::from_vec(classes, (n, p), &Device::Cpu).unwrap(),
            offsets: Tensor::from_vec(offsets, (n, p, 4), &Device::Cpu).unwrap(),
        }),
    }
}

#[test]
fn domain_terms_train_the_branches_and_reverse_into_the_detector() {
    let cfg = small();
    for kind in ["da-image", "da-maps"] {
        let vars = VarMap::new();
        let m = DetMethodConfig::parse(kind)
            .unwrap()
            .build(&cfg, &vars, &Device::Cpu, 1)
            .unwrap();
        assert!(seg_core::Method::needs_target(m.as_ref()));
        let (s, t) = (batch(2, &cfg, Domain::Source, 1), batch(2, &cfg, Domain::Target, 2));
        let cx = StepCx {
            source: &s,
            target: Some(&t),
            stage: Stage::Train,
            step: StepInfo {
                step: 0,
                total_steps: 1,
            },
            target_bn_only: false,
        };
        let terms = seg_core::Method::losses(m.as_ref(), &cx).unwrap();
        let names: Vec<&str> = terms.iter().map(|t| t.name).collect();
        assert_eq!(names, ["det_conf", "det_loc", "domain_disc", "domain_adv"], "{kind}");
        let params = seg_core::Method::parameters(m.as_ref());
        let set = |g: GroupId| params.iter().find(|p| p.group == g).unwrap().vars.clone();
        let (model, domain) = (set(GroupId::SEGMENTER), set(GroupId::DISCRIMINATOR));
        assert!(model.iter().all(|(n, _)| n.starts_with("model.")));
        assert!(!domain.is_empty() && domain.iter().all(|(n, _)| n.starts_with("domain.")));
        let grad_norm = |term: &str, vars: &[(String, candle_core::Var)]| -> f32 {
            let t = terms.iter().find(|t| t.name == term).unwrap();
            let g = seg_nn::backward(&t.value).unwrap();
            vars.iter()
                .filter_map(|(_, v)| g.get(v.as_tensor()))
                .map(|g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
                .sum()
        };
        assert_eq!(
            grad_norm("domain_disc", &model),
            0.0,
            "{kind}: the classifiers see detached maps"
        );
        assert!(grad_norm("domain_disc", &domain) > 0.0);
        assert!(
            grad_norm("domain_adv", &model) > 0.0,
            "{kind}: reversal reaches the detector"
        );
        let v = |n: &str| {
            terms
                .iter()
                .find(|t| t.name == n)
                .unwrap()
                .value
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(
            (v("domain_disc") - v("domain_adv")).abs() < 1e-4,
            "same loss value on both sides"
        );
        // The method's parameter sets cover every variable (the one step function checks).
        let tc = seg_train::TrainerConfig::default();
        seg_train::step::Stepper::new(m.as_ref(), &vars, &tc).unwrap();
    }
    // Source-only asks for no target and has no domain terms.
    let vars = VarMap::new();
    let m = DetMethodConfig::SourceOnly.build(&cfg, &vars, &Device::Cpu, 1).unwrap();
    assert!(!seg_core::Method::needs_target(m.as_ref()));
    let s = batch(2, &cfg, Domain::Source, 1);
    let mut st = seg_train::step::Stepper::new(m.as_ref(), &vars, &seg_train::TrainerConfig::default()).unwrap();
    let cx = StepCx {
        source: &s,
        target: None,
        stage: Stage::Train,
        step: StepInfo {
            step: 0,
            total_steps: 2,
        },
        target_bn_only: false,
    };
    let first = seg_train::step::read_terms(
        &st.step(
            m.as_ref(),
            &cx,
            seg_train::step::LrAt {
                step: 0,
                total: 2,
                power: 0.0,
            },
        )
        .unwrap(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(first.keys().collect::<Vec<_>>(), ["det_conf", "det_loc"]);
    let mut unlabelled = s.clone();
    unlabelled.det = None;
    let cx = StepCx {
        source: &unlabelled,
        ..cx
    };
    let e = seg_core::Method::losses(m.as_ref(), &cx).err().unwrap().to_string();
    assert!(e.contains("img0") && e.contains("no box targets"), "{e}");
}

#[test]
fn the_same_seed_gives_every_method_the_same_detector() {
    let cfg = small();
    let weights = |kind: &str| {
        let vars = VarMap::new();
        let _m = DetMethodConfig::parse(kind)
            .unwrap()
            .build(&cfg, &vars, &Device::Cpu, 5)
            .unwrap();
        let d = vars.data().lock().unwrap();
        d["model.conf.0.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(weights("source-only"), weights("da-maps"));
}

fn write_sim10k(root: &std::path::Path, n: usize) {
    let voc = root.join("VOC2012");
    for d in ["JPEGImages", "Annotations", "ImageSets/Main"] {
        std::fs::create_dir_all(voc.join(d)).unwrap();
    }
    let img = seg_labels::RgbImage {
        width: 64,
        height: 32,
        data: vec![120; 64 * 32 * 3],
    };
    let boxes = [GtBox {
        class: seg_detect::classes::CAR,
        bbox: PixelBox::new(3.0, 4.0, 20.0, 15.0),
    }];
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{}", 100 + i);
        seg_data::toy::write_jpeg(&voc.join(format!("JPEGImages/{id}.jpg")), &img).unwrap();
        std::fs::write(
            voc.join(format!("Annotations/{id}.xml")),
            seg_detect::voc::to_voc_xml(&format!("{id}.jpg"), 64, 32, &boxes),
        )
        .unwrap();
        ids.push(id);
    }
    std::fs::write(voc.join("ImageSets/Main/trainval10k.txt"), ids.join("\n")).unwrap();
}

#[test]
fn bad_sim10k_files_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    write_sim10k(dir.path(), 4);
    let voc = dir.path().join("VOC2012");
    // A truncated JPEG, a malformed XML, a box outside the image, an unknown class.
    let jpg = voc.join("JPEGImages/100.jpg");
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(voc.join("Annotations/101.xml"), "<annotation><size><width>64</width>").unwrap();
    let xml = std::fs::read_to_string(voc.join("Annotations/102.xml")).unwrap();
    std::fs::write(
        voc.join("Annotations/102.xml"),
        xml.replace("<xmax>21</xmax>", "<xmax>90</xmax>"),
    )
    .unwrap();
    std::fs::write(
        voc.join("Annotations/103.xml"),
        xml.replace("<name>car</name>", "<name>tank</name>"),
    )
    .unwrap();
    let ds = DetDataset::open_sim10k(dir.path(), None, ClassSet::Car).unwrap();
    assert_eq!(ds.len(), 4);
    let e0 = ds.load(0).unwrap_err().to_string();
    assert!(e0.contains("100.jpg") && e0.contains("not a valid JPEG"), "{e0}");
    let e1 = ds.load(1).unwrap_err().to_string();
    assert!(e1.contains("101.xml") && e1.contains("malformed XML"), "{e1}");
    let s2 = ds.load(2).unwrap();
    assert_eq!(s2.boxes[0].bbox.x_max, 63.0, "clipped to the image");
    // The tank is left out (as the papers' loaders skip other classes), the sample kept.
    assert!(ds.load(3).unwrap().boxes.is_empty());
    let r = seg_detect::inspect::inspect(&ds, &|| {});
    assert_eq!((r.samples, r.usable), (4, 2));
    assert_eq!(r.boxes["car"], 1);
    let reasons: Vec<String> = r.problems.iter().map(|p| format!("{}: {}", p.file, p.reason)).collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    // A JPEG without its annotation file is listed (no run reads it).
    std::fs::copy(voc.join("JPEGImages/102.jpg"), voc.join("JPEGImages/199.jpg")).unwrap();
    let r = seg_detect::inspect::inspect(&ds, &|| {});
    assert!(
        r.problems
            .iter()
            .any(|p| p.file.ends_with("JPEGImages/199.jpg") && p.reason.contains("no annotation file")),
        "{:?}",
        r.problems
    );
    assert!(reasons.iter().any(|p| p.contains("102.xml") && p.contains("clipped")));
    assert!(reasons
        .iter()
        .any(|p| p.contains("103.xml") && p.contains("class `tank`") && p.contains("left out")));
    // Named by a split list, it is a sample that does not load, listed once as such.
    let list = dir.path().join("with199.txt");
    std::fs::write(&list, "102\n199\n").unwrap();
    let listed = DetDataset::open_sim10k(dir.path(), Some(&list), ClassSet::Car).unwrap();
    let r = seg_detect::inspect::inspect(&listed, &|| {});
    let about_199: Vec<&str> = r
        .problems
        .iter()
        .filter(|p| p.file.contains("199."))
        .map(|p| p.reason.as_str())
        .collect();
    assert_eq!(about_199.len(), 1, "{:?}", r.problems);
    assert!(!about_199[0].contains("never read"), "{about_199:?}");
    std::fs::remove_file(voc.join("JPEGImages/199.jpg")).unwrap();
    // A list may name files (`101.jpg`) rather than ids.
    let list = dir.path().join("files.txt");
    std::fs::write(&list, "100.JPG\n101.xml\n").unwrap();
    let ds = DetDataset::open_sim10k(dir.path(), Some(&list), ClassSet::Car).unwrap();
    let names: Vec<&str> = ds.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["100", "101"]);
    // A list naming an id twice is refused by name (it was trained on and counted twice).
    let list = dir.path().join("twice.txt");
    std::fs::write(&list, "100\n101\n100.jpg\n").unwrap();
    let e = DetDataset::open_sim10k(dir.path(), Some(&list), ClassSet::Car)
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice.txt") && e.contains("`100` twice"), "{e}");
    // A missing split folder is refused by name.
    let e = DetDataset::open_sim10k(&dir.path().join("nope"), None, ClassSet::Car)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a Sim10k folder"), "{e}");
}

#[test]
fn ssd300_takes_torchvision_vgg16_weights_and_trains_its_own_fc6_fc7() {
    let cfg = SsdConfig::vgg300(ClassSet::Car);
    let vars = VarMap::new();
    let _m = DetMethodConfig::SourceOnly.build(&cfg, &vars, &Device::Cpu, 0).unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../seg-fcn/tests/fixtures/vgg16-first-layer.pth");
    let r = seg_fcn::weights::load_init_weights(&vars, "model", &fixture).unwrap();
    assert_eq!(r.loaded, ["features.0.bias", "features.0.weight"]);
    let w = vars.data().lock().unwrap()["model.features.0.weight"]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!((w[5] - 0.005).abs() < 1e-7);
    // VGG16's fully connected fc6 does not fit SSD300's dilated 3×3 fc6: skipped, not an error.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.safetensors");
    let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([
            ("features.2.bias".to_string(), t(64)),
            ("classifier.0.weight".to_string(), t(10)),
        ]),
        &f,
    )
    .unwrap();
    let r = seg_fcn::weights::load_init_weights(&vars, "model", &f).unwrap();
    assert_eq!(
        (r.loaded.as_slice(), r.skipped.as_slice()),
        (
            &["features.2.bias".to_string()][..],
            &["classifier.0.weight".to_string()][..]
        )
    );
}

#[test]
fn a_resumed_detection_run_ends_with_the_weights_of_one_that_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("toy");
    seg_data::toy::generate(&data, 3, seg_data::toy::Preset::Quick).unwrap();
    let cfg = seg_ssd::train::DetRunConfig {
        model: small(),
        method: seg_ssd::train::DetMethodConfigField(DetMethodConfig::parse("da-maps").unwrap()),
        data: seg_ssd::train::DetDataConfig {
            source_root: seg_data::toy::sim10k_path(&data),
            target_root: seg_data::toy::paths(&data).2,
            ..Default::default()
        },
        trainer: seg_ssd::train::DetTrainerConfig {
            steps: 4,
            batch_size: 2,
            lr: 0.01,
            log_every: 1,
            checkpoint_every: 2,
            ..Default::default()
        },
        init_weights: None,
        init_from: None,
    };
    let weights = |run: &std::path::Path| {
        let ck = seg_train::checkpoint::load(&run.join("checkpoint.safetensors"), &Device::Cpu).unwrap();
        let mut v: Vec<(String, Vec<f32>)> = ck
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let go = |run: &std::path::Path, control: seg_ssd::train::RunControl| {
        seg_ssd::train::run(&cfg, run, &Device::Cpu, &mut |_, _, _| {}, control).map_err(|e| e.to_string())
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let whole = go(&a, Default::default()).unwrap().unwrap();
    let stop = seg_ssd::train::RunControl {
        resume: false,
        stop_after: Some(3),
    };
    assert!(go(&b, stop).unwrap().is_none());
    // Without --resume a folder with a checkpoint is refused; --resume with none is refused too
    // (it started from step 0 without a word).
    let e = go(&b, Default::default()).err().unwrap();
    assert!(e.contains("--resume") && !e.contains("invalid detection config"), "{e}");
    let resume = seg_ssd::train::RunControl {
        resume: true,
        stop_after: None,
    };
    let e = go(&dir.path().join("empty"), resume).err().unwrap();
    assert!(e.contains("nothing to resume"), "{e}");
    let resumed = go(
        &b,
        seg_ssd::train::RunControl {
            resume: true,
            stop_after: None,
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(weights(&a), weights(&b));
    assert_eq!(whole.report, resumed.report);
    // Four loss lines and the evaluation's.
    let lines = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5, "{lines}");
    assert!(lines.lines().last().unwrap().contains("\"eval\""), "{lines}");
    // Resumed once finished, it has nothing left to do: the same report, no line added.
    let again = go(&b, resume).unwrap().unwrap();
    assert_eq!(again.report.ap50, resumed.report.ap50);
    assert_eq!(std::fs::read_to_string(b.join("metrics.jsonl")).unwrap(), lines);
    // Resumed with another setting, the run names it; with more steps, it goes on.
    let mut other = cfg.clone();
    other.trainer.lr = 0.02;
    let e = seg_ssd::train::run(&other, &b, &Device::Cpu, &mut |_, _, _| {}, resume)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`trainer.lr` differs") && e.contains("only trainer.steps"),
        "{e}"
    );
    // Another method is named as such, not by the first of its settings that differs.
    for method in ["oracle", "da-image"] {
        let mut other = cfg.clone();
        other.method = seg_ssd::train::DetMethodConfigField(DetMethodConfig::parse(method).unwrap());
        let e = seg_ssd::train::run(&other, &b, &Device::Cpu, &mut |_, _, _| {}, resume)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`method.kind` differs"), "{method}: {e}");
    }
    // A run stopped before its first checkpoint: --resume starts it over from step 0, with
    // the config given (a mended one too: nothing of the stopped run is kept).
    let early = dir.path().join("early");
    assert!(go(&early, stop).unwrap().is_none());
    std::fs::remove_file(early.join("checkpoint.safetensors")).unwrap();
    let over = seg_ssd::train::run(&other, &early, &Device::Cpu, &mut |_, _, _| {}, resume).unwrap();
    assert!(over.is_some());
    let saved = std::fs::read_to_string(early.join("config.toml")).unwrap();
    assert!(saved.contains("lr = 0.02"), "{saved}");
    let mut longer = cfg.clone();
    longer.trainer.steps = 6;
    seg_ssd::train::run(&longer, &b, &Device::Cpu, &mut |_, _, _| {}, resume).unwrap();
    // The 4-step run's five lines, steps 5 and 6, and the new evaluation.
    let lines = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8, "{lines}");
}

#[test]
fn init_from_copies_the_detector_and_refuses_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("toy");
    seg_data::toy::generate(&data, 5, seg_data::toy::Preset::Quick).unwrap();
    let cfg = |method: &str, lr: f64, init_from: Option<std::path::PathBuf>| seg_ssd::train::DetRunConfig {
        model: small(),
        method: seg_ssd::train::DetMethodConfigField(DetMethodConfig::parse(method).unwrap()),
        data: seg_ssd::train::DetDataConfig {
            source_root: seg_data::toy::sim10k_path(&data),
            target_root: seg_data::toy::paths(&data).2,
            ..Default::default()
        },
        trainer: seg_ssd::train::DetTrainerConfig {
            steps: 2,
            batch_size: 2,
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            log_every: 1,
            ..Default::default()
        },
        init_weights: None,
        init_from,
    };
    let go = |c: &seg_ssd::train::DetRunConfig, run: &std::path::Path| {
        seg_ssd::train::run(c, run, &Device::Cpu, &mut |_, _, _| {}, Default::default())
            .map(|o| o.is_some())
            .map_err(|e| e.to_string())
    };
    let (a, c) = (dir.path().join("a"), dir.path().join("c"));
    go(&cfg("source-only", 0.01, None), &a).unwrap();
    // The detector starts as the first run's: every `model.` tensor, batch-norm statistics
    // included; the domain branches are the arm's own (the first run has none).
    let da_maps = cfg("da-maps", 0.01, Some(a.clone()));
    let ck = seg_ssd::train::init_checkpoint(&da_maps, &a, &Device::Cpu).unwrap();
    let vars = VarMap::new();
    let _method = da_maps
        .method
        .0
        .build(&da_maps.model, &vars, &Device::Cpu, da_maps.trainer.seed)
        .unwrap();
    let restored = ck.restore_prefix(&vars, "model").unwrap();
    let want: Vec<(&String, &Tensor)> = ck.tensors.iter().filter(|(n, _)| n.starts_with("model.")).collect();
    assert!(want.iter().any(|(n, _)| n.contains("running_mean")));
    assert_eq!(restored, want.len());
    {
        let data = vars.data().lock().unwrap();
        for (name, t) in &want {
            let got = data[*name].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name}");
        }
        assert!(data.keys().any(|k| k.starts_with("domain.")));
    }
    let stop = seg_ssd::train::RunControl {
        resume: false,
        stop_after: Some(1),
    };
    assert!(seg_ssd::train::run(&da_maps, &c, &Device::Cpu, &mut |_, _, _| {}, stop)
        .unwrap()
        .is_none());
    // The stored config names where the run started.
    let stored = std::fs::read_to_string(c.join("config.toml")).unwrap();
    assert!(stored.contains("init_from"), "{stored}");
    // Another model is refused, naming the checkpoint.
    let mut other = cfg("source-only", 0.01, Some(a.clone()));
    other.model.widths = [8, 8, 8, 8, 8, 16];
    let e = go(&other, &dir.path().join("d")).unwrap_err();
    assert!(e.contains("init_from") && e.contains("checkpoint.safetensors"), "{e}");
    assert!(
        e.contains("widths = [8, 8, 8, 8, 8, 16]") && e.contains("widths = [8, 8, 8, 8, 8, 8]"),
        "{e}"
    );
    // So is a run that names both starting points.
    let mut both = cfg("source-only", 0.01, Some(a.clone()));
    both.init_weights = Some("vgg16.safetensors".into());
    assert!(go(&both, &dir.path().join("e")).unwrap_err().contains("both set"));
    // A resumed run takes its weights from its own checkpoint: the run it started from may be
    // gone by then.
    std::fs::remove_dir_all(&a).unwrap();
    let resume = seg_ssd::train::RunControl {
        resume: true,
        stop_after: None,
    };
    // Resuming with another config (here another learning rate) is refused, naming the key, and
    // leaves the run's own config.toml as it was.
    let mut faster = da_maps.clone();
    faster.trainer.lr *= 2.0;
    let e = seg_ssd::train::run(&faster, &c, &Device::Cpu, &mut |_, _, _| {}, resume)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another config") && e.contains("`trainer.lr`"), "{e}");
    assert_eq!(std::fs::read_to_string(c.join("config.toml")).unwrap(), stored);
    // Where the run started may change (here: taken out, the run being gone).
    let mut without = da_maps.clone();
    without.init_from = None;
    assert!(
        seg_ssd::train::run(&without, &c, &Device::Cpu, &mut |_, _, _| {}, resume)
            .unwrap()
            .is_some()
    );
}

#[test]
fn another_tasks_checkpoint_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let meta = seg_train::checkpoint::CheckpointMeta {
        step: 1,
        source_loader: None,
        target_loader: None,
        config: "[data]\nsource_dataset = \"gta5\"\n\n[augment]\nbase_scale = 0.5\n".into(),
        methods_version: seg_core::METHODS_VERSION,
    };
    let w = candle_core::Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    seg_train::checkpoint::save(
        &dir.path().join(seg_train::checkpoint::FILE),
        &[("model.w".into(), w)],
        &meta,
    )
    .unwrap();
    let e = seg_ssd::train::load_detector(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("checkpoint.safetensors") && e.contains("a segmentation run's checkpoint"),
        "{e}"
    );
}
