//! The real binary as a child process: for crashes, signals and the command line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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
        "ENSURE_API_TOKEN",
        "MAX_BODY_BYTES",
        "STRIPE_SECRET_KEY",
        "STRIPE_API_BASE",
        "STRIPE_API_TIMEOUT_SECS",
        "STRIPE_API_CONCURRENCY",
        "STRIPE_API_RATE",
        "LOG_FORMAT",
        "RUST_LOG",
        "SHUTDOWN_TIMEOUT_SECS",
        "HTTP_WORKERS",
        "CLIENT_TIMEOUT_SECS",
        "MAX_BODY_BYTES_IN_FLIGHT",
        "MAX_CONNECTIONS",
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

/// `serve` on a free port with the suite's secret; add settings before `Served::spawn`.
/// Its logs are discarded unless the caller redirects stderr.
pub fn serve_command(database_url: &str) -> Command {
    let mut command = command(database_url);
    command
        .arg("serve")
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .stderr(Stdio::null());
    command
}

impl Served {
    pub fn start(database_url: &str) -> Self {
        Self::spawn(serve_command(database_url))
    }

    /// Starts a prepared `serve` command and waits until it accepts connections.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn serve");
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

    /// SIGTERM: the graceful stop.
    pub fn terminate(&self) {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(signalled.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit by itself, at most `bound`; `None` if it is still
    /// running then. Polls: the exit is a state to reach, not a time to assert.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `host:port` it listens on.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
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
