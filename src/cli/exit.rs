//! Exit codes: 0 done, 1 the world's failure, 2 a person's mistake. Commands with answers
//! of their own (lookup's 3, say) return them as successes.

use std::process::ExitCode;

/// A command that could not do its job: a person's mistake (exit 2) or the world's (1).
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Runtime(String),
}

impl Failure {
    pub(super) fn runtime(context: &str, error: impl std::fmt::Display) -> Self {
        Self::Runtime(format!("{context}: {error}"))
    }

    pub fn report(self) -> ExitCode {
        let (message, code) = match self {
            Self::Usage(message) => (message, 2),
            Self::Runtime(message) => (message, 1),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

/// Turns a clap error into one line (help and version go to stdout as usual).
pub fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let line: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:"))
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("tip:")
                && !line.starts_with("For more information")
        })
        .collect();
    let line = line.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    Failure::Usage(format!("{line} (see --help)")).report()
}
