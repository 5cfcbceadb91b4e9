//! Method configs: names, TOML round trips, unknown names and fields, and the checks against
//! the model that run before training (missing taps, batch norm, source statistics).

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use seg_heads::{CrossCityConfig, DannConfig, FcnWildConfig, HeadError, SanConfig, SanPool};
use seg_methods::{parse_method, MethodConfig, METHOD_NAMES};

use crate::common::{stats, TinyNet};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct RunConfig {
    steps: usize,
    method: MethodConfig,
}

#[test]
fn every_name_parses_to_its_defaults_and_back() {
    for name in METHOD_NAMES {
        let m: MethodConfig = name.parse().unwrap();
        assert_eq!(m.name(), name);
        assert_eq!(m.to_string(), name);
        assert_eq!(parse_method(name).unwrap(), m);
    }
}

#[test]
fn unknown_method_names_list_the_valid_ones() {
    let err = parse_method("dan").unwrap_err();
    assert!(matches!(err, HeadError::UnknownMethod { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`dan`"), "{msg}");
    for name in METHOD_NAMES {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn configs_round_trip_through_toml() {
    let mut all: Vec<MethodConfig> = METHOD_NAMES.iter().map(|n| n.parse().unwrap()).collect();
    all.push(MethodConfig::Dann(DannConfig {
        hidden: 3,
        dropout: 0.25,
        seed: 7,
        ..Default::default()
    }));
    all.push(MethodConfig::FcnWild(FcnWildConfig {
        ramp: false,
        size_weight: 0.5,
        ..Default::default()
    }));
    all.push(MethodConfig::CrossCity(CrossCityConfig {
        init_std: 0.0,
        ca_start_fraction: 0.0,
        ..Default::default()
    }));
    all.push(MethodConfig::San(SanConfig {
        pool: SanPool::Max,
        noise: false,
        blocks: 0,
        ..Default::default()
    }));
    for method in all {
        let text = toml::to_string(&method).unwrap();
        let back: MethodConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, method, "{text}");
        let run = RunConfig { steps: 10, method };
        let text = toml::to_string(&run).unwrap();
        assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), run, "{text}");
    }
}

#[test]
fn partial_toml_takes_defaults() {
    let run: RunConfig =
        toml::from_str("steps = 3\n[method]\nkind = \"cross-city\"\nhidden = 32\ntap = \"conv5\"\n").unwrap();
    let want = CrossCityConfig {
        hidden: 32,
        tap: seg_core::FeatureTap::Conv5,
        ..Default::default()
    };
    assert_eq!(run.method, MethodConfig::CrossCity(want));
    let m: MethodConfig = toml::from_str("kind = \"adabn\"").unwrap();
    assert_eq!(m, MethodConfig::Adabn);
}

#[test]
fn unknown_fields_and_kinds_are_errors() {
    let err = toml::from_str::<MethodConfig>("kind = \"dann\"\nhiden = 3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("hiden"), "{err}");
    let err = toml::from_str::<MethodConfig>("kind = \"dan\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dan"), "{err}");
    assert!(toml::from_str::<MethodConfig>("kind = \"san\"\npool = \"median\"").is_err());
    assert!(
        toml::from_str::<MethodConfig>("hidden = 3").is_err(),
        "a config without a kind"
    );
}

fn build(method: &MethodConfig, with_conv1: bool, with_stats: bool) -> Result<bool, HeadError> {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let net = TinyNet::new(vb.pp("model"), with_conv1).unwrap();
    let stats = stats();
    Ok(method
        .build_head(&net, vb.pp("head"), &vars, with_stats.then_some(&stats))?
        .is_some())
}

#[test]
fn heads_build_only_for_the_methods_that_have_one() {
    for name in METHOD_NAMES {
        let method: MethodConfig = name.parse().unwrap();
        match method {
            MethodConfig::Adabn => {
                // The tiny net has no batch norm: AdaBN has nothing to re-estimate.
                let err = build(&method, true, true).unwrap_err();
                assert!(matches!(err, HeadError::NoBatchNorm { .. }), "{err}");
            }
            // No head: plain cross-entropy, or a step of the method's own.
            MethodConfig::SourceOnly
            | MethodConfig::Oracle
            | MethodConfig::Curriculum(_)
            | MethodConfig::TwoStream(_) => {
                assert!(!build(&method, true, true).unwrap(), "{name}")
            }
            _ => assert!(build(&method, true, true).unwrap(), "{name}"),
        }
    }
}

#[test]
fn a_tap_the_model_lacks_is_an_error_naming_it_and_the_models_taps() {
    let err = build(&parse_method("san").unwrap(), false, true).unwrap_err();
    match &err {
        HeadError::MissingTap { method, tap, available } => {
            assert_eq!((*method, *tap), ("san", "conv1"));
            assert_eq!(available, "conv5, fc7, logits");
        }
        other => panic!("wrong error: {other}"),
    }
    assert_eq!(
        err.to_string(),
        "method `san` needs feature tap `conv1`, but the model only has: conv5, fc7, logits"
    );

    let dann = MethodConfig::Dann(DannConfig {
        tap: seg_core::FeatureTap::Pool4,
        ..Default::default()
    });
    let err = build(&dann, true, true).unwrap_err();
    assert!(matches!(err, HeadError::MissingTap { tap: "pool4", .. }), "{err}");
}

#[test]
fn fcn_wild_needs_source_statistics() {
    let err = build(&parse_method("fcn-wild").unwrap(), true, false).unwrap_err();
    assert!(
        matches!(err, HeadError::MissingSourceStats { method: "fcn-wild" }),
        "{err}"
    );
    assert!(parse_method("fcn-wild").unwrap().needs_source_stats());
    assert!(!parse_method("dann").unwrap().needs_source_stats());
}

#[test]
fn invalid_hyperparameters_are_errors_before_training() {
    let bad = [
        MethodConfig::Dann(DannConfig {
            dropout: 1.5,
            ..Default::default()
        }),
        MethodConfig::Dann(DannConfig {
            hidden: 0,
            ..Default::default()
        }),
        MethodConfig::CrossCity(CrossCityConfig {
            ramp_fraction: f64::NAN,
            ..Default::default()
        }),
        MethodConfig::San(SanConfig {
            alpha: -1.0,
            ..Default::default()
        }),
        MethodConfig::FcnWild(FcnWildConfig {
            large_grad_scale: 2.0,
            ..Default::default()
        }),
    ];
    for m in bad {
        let err = m.validate().unwrap_err();
        assert!(matches!(err, HeadError::InvalidConfig { .. }), "{err}");
        assert!(build(&m, true, true).is_err());
    }
}
