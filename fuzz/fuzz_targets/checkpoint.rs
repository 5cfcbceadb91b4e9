//! The checkpoint loader (safetensors header, metadata, tensor extents) on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(ck) = seg_train::checkpoint::from_bytes(Path::new("fuzz.safetensors"), data, &candle_core::Device::Cpu) {
        for group in ["segmenter", "discriminator", "adversary"] {
            let _ = ck.optimizer_state(group);
        }
    }
});
