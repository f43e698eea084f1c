//! The `vmm` binary: parse the command line, run, report, exit.
//!
//! The hypervisor lives in the `hypervisor` library and the experiment and
//! disk tools in `lab`; `cli` parses, `config` maps `vmm run`'s flags to the
//! library's configuration. This file must never do more than dispatch and
//! turn results into one stderr line and an exit status.

mod cli;
mod config;
mod ctl;

use cli::Command;

/// Prints a tool's summary line or its one-line error; returns the status.
fn report(result: Result<String, lab::tools::ToolError>) -> i32 {
    match result {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            e.exit_status()
        }
    }
}

/// The one panic strategy of the VMM, in every build: a panic is a VMM bug,
/// so it prints one line and aborts the whole process (release builds also
/// set `panic = "abort"`); no thread is left running on half-updated state.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("vmm: internal error (a VMM bug): {info}");
        std::process::abort();
    }));
}

fn main() {
    abort_on_panic();
    let cli = match cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(cli::parse_error_status(&e));
        }
    };
    hypervisor::logger::init();
    let status = match cli.command {
        Command::Run(args) => match hypervisor::run(&config::vm_config(&args)) {
            Ok(status) => status,
            Err(e) => {
                eprintln!("vmm: error: {e}");
                if let Some((vcpu, dump)) = e.register_dump() {
                    for line in dump.to_string().lines() {
                        eprintln!("vmm: vcpu{vcpu}: {line}");
                    }
                }
                e.exit_status()
            }
        },
        Command::GenFiles(args) => report(lab::tools::gen_files(&args)),
        Command::Mkdisk(args) => report(lab::tools::mkdisk(&args)),
        Command::Ctl(args) => ctl::run(&args),
        Command::Experiment(args) => match experiment_signals() {
            Err(status) => status,
            Ok(()) => match lab::experiment::run(&args) {
                Ok(line) => {
                    println!("{line}");
                    0
                }
                Err(e) => {
                    eprintln!("vmm: error: {e}");
                    e.exit_status()
                }
            },
        },
    };
    std::process::exit(status);
}

/// SIGINT and SIGTERM for `vmm experiment`: the hypervisor's handler (the
/// project's one), read by the experiment's wait loop.
fn experiment_signals() -> Result<(), i32> {
    if let Err(e) = hypervisor::signals::install() {
        eprintln!("vmm: error: cannot install the signal handlers: {e}");
        return Err(pagehint_abi::exit::vmm::INTERNAL);
    }
    lab::experiment::interrupt::set_source(hypervisor::signals::requested);
    Ok(())
}
