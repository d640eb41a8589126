//! The `fustian` binary: parse flags, load the configuration, run, map errors to exit codes.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use fustian::cli::{Cli, Command};
use fustian::config::{NodeConfig, RawNode};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fustian: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    match cli.command {
        Command::Run(args) => {
            let file = match &args.config {
                Some(path) => Some((path.as_path(), RawNode::from_file(path)?)),
                None => None,
            };
            let config = NodeConfig::resolve(&args.raw(), file.as_ref().map(|(p, r)| (*p, r)))?;
            // SIGHUP re-reads the peers from the config file.
            let reload = match &args.config {
                Some(path) => {
                    let requested = Arc::new(AtomicBool::new(false));
                    signal_hook::flag::register(
                        signal_hook::consts::SIGHUP,
                        Arc::clone(&requested),
                    )?;
                    Some(fustian::node::Reload {
                        path: path.clone(),
                        flags: args.raw(),
                        requested,
                    })
                }
                None => None,
            };
            let opts = fustian::node::RunOptions {
                stats_file: args.stats_file.clone(),
                table_churn: args.table_churn,
                multishot: !args.no_multishot,
                reload,
                user: args.user.clone(),
                keep_privileges: args.keep_privileges,
            };
            fustian::node::run(&config, &opts, &stop)?;
        }
        Command::Lab(args) => {
            let report = fustian::lab::run(&args, &stop)?;
            println!("{report}");
        }
    }
    Ok(())
}
