//! Errors about user input. Every one names the file, the line when there is
//! one, the field, what is wrong and, where we can tell, what to do: a user
//! who mistypes one key in a 2,000-line dataset must find it at once.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with a file the user wrote (task file, template, dataset, schema).
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl InputError {
    pub fn new(file: impl AsRef<Path>, message: impl Into<String>) -> Self {
        InputError {
            file: file.as_ref().to_path_buf(),
            line: None,
            field: None,
            message: message.into(),
            hint: None,
        }
    }
    pub fn line(mut self, line: impl Into<Option<usize>>) -> Self {
        self.line = line.into();
        self
    }
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        // Keep the error on one line whatever the underlying message holds.
        write!(f, "{}", self.message.replace('\n', " "))?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for InputError {}

/// Reads a text file the user wrote. Text that is not UTF-8 is an error at
/// the line (and byte of that line) where it stops being UTF-8, not a bare
/// "stream did not contain valid UTF-8"; `what` names the file's role
/// ("task file", "dataset") in the other errors, with `hint`.
pub fn read_text(path: &Path, what: &str, hint: &str) -> Result<String, InputError> {
    let bytes = std::fs::read(path).map_err(|e| InputError::new(path, format!("cannot read {what}: {e}")).hint(hint.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let ok = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = ok.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = ok.len() - ok.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0) + 1;
        InputError::new(path, format!("the {what} is not UTF-8 text: invalid byte 0x{:02x} at byte {col} of the line", e.as_bytes()[ok.len()])).line(line).hint("save the file as UTF-8")
    })
}

/// Errors of the core library.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Finds the 1-based line of the first line in `src` that matches `pred`,
/// starting at line `from` (1-based). Semantic errors found after parsing
/// (duplicate ids, unknown labels) use it to point at the offending line.
pub fn find_line(src: &str, from: usize, pred: impl Fn(&str) -> bool) -> Option<usize> {
    src.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| pred(l))
        .map(|(i, _)| i + 1)
}
