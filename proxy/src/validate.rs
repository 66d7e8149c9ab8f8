//! `remora-proxy validate DIR`: lint a rule set offline.

use std::fmt;
use std::path::Path;

use crate::rules::LoadContext;

/// One finding: `FILE doc N: FIELD: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub document: usize,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} doc {}: {}: {}",
            self.file, self.document, self.field, self.reason
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationReport {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl ValidationReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

pub fn run(dir: &Path, ctx: &LoadContext) -> ValidationReport {
    let mut report = ValidationReport::default();
    if let Err(e) = crate::rules::load_dir(dir, ctx, 0) {
        report.errors.push(Finding {
            file: e.file,
            document: e.document,
            field: e.field,
            reason: e.reason,
        });
    }
    report
}
