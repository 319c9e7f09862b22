//! `sockmesh`: the operator CLI. Reads a node's agent through its admin API and prints
//! human tables, or the agent's JSON with `-o json`; `sockmesh fault` starts and ends chaos
//! drills; `sockmesh config` reads and rolls back the control plane's versions.
//! Reference: `docs/cli.md`.
//!
//! This file only parses flags, picks the endpoint and prints; requests, errors and tables
//! live in `sockmesh_cli`, where they are tested.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use sockmesh_cli::{
    control::{self, ControlClient, DEFAULT_CONTROL_URL},
    pretty_json, render, AdminClient, AdminTarget, AdminToken, FaultDrill, JsonReply, Query,
    DEFAULT_ADMIN_SOCKET, FAULT_PATH,
};
use sockmesh_model::protocol::{AGENTS_PATH, HISTORY_PATH, ROLLBACK_PATH};
use sockmesh_model::{ControlAddress, Token};

/// The control plane's token when no --token-file is given (as `sockmesh-control` reads it).
const CONTROL_TOKEN_ENV: &str = "SOCKMESH_CONTROL_TOKEN";

#[derive(Parser)]
#[command(
    name = "sockmesh",
    version,
    about = "Show what a node's sockmesh agent is doing, from its admin API (and run fault drills)",
    after_help = "The agent's admin API: a unix socket (mode 0600, run as root) or, when the \
                  agent runs with --admin-addr, TCP with a bearer token."
)]
struct Cli {
    /// The agent's admin socket.
    #[arg(long, global = true, value_name = "PATH", env = "SOCKMESH_ADMIN_SOCKET",
          default_value = DEFAULT_ADMIN_SOCKET)]
    admin_socket: PathBuf,

    /// Use the agent's TCP admin API instead of the socket (needs --token-file).
    // Not `requires = "token_file"`: clap checks that per subcommand scope, and misses a
    // token file given after the command when the URL comes from the environment.
    #[arg(
        long,
        global = true,
        value_name = "http://IP:PORT",
        env = "SOCKMESH_ADMIN_URL"
    )]
    admin_url: Option<String>,

    /// The control plane, for `sockmesh config`: https://HOST:PORT (needs --control-ca,
    /// and --token-file or SOCKMESH_CONTROL_TOKEN), http://HOST:PORT (also
    /// --insecure-plaintext) or unix:PATH.
    #[arg(long, global = true, value_name = "URL", env = "SOCKMESH_CONTROL_URL",
          default_value = DEFAULT_CONTROL_URL)]
    control_url: String,

    /// `sockmesh config`: the CA bundle (PEM) that signed the control plane's certificate,
    /// for an https:// --control-url.
    #[arg(long, global = true, value_name = "FILE", env = "SOCKMESH_CONTROL_CA")]
    control_ca: Option<PathBuf>,

    /// `sockmesh config`: accept an http:// --control-url, whose token and replies travel
    /// in the clear.
    #[arg(long, global = true)]
    insecure_plaintext: bool,

    /// File whose first line is the token: the agent's --admin-token-file, or for
    /// `sockmesh config` the control plane's --token-file.
    #[arg(long, global = true, value_name = "FILE", env = "SOCKMESH_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// Output format: aligned tables for people, the agent's JSON for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Readiness, adopted pins, cgroup, bpffs and the applied config (GET /status).
    Status,
    /// Services with their VIP, policy, backend count and slot table size (GET /v1/services).
    Services,
    /// One service's backends with live connection stats (GET /v1/backends).
    Backends {
        /// The service's name, as in the mesh config.
        service: String,
    },
    /// Workloads with run-queue latency and CPU throttling (GET /v1/workloads).
    Workloads,
    /// The most recent failed connects, newest first (GET /v1/failures).
    Failures,
    /// Backends banned for failing, or probed before they return (GET /v1/bans).
    Bans,
    /// Each service's circuit breaker, panic mode, shedding and fault drill (GET /v1/circuits).
    Circuits,
    /// Connects per caller x service: the last 5 min against the 5 min before (GET /v1/lines).
    Lines,
    /// Services worst first: SLO burn, failure growth, latency growth (GET /v1/top).
    Top,
    /// The likely causes of a service's trouble, ranked, with evidence (GET /v1/diagnose).
    Diagnose {
        /// The service's name, as in the mesh config.
        service: String,
    },
    /// Chaos drills: make the kernel refuse a share of a service's connects (POST /v1/fault).
    Fault {
        #[command(subcommand)]
        action: FaultAction,
    },
    /// The control plane's versions: history, rollback, and which agents run what.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// The kept versions, newest (the one agents are served) first (GET /v1/history).
    History,
    /// Serve an old version's config again, as a new version (POST /v1/rollback).
    Rollback {
        /// A version from `sockmesh config history`.
        version: u64,
    },
    /// Each agent's applied version, last ack and sync age (GET /v1/agents).
    Agents,
}

#[derive(Subcommand)]
enum FaultAction {
    /// Refuse a share of SERVICE's connects until `fault clear` (or another `fault set`).
    Set {
        /// The service's name, as in the mesh config.
        service: String,
        /// Percentage of connects to refuse, 0 to 100 (`25` or `25%`); 0 ends the drill.
        #[arg(long, value_name = "P", value_parser = parse_percent, allow_negative_numbers = true)]
        refuse_percent: f64,
    },
    /// End SERVICE's drill: refuse nothing (the same as `set SERVICE --refuse-percent 0`).
    Clear {
        /// The service's name, as in the mesh config.
        service: String,
    },
}

/// A number, with an optional `%`. Only NaN and infinities are refused here (JSON cannot
/// carry them); the range is the agent's to judge, so its 400 names the rule.
fn parse_percent(arg: &str) -> Result<f64, String> {
    let number = arg.trim().strip_suffix('%').unwrap_or(arg.trim());
    match number.parse::<f64>() {
        Ok(p) if p.is_finite() => Ok(p),
        _ => Err(format!(
            "{arg:?} is not a percentage (expected e.g. 25 or 12.5)"
        )),
    }
}

/// What one command asks of the agent.
enum Request {
    Get(Query),
    Fault(FaultDrill),
}

/// Whom a command asks: a node's agent, or (for `config`) the control plane.
enum Target {
    Agent(Request),
    Control(ConfigAction),
}

impl Target {
    fn of(command: &Command) -> Self {
        match command {
            Command::Config { action } => Target::Control(match action {
                ConfigAction::History => ConfigAction::History,
                ConfigAction::Rollback { version } => ConfigAction::Rollback { version: *version },
                ConfigAction::Agents => ConfigAction::Agents,
            }),
            other => Target::Agent(Request::of(other)),
        }
    }
}

impl Request {
    fn of(command: &Command) -> Self {
        Request::Get(match command {
            Command::Config { .. } => unreachable!("Target::of routes config to the control plane"),
            Command::Status => Query::Status,
            Command::Services => Query::Services,
            Command::Backends { service } => Query::Backends {
                service: service.clone(),
            },
            Command::Workloads => Query::Workloads,
            Command::Failures => Query::Failures,
            Command::Bans => Query::Bans,
            Command::Circuits => Query::Circuits,
            Command::Lines => Query::Lines,
            Command::Top => Query::Top,
            Command::Diagnose { service } => Query::Diagnose {
                service: service.clone(),
            },
            Command::Fault { action } => {
                return Request::Fault(match action {
                    FaultAction::Set {
                        service,
                        refuse_percent,
                    } => FaultDrill::set(service, *refuse_percent),
                    FaultAction::Clear { service } => FaultDrill::clear(service),
                })
            }
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_config = matches!(cli.command, Command::Config { .. });
    if is_config
        && cli.control_url.starts_with("http")
        && cli.token_file.is_none()
        && std::env::var_os(CONTROL_TOKEN_ENV).is_none()
    {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "an http(s):// --control-url needs --token-file (or SOCKMESH_CONTROL_TOKEN): \
                 the control plane's TCP API always requires a token",
            )
            .exit();
    }
    if is_config && cli.control_url.starts_with("http://") && !cli.insecure_plaintext {
        Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                "the control channel is plain http; pass an https:// --control-url with \
                 --control-ca, or --insecure-plaintext to accept it",
            )
            .exit();
    }
    if is_config && cli.control_url.starts_with("https://") && cli.control_ca.is_none() {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "an https:// --control-url needs --control-ca FILE: the CA that signed the \
                 control plane's certificate",
            )
            .exit();
    }
    if !is_config && cli.admin_url.is_some() && cli.token_file.is_none() {
        // The agent never serves TCP without a token: fail as a usage error, before connecting.
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "--admin-url needs --token-file (or SOCKMESH_TOKEN_FILE): \
                 the agent's TCP admin API always requires a token",
            )
            .exit();
    }
    let output = match run(&cli) {
        Ok(output) => output,
        Err(err) => {
            eprintln!("sockmesh: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        // `sockmesh failures | head` closing the pipe early is not an error worth a message.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sockmesh: writing the output: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Everything but printing, so every failure takes the one exit path in `main`.
fn run(cli: &Cli) -> Result<String> {
    let request = match Target::of(&cli.command) {
        Target::Control(action) => return run_config(cli, &action),
        Target::Agent(request) => request,
    };
    let target = match &cli.admin_url {
        Some(url) => AdminTarget::from_url(url)?,
        None => AdminTarget::Unix(cli.admin_socket.clone()),
    };
    let mut client = AdminClient::new(target);
    if let Some(path) = &cli.token_file {
        client = client.with_token(AdminToken::read_file(path)?);
    }
    let reply = match &request {
        Request::Get(query) => client.get_json(&query.path())?,
        Request::Fault(drill) => client.post_json(FAULT_PATH, &drill.body())?,
    };
    Ok(match (cli.output, &request) {
        (Output::Json, _) => {
            let mut text = pretty_json(&reply.text).context("formatting the agent's JSON")?;
            text.push('\n');
            text
        }
        (Output::Table, Request::Get(query)) => query.render_table(&reply.value)?,
        (Output::Table, Request::Fault(_)) => render::fault(&reply.value)?,
    })
}

/// `sockmesh config ...`: one request to the control plane.
fn run_config(cli: &Cli, action: &ConfigAction) -> Result<String> {
    let mut client = ControlClient::new(ControlAddress::parse(&cli.control_url)?);
    if let Some(ca) = &cli.control_ca {
        client = client.with_tls(sockmesh_tls::ClientTls::from_ca_file(ca)?);
    }
    if let Some(path) = &cli.token_file {
        client = client.with_token(Token::read_file(path)?);
    } else if let Ok(text) = std::env::var(CONTROL_TOKEN_ENV) {
        client = client.with_token(Token::new(&text, &format!("in {CONTROL_TOKEN_ENV}"))?);
    }
    let reply: JsonReply = match action {
        ConfigAction::History => client.get_json(HISTORY_PATH)?,
        ConfigAction::Agents => client.get_json(AGENTS_PATH)?,
        ConfigAction::Rollback { version } => {
            client.post_json(ROLLBACK_PATH, &serde_json::json!({ "version": version }))?
        }
    };
    Ok(match cli.output {
        Output::Json => {
            let mut text =
                pretty_json(&reply.text).context("formatting the control plane's JSON")?;
            text.push('\n');
            text
        }
        Output::Table => match action {
            ConfigAction::History => control::history(&reply.value)?,
            ConfigAction::Agents => control::agents(&reply.value)?,
            ConfigAction::Rollback { .. } => control::rollback(&reply.value)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_command() {
        let cli = Cli::try_parse_from(["sockmesh", "backends", "web", "-o", "json"]).unwrap();
        assert!(matches!(cli.output, Output::Json));
        assert!(matches!(cli.command, Command::Backends { ref service } if service == "web"));
    }

    fn drill(args: &[&str]) -> Result<FaultDrill, clap::Error> {
        let cli = Cli::try_parse_from(args)?;
        match Request::of(&cli.command) {
            Request::Fault(drill) => Ok(drill),
            Request::Get(query) => panic!("{args:?} parsed as {query:?}"),
        }
    }

    #[test]
    fn fault_commands_build_the_drill() {
        let set = |p: &str| drill(&["sockmesh", "fault", "set", "web", "--refuse-percent", p]);
        assert_eq!(set("25").unwrap(), FaultDrill::set("web", 25.0));
        assert_eq!(set("12.5%").unwrap(), FaultDrill::set("web", 12.5));
        // Out of range is the agent's call (its 400 says why), not a usage error.
        assert_eq!(set("-5").unwrap(), FaultDrill::set("web", -5.0));
        assert_eq!(set("150").unwrap(), FaultDrill::set("web", 150.0));
        for bad in ["nan", "inf", "lots", ""] {
            let err = set(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad:?}");
        }
        assert_eq!(
            drill(&["sockmesh", "fault", "clear", "web", "-o", "json"]).unwrap(),
            FaultDrill::clear("web")
        );
        let err = drill(&["sockmesh", "fault", "set", "web"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn config_commands_parse() {
        let cli = Cli::try_parse_from([
            "sockmesh",
            "config",
            "rollback",
            "7",
            "--control-url",
            "http://127.0.0.1:9480",
        ])
        .unwrap();
        assert!(matches!(
            Target::of(&cli.command),
            Target::Control(ConfigAction::Rollback { version: 7 })
        ));
        assert_eq!(cli.control_url, "http://127.0.0.1:9480");
        let err = Cli::try_parse_from(["sockmesh", "config", "rollback", "seven"])
            .err()
            .expect("a version must be a number");
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
    }

    /// Every command the CLI has, as typed: `sockmesh status`, `sockmesh fault set`, ...
    fn commands(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
            let name = format!("{prefix} {}", sub.get_name());
            if sub.has_subcommands() {
                commands(sub, &name, out);
            } else {
                out.push(name);
            }
        }
    }

    fn doc(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn readme_lists_exactly_the_commands_clap_defines() {
        let readme = doc("README.md");
        let section = &readme[readme.find("\n## CLI\n").expect("README has a CLI section")..];
        let listed: std::collections::BTreeSet<String> = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
            .filter(|c| c.starts_with("sockmesh "))
            .collect();
        let mut defined = Vec::new();
        commands(&Cli::command(), "sockmesh", &mut defined);
        let defined: std::collections::BTreeSet<String> = defined.into_iter().collect();
        assert_eq!(
            listed, defined,
            "README.md's CLI table and the clap definition disagree"
        );
        let cli_doc = doc("docs/cli.md");
        for c in &defined {
            assert!(
                cli_doc.contains(c.as_str()),
                "docs/cli.md never names `{c}`"
            );
        }
    }
}
