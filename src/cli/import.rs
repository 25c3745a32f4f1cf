//! `import`: append events from Stripe event exports.

use std::process::ExitCode;

use clap::Args;

use super::settings::{DatabaseArgs, PlatformArgs};
use super::{print_json, read_input, Failure};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Export files; `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,

    #[command(flatten)]
    platform: PlatformArgs,
}

pub async fn run(database: &DatabaseArgs, args: ImportArgs) -> Result<ExitCode, Failure> {
    let platform = args.platform.account()?;
    let mut inputs = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let bytes = read_input(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Failure::Usage(format!("cannot read {path}: not UTF-8 text")))?;
        inputs.push((path, text));
    }
    let store = database.open_migrated().await?;
    let mut counts = crate::import::ImportCounts::default();
    for (path, text) in &inputs {
        let rejections = crate::import::import(&store, &platform, text, &mut counts)
            .await
            .map_err(|e| {
                Failure::runtime(
                    &format!("import of {path} stopped (re-running it skips what was imported)"),
                    e,
                )
            })?;
        for rejection in rejections {
            eprintln!(
                "rejected {path} {}: {}",
                rejection.position, rejection.reason
            );
        }
    }
    print_json(&counts)?;
    Ok(if counts.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
