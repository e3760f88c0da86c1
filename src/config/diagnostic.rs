//! Config problems a human can act on: `file:line:col: probe "name": message`.
//!
//! Every check pushes into one [`Diagnostics`] so `watchdog validate` reports all problems in
//! one run, errors apart from warnings.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (an unreadable file).
    pub line: usize,
    pub col: usize,
    /// What the problem belongs to: `probe "apache"`, `action "page-oncall"`, `rule 2`.
    pub subject: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if let Some(subject) = &self.subject {
            write!(f, "{subject}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A file's text, kept to turn byte offsets into line:col.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    /// Byte offset of each line's start, computed on first use: a config with thousands of
    /// probes asks for thousands of positions.
    line_starts: std::sync::OnceLock<Vec<usize>>,
}

impl Source {
    pub fn new(path: PathBuf, text: String) -> Self {
        Source {
            path,
            text,
            line_starts: std::sync::OnceLock::new(),
        }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let line = starts.partition_point(|&start| start <= offset);
        let col = self.text[starts[line - 1]..offset].chars().count() + 1;
        (line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The problems found so far.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(
        &mut self,
        severity: Severity,
        source: &Source,
        offset: usize,
        subject: Option<&str>,
        message: impl Into<String>,
    ) {
        let (line, col) = source.line_col(offset);
        self.items.push(Diagnostic {
            severity,
            file: source.path.clone(),
            line,
            col,
            subject: subject.map(str::to_string),
            message: message.into(),
        });
    }

    pub fn error(
        &mut self,
        source: &Source,
        offset: usize,
        subject: Option<&str>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, source, offset, subject, message);
    }

    pub fn warn(
        &mut self,
        source: &Source,
        offset: usize,
        subject: Option<&str>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Warning, source, offset, subject, message);
    }

    /// A problem with a file as a whole (unreadable, no position).
    pub fn file_error(&mut self, path: &Path, message: impl Into<String>) {
        self.items.push(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            subject: None,
            message: message.into(),
        });
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// Sorted by file and position, so the report reads top to bottom.
    pub fn sorted(mut self) -> Self {
        self.items
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        self
    }

    /// The report `validate` prints: errors, then warnings, each under a count.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (title, severity) in [("error", Severity::Error), ("warning", Severity::Warning)] {
            let items: Vec<_> = self
                .items
                .iter()
                .filter(|d| d.severity == severity)
                .collect();
            if items.is_empty() {
                continue;
            }
            let s = if items.len() == 1 { "" } else { "s" };
            out.push_str(&format!("{} {title}{s}:\n", items.len()));
            for d in items {
                out.push_str(&format!("  {d}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_and_handles_utf8() {
        let s = Source::new("f.toml".into(), "a = 1\nbé = \"x\"\n".into());
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(6), (2, 1));
        // byte 8 is after "bé" (é is two bytes): column 3
        assert_eq!(s.line_col(9), (2, 3));
        assert_eq!(s.line_col(1000), (3, 1));
    }
}
