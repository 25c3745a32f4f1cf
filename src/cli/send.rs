//! `send`: sign event files like Stripe does and POST them to a running server.

use std::process::ExitCode;

use clap::Args;

use super::settings::{self, env_var, DEFAULT_LISTEN_ADDR, LISTEN_ADDR_ENV};
use super::{read_input, Failure};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Event files (one JSON event each), sent in order.
    #[arg(required = true)]
    files: Vec<String>,

    /// Webhook endpoint [default: http://$LISTEN_ADDR/webhooks/stripe, LISTEN_ADDR
    /// defaulting to 127.0.0.1:8080].
    #[arg(long)]
    url: Option<String>,

    /// Refused: a secret on the command line shows in `ps`. Kept (hidden) so that the
    /// old flag gets a clear message rather than "unexpected argument".
    #[arg(long, hide = true, value_name = "SECRET")]
    secret: Option<String>,
}

pub async fn run(args: SendArgs) -> Result<ExitCode, Failure> {
    if args.secret.is_some() {
        return Err(Failure::Usage(
            "--secret is not accepted (a secret on the command line shows in `ps`): \
             set STRIPE_WEBHOOK_SECRET instead; send signs with its first secret"
                .into(),
        ));
    }
    let url = match args.url {
        Some(url) => url,
        None => {
            // Any text, not only an address `serve` could bind: a host name works here.
            let addr = env_var(LISTEN_ADDR_ENV)?.unwrap_or_else(|| DEFAULT_LISTEN_ADDR.to_owned());
            format!("http://{addr}/webhooks/stripe")
        }
    };
    let url = reqwest::Url::parse(&url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| Failure::Usage(format!("--url {url} is not an http(s) URL")))?;
    let secret = settings::webhook_secrets(|_| {
        Failure::Usage("STRIPE_WEBHOOK_SECRET is not set: send signs with its first secret".into())
    })?
    .swap_remove(0);
    let mut bodies = Vec::with_capacity(args.files.len());
    for path in &args.files {
        bodies.push((path, read_input(path)?));
    }
    let client = reqwest::Client::new();
    let mut all_accepted = true;
    for (path, body) in bodies {
        let now = chrono::Utc::now().timestamp();
        match crate::send::deliver(&client, &url, &secret, body, now).await {
            Ok(answer) => {
                all_accepted &= answer.accepted();
                println!("{path}: {} {}", answer.status, answer.body);
            }
            Err(e) => {
                all_accepted = false;
                eprintln!("error: {path}: cannot deliver to {url}: {e}");
            }
        }
    }
    Ok(if all_accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
