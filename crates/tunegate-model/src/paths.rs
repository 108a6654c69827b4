//! Where model files live, and how a model name or path becomes a file.
//!
//! The cache directory follows the same rule as `scripts/fetch-model.sh`
//! (`$TUNEGATE_HOME/models`, else `$XDG_CACHE_HOME/tunegate/models`, else
//! `~/.cache/tunegate/models`), so a model fetched by the script is found by
//! the binary and the tests without configuration.

use std::path::{Path, PathBuf};

/// The embedded default model's short name.
pub const DEFAULT_MODEL_NAME: &str = "gemma-3-270m";

/// Short names and the file each maps to inside [`default_model_dir`].
pub const KNOWN_MODELS: &[(&str, &str)] = &[("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf")];

/// What the user can run to get the default model.
pub const FETCH_HINT: &str = "run scripts/fetch-model.sh (or `tunegate model fetch`)";

#[derive(Debug, thiserror::Error)]
pub enum ModelPathError {
    #[error("model {name:?} is not downloaded: expected it at {path}; {hint}", hint = FETCH_HINT)]
    NotFetched { name: String, path: PathBuf },
    #[error("model {0:?} is neither an existing file nor a known model name (known: {known}); pass a path to a .gguf file", known = known_names())]
    Unknown(String),
    #[error("cannot find a cache directory: none of TUNEGATE_HOME, XDG_CACHE_HOME or HOME is set; set TUNEGATE_HOME")]
    NoHome,
}

fn known_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The directory models are cached in (it may not exist yet).
pub fn default_model_dir() -> Result<PathBuf, ModelPathError> {
    model_dir_from(|k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// [`default_model_dir`] with the environment passed in, so it can be tested
/// without mutating the process environment (which races with other tests).
pub fn model_dir_from(env: impl Fn(&str) -> Option<PathBuf>) -> Result<PathBuf, ModelPathError> {
    if let Some(h) = env("TUNEGATE_HOME") {
        return Ok(h.join("models"));
    }
    if let Some(x) = env("XDG_CACHE_HOME") {
        return Ok(x.join("tunegate").join("models"));
    }
    if let Some(h) = env("HOME") {
        return Ok(h.join(".cache").join("tunegate").join("models"));
    }
    Err(ModelPathError::NoHome)
}

/// Turns a model name or path into an existing file.
///
/// An existing path wins, so a user's own `./gemma-3-270m` file is never
/// shadowed by the cache. Otherwise a known short name maps to its file in
/// [`default_model_dir`]; a known name that is not fetched yet gets an error
/// telling the user how to fetch it.
pub fn resolve_model(name_or_path: &str) -> Result<PathBuf, ModelPathError> {
    resolve_in(name_or_path, &default_model_dir()?)
}

/// The model used when none is named: `$TUNEGATE_MODEL` (a name or a path)
/// if set, else [`DEFAULT_MODEL_NAME`].
pub fn resolve_default_model() -> Result<PathBuf, ModelPathError> {
    let name = std::env::var("TUNEGATE_MODEL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_MODEL_NAME.to_string());
    resolve_model(&name)
}

/// Where the default model would be, whether or not it exists: for tests and
/// messages that must name the path even when it is absent.
pub fn default_model_path() -> Result<PathBuf, ModelPathError> {
    if let Some(m) = std::env::var_os("TUNEGATE_MODEL").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&m);
        if p.exists() {
            return Ok(p);
        }
        if let Some(file) = known_file(&m.to_string_lossy()) {
            return Ok(default_model_dir()?.join(file));
        }
        return Ok(p);
    }
    Ok(default_model_dir()?.join(known_file(DEFAULT_MODEL_NAME).expect("default is known")))
}

fn known_file(name: &str) -> Option<&'static str> {
    KNOWN_MODELS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
}

/// [`resolve_model`] against an explicit cache directory.
pub fn resolve_in(name_or_path: &str, dir: &Path) -> Result<PathBuf, ModelPathError> {
    let p = Path::new(name_or_path);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if let Some(file) = known_file(name_or_path) {
        let path = dir.join(file);
        if path.is_file() {
            return Ok(path);
        }
        return Err(ModelPathError::NotFetched {
            name: name_or_path.to_string(),
            path,
        });
    }
    Err(ModelPathError::Unknown(name_or_path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<PathBuf> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| PathBuf::from(v))
        }
    }

    #[test]
    fn model_dir_precedence() {
        let all = [
            ("TUNEGATE_HOME", "/t"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            model_dir_from(env(&all)).unwrap(),
            PathBuf::from("/t/models")
        );
        assert_eq!(
            model_dir_from(env(&all[1..])).unwrap(),
            PathBuf::from("/x/tunegate/models")
        );
        assert_eq!(
            model_dir_from(env(&all[2..])).unwrap(),
            PathBuf::from("/h/.cache/tunegate/models")
        );
        assert!(matches!(
            model_dir_from(env(&[])),
            Err(ModelPathError::NoHome)
        ));
    }

    #[test]
    fn resolve_names_and_paths() {
        let dir = std::env::temp_dir().join(format!("tunegate-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = resolve_in("gemma-3-270m", &dir).unwrap_err();
        assert!(matches!(err, ModelPathError::NotFetched { .. }));
        assert!(err.to_string().contains("fetch-model.sh"));
        let f = dir.join("gemma-3-270m-q4_k_m.gguf");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(resolve_in("gemma-3-270m", &dir).unwrap(), f);
        // An existing path is used as-is, whatever its name.
        assert_eq!(
            resolve_in(f.to_str().unwrap(), Path::new("/nonexistent")).unwrap(),
            f
        );
        assert!(matches!(
            resolve_in("llama-9000", &dir),
            Err(ModelPathError::Unknown(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
