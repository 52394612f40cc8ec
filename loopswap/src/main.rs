//! The loopswap controller.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match args.command.execute() {
        Ok(()) => ExitCode::SUCCESS,
        // Exit status of a process killed by SIGPIPE, said quietly.
        Err(err) if cli::is_broken_pipe(&err) => ExitCode::from(141),
        Err(err) => {
            // One line: the error and its causes, outermost first, each
            // cause once (a message may already quote its source).
            let mut line = String::new();
            for cause in err.chain() {
                let text = cause.to_string();
                if !line.contains(&text) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&text);
                }
            }
            eprintln!("loopswap: {line}");
            let code = err
                .chain()
                .find_map(|cause| cause.downcast_ref::<loopswap::Error>())
                .map_or(1, loopswap::Error::exit_code);
            ExitCode::from(code)
        }
    }
}
