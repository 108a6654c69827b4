//! The advisor's calibration on real data (issue 16): twelve scenarios built
//! from public labelled datasets (scripts/real-data/fetch.py: addresses,
//! names, spam subjects, tweets, reviews, ICD-10-CM, a customs catalogue),
//! evaluated with a real offline baseline (nearest.py), each with the verdict
//! written down before it ran. `scripts/real-data/calibrate.py` prints the
//! table (BENCHMARKS.md) and fails on any verdict other than the expected one.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_advisor_gives_the_expected_verdict_on_every_real_data_scenario() {
    let tasks = std::env::var_os("TUNEGATE_REAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tunegate/real-data/tasks"));
    if !tasks.join("spam-subjects").join("tunegate.yaml").exists() {
        eprintln!("SKIPPED: no real-data tasks at {} — run `python3 scripts/real-data/fetch.py` (CI does)", tasks.display());
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/real-data/calibrate.py");
    let work = tempfile::tempdir().unwrap();
    let o = Command::new("python3").arg(&script).arg(&tasks).arg(env!("CARGO_BIN_EXE_tunegate")).arg("--work").arg(work.path()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.lines().filter(|l| l.ends_with("|") && l.contains("| yes |")).count(), 12, "{out}");
}
