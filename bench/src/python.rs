//! The Python original, measured through `bench/python_anchor.py` in a virtualenv the harness
//! creates itself (`pip install leasepool==0.1.3`). Any failure is reported and skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Creates (once) `{out}/pyenv` with leasepool 0.1.3; returns its python, or why not.
pub fn ensure_venv(out: &Path) -> Result<PathBuf, String> {
    let venv = out.join("pyenv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(".leasepool-0.1.3");
    if marker.exists() && python.exists() {
        return Ok(python);
    }
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("leasepool==0.1.3"),
        "pip install leasepool==0.1.3",
    )?;
    std::fs::write(&marker, b"").map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(python)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ))
    }
}

/// Runs the anchor with the harness's parameters; returns its JSON object.
pub fn run_anchor(python: &Path, params: &Value) -> Result<Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_anchor.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(params.to_string())
        .output()
        .map_err(|e| format!("cannot run the anchor: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "anchor failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("anchor printed no JSON: {e}"))
}
