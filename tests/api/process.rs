//! The real binary as a child process: for crashes, signals and the command line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use crate::helpers::SECRET;

pub const BIN: &str = env!("CARGO_BIN_EXE_stripe-projector");

/// The binary with a clean environment: only what the test sets is configured.
pub fn command(database_url: &str) -> Command {
    let mut command = Command::new(BIN);
    for name in [
        "DATABASE_URL",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_TOLERANCE_SECS",
        "LISTEN_ADDR",
        "PLATFORM_ACCOUNT_ID",
        "READ_API_TOKEN",
        "MAX_BODY_BYTES",
        "STRIPE_SECRET_KEY",
        "STRIPE_API_BASE",
        "STRIPE_API_TIMEOUT_SECS",
        "LOG_FORMAT",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
    command
        .env("DATABASE_URL", database_url)
        .env("RUST_BACKTRACE", "0");
    command
}

pub fn run(database_url: &str, args: &[&str]) -> Output {
    command(database_url)
        .args(args)
        .output()
        .expect("run the binary")
}

/// A `serve` process on a free port, killed when dropped.
pub struct Served {
    pub child: Child,
    pub base: String,
}

impl Served {
    pub fn start(database_url: &str) -> Self {
        let mut child = command(database_url)
            .arg("serve")
            .env("STRIPE_WEBHOOK_SECRET", SECRET)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        // `serve` prints its bound address once it accepts connections.
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
            .to_owned();
        Self { child, base }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
