//! The run-config parser (TOML → typed config, with validation) on arbitrary text. A config that
//! parses must serialise and parse back to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use seg_adapt::config::RunConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = RunConfig::parse(text) {
        let _ = cfg.validate(8);
        let _ = cfg.validate(32);
        let again = cfg.to_toml().expect("a parsed config serialises");
        let back = RunConfig::parse(&again).expect("a serialised config parses");
        assert_eq!(again, back.to_toml().unwrap());
    }
});
