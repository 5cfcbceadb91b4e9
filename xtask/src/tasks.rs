//! The tasks, one function each.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// `cargo xtask train-seg`.
pub(crate) fn train_seg(args: &[String]) -> Result<(), String> {
    let (ours, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut cuda = false;
    let mut release = true;
    let mut pass: Vec<String> = Vec::new();
    let mut config: Option<String> = None;
    let mut it = ours.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cuda" => cuda = true,
            "--debug" => release = false,
            "--release" => release = true,
            "--config" => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                config = Some(v.clone());
            }
            "--method" | "--out" | "--steps" | "--seed" => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                pass.push(a.clone());
                pass.push(v.clone());
            }
            other => return Err(format!("unknown flag `{other}` (put seg-adapt flags after `--`)")),
        }
    }
    let config =
        config.ok_or("train-seg needs --config FILE (a preset of configs/, e.g. configs/demo/pretrain.toml)")?;
    pass.extend(extra.iter().cloned());
    // The value after a flag (a flag given last after `--` has none: seg-adapt says so).
    let value_of = |flag: &str| {
        pass.iter()
            .position(|a| a == flag)
            .map(|i| pass.get(i + 1).cloned().ok_or_else(|| format!("{flag} needs a value")))
            .transpose()
    };
    let out = match value_of("--out")? {
        Some(out) => out,
        None => {
            let method = value_of("--method")?.unwrap_or_else(|| "run".to_string());
            let dir = format!("runs/{method}");
            pass.push("--out".into());
            pass.push(dir.clone());
            dir
        }
    };
    let root = root();
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(&root).args(["build", "-p", "seg-adapt"]);
    if release {
        build.arg("--release");
    }
    if cuda {
        build.args(["--features", "cuda"]);
    }
    run(&mut build)?;
    let bin = root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("seg-adapt");
    let mut train = Command::new(&bin);
    train.current_dir(&root).arg("train").arg(&config).args(&pass);
    if cuda {
        train.args(["--device", "cuda"]);
    }
    let help = pass.iter().any(|a| a == "--help" || a == "-h");
    // On Unix the run takes this process's place (as `cargo run` hands this one its own): one
    // process that Ctrl-C reaches, which writes its checkpoint and exits 130, instead of this
    // one ending first and leaving it to finish behind the shell's prompt.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if !help {
            println!("training into {}", root.join(&out).display());
        }
        eprintln!("$ {train:?}");
        let e = train.exec();
        Err(format!("cannot start {train:?}: {e}"))
    }
    #[cfg(not(unix))]
    {
        run(&mut train)?;
        if !help {
            println!("run written to {}", root.join(&out).display());
        }
        Ok(())
    }
}

/// `cargo xtask check-cuda`.
pub(crate) fn check_cuda(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("check-cuda takes no arguments, got `{a}`"));
    }
    let root = root();
    let build = "cargo build --release -p seg-adapt --features cuda --target-dir target/cuda";
    let script = if Command::new("nvcc").arg("--version").output().is_ok() {
        build.to_string()
    } else {
        let tool = root.join("../shared/tools/cuda-toolchain.sh");
        if !tool.exists() {
            return Err(format!(
                "nvcc not found and no {}: install CUDA 13.0's nvcc (see README, CUDA)",
                tool.display()
            ));
        }
        // The toolchain script lists cudarc's driver entry points from its sources.
        cargo(&root, &["fetch"])?;
        format!("eval \"$({})\" && {build}", tool.display())
    };
    run(Command::new("bash").current_dir(&root).args(["-c", &script]))?;
    println!(
        "CUDA build OK: {}",
        root.join("target/cuda/release/seg-adapt").display()
    );
    Ok(())
}

/// Runs cargo in the workspace root.
pub(crate) fn cargo(root: &Path, args: &[&str]) -> Result<(), String> {
    run(Command::new(env!("CARGO")).current_dir(root).args(args))
}
