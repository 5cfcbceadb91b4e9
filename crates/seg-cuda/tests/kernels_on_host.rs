//! The CUDA kernels' logic on a machine without a GPU: `src/kernels.cu` compiled as host C++
//! with `tests/host/shim.h` in place of CUDA's built-ins, run by `tests/host/check.cpp` with the
//! launch configurations of `src/nvrtc.rs`, and checked against plain loops (bf16 rounding,
//! the max pool both ways with ties, argmax, bias + ReLU, ReLU's gradient with the bias sum
//! across chunks and images, the SGD step). Needs a C++20 compiler: `$CXX`, or `c++`.

use std::path::Path;
use std::process::Command;

#[test]
fn kernels_match_plain_loops_on_the_host() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seg_cuda_kernels_on_host");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-ffp-contract=off", "-Wall", "-pthread", "-o"])
        .arg(&exe)
        .arg(here.join("tests/host/check.cpp"))
        .output()
        .unwrap_or_else(|e| panic!("this test needs a C++20 compiler ({cxx}, or set CXX): {e}"));
    assert!(
        built.status.success(),
        "{cxx} could not build tests/host/check.cpp:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe).output().expect("the host kernel check runs");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "the kernels disagree with the plain loops ({}):\n{out}",
        ran.status
    );
    assert_eq!(out.lines().last(), Some("0 failures"), "unexpected output: {out}");
}
