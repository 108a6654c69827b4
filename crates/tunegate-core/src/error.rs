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
