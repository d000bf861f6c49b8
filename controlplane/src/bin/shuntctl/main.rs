//! `shuntctl`: the command-line client of the management API. Every call of
//! the API is a subcommand; `--json` prints machine-readable output.
//!
//! Exit codes (for scripts): 0 success; 1 other error; 2 usage error;
//! 3 cannot reach or trust the server; 4 not logged in, token expired or
//! wrong password; 5 permission denied (role); 6 refused in the current
//! state (e.g. keystore sealed, no licence); 7 not found; 8 already exists;
//! 9 invalid argument; 10 rate-limited (too many failed attempts).
#![forbid(unsafe_code)]

mod args;
mod commands;
mod output;
mod render;
mod session;

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shunt_control::client::Client;

#[derive(Debug, Parser)]
#[command(version, about = "Manage a Shunt appliance through its management API")]
pub struct Cli {
    /// Management address of shunt-control (default: from the last login, else 127.0.0.1:7443).
    #[arg(long, global = true, env = "SHUNT_SERVER")]
    server: Option<String>,
    /// SHA-256 fingerprint of the server's certificate, as printed by shunt-control at start.
    #[arg(long, global = true, env = "SHUNT_FINGERPRINT")]
    fingerprint: Option<String>,
    /// Token cache file (default: ~/.config/shunt/token.json).
    #[arg(long, global = true, env = "SHUNTCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Read passwords from standard input, one per line, instead of prompting.
    #[arg(long, global = true)]
    password_stdin: bool,
    #[command(subcommand)]
    command: args::Command,
}

/// How a run failed, as the exit code tells scripts.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::Unavailable => 3,
            Code::Unauthenticated => 4,
            Code::PermissionDenied => 5,
            Code::FailedPrecondition => 6,
            Code::NotFound => 7,
            Code::AlreadyExists => 8,
            Code::InvalidArgument => 9,
            Code::ResourceExhausted => 10,
            _ => 1,
        };
        Self {
            code,
            message: status.message().to_owned(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shuntctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("shuntctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Everything a command needs: the connection and how to print.
pub struct Context {
    pub cli: Cli,
    pub token_file: PathBuf,
    passwords: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl Context {
    /// Server address and fingerprint from flags, else from the token cache.
    pub fn target(&self) -> Result<(String, String), Failure> {
        let cached = session::load(&self.token_file);
        let server = self
            .cli
            .server
            .clone()
            .or_else(|| cached.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| "127.0.0.1:7443".into());
        let fingerprint = self
            .cli
            .fingerprint
            .clone()
            .or_else(|| cached.filter(|c| c.server == server).map(|c| c.fingerprint))
            .ok_or_else(|| Failure {
                code: 2,
                message:
                    "give --fingerprint (printed by shunt-control at start) to trust the server"
                        .into(),
            })?;
        Ok((server, fingerprint))
    }

    pub async fn connect(&self) -> Result<Client, Failure> {
        let (server, fingerprint) = self.target()?;
        Client::connect(&server, &fingerprint)
            .await
            .map_err(|e| Failure {
                code: 3,
                message: format!("{e:#}"),
            })
    }

    /// A connection carrying the cached token.
    pub async fn authed(&self) -> Result<Client, Failure> {
        let (server, _) = self.target()?;
        let client = self.connect().await?;
        let cached = session::load(&self.token_file)
            .filter(|c| c.server == server)
            .ok_or_else(|| Failure {
                code: 4,
                message: format!("not logged in to {server}: run `shuntctl login` first"),
            })?;
        Ok(client.with_token(&cached.token)?)
    }

    /// A password from the terminal (no echo), or the next stdin line.
    pub fn password(&mut self, prompt: &str) -> Result<String, Failure> {
        if self.cli.password_stdin {
            let lines = self
                .passwords
                .get_or_insert_with(|| std::io::stdin().lock().lines());
            return match lines.next() {
                Some(Ok(line)) => Ok(line),
                _ => Err(Failure {
                    code: 2,
                    message: format!("{prompt} expected on standard input"),
                }),
            };
        }
        rpassword::prompt_password(format!("{prompt}: ")).map_err(|e| Failure {
            code: 2,
            message: format!("cannot read the password from the terminal: {e}"),
        })
    }

    /// A new password, asked twice unless read from stdin.
    pub fn new_password(&mut self, prompt: &str) -> Result<String, Failure> {
        let first = self.password(prompt)?;
        if !self.cli.password_stdin {
            let again = self.password(&format!("{prompt} (again)"))?;
            if again != first {
                return Err(Failure {
                    code: 9,
                    message: "the two passwords differ".into(),
                });
            }
        }
        Ok(first)
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let token_file = cli.token_file.clone().unwrap_or_else(session::default_path);
    let mut context = Context {
        cli,
        token_file,
        passwords: None,
    };
    let command = std::mem::replace(&mut context.cli.command, args::Command::Health);
    commands::run(&mut context, command).await
}
