//! The exit-code table of README.md, walked: every example command of every
//! row runs in a directory made by `tunegate init` (after one `eval`, so run
//! selectors have runs to find) and must exit with its row's code.

use std::process::Command;

fn table() -> Vec<(i32, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find("<!-- exit-codes:").expect("the exit-code table's start marker");
    let end = readme.find("<!-- /exit-codes -->").expect("the table's end marker");
    readme[start..end]
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            let code: i32 = cols.get(1)?.parse().ok()?;
            let examples = cols.get(3)?.split(';').map(|e| e.trim().trim_matches('`').to_string()).filter(|e| !e.is_empty()).collect();
            Some((code, examples))
        })
        .collect()
}

#[test]
fn every_example_of_the_readme_table_exits_with_its_code() {
    let bin = env!("CARGO_BIN_EXE_tunegate");
    let rows = table();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2], "rows 0, 1 and 2");
    let dir = tempfile::tempdir().unwrap();
    assert!(Command::new(bin).arg("init").current_dir(dir.path()).status().unwrap().success());
    Command::new(bin).args(["eval", "--no-progress"]).current_dir(dir.path()).output().unwrap();
    for (code, examples) in rows {
        assert!(!examples.is_empty());
        for ex in examples {
            let args: Vec<&str> = ex.split_whitespace().collect();
            assert_eq!(args[0], "tunegate", "{ex}");
            let o = Command::new(bin).args(&args[1..]).current_dir(dir.path()).output().unwrap();
            assert_eq!(o.status.code(), Some(code), "`{ex}`: {}", String::from_utf8_lossy(&o.stderr));
            assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "`{ex}`");
        }
    }
}
