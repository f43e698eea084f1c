//! `vmm ctl`: a small client of a running VMM's API socket, for people
//! without `curl --unix-socket`. `get` prints the resource's JSON
//! (indented), `set-budget` and `stop` print one line saying what was
//! done.
//!
//! Exit statuses: 0 when the VMM accepted the request;
//! `API_UNREACHABLE` (86) when nothing answered at the socket;
//! `API_REFUSED` (87) when the VMM answered with an error, whose
//! `fault_message` is the one line printed. This module must never retry
//! a request: a stop sent twice would be a second stop.

use hypervisor::api::client::{request, Answer};
use pagehint_abi::exit::vmm as status;

use crate::cli::{CtlAction, CtlArgs, Resource};

/// The request `action` makes: method, path, body.
fn request_of(action: &CtlAction) -> (&'static str, &'static str, String) {
    match action {
        CtlAction::Get { resource } => (
            "GET",
            match resource {
                Resource::Memory => "/memory",
                Resource::Vm => "/vm",
                Resource::Stats => "/stats",
            },
            String::new(),
        ),
        CtlAction::SetBudget { budget } => (
            "PATCH",
            "/memory",
            serde_json::json!({ "budget_bytes": budget.0 }).to_string(),
        ),
        CtlAction::Stop => (
            "PUT",
            "/actions",
            serde_json::json!({ "action": "stop" }).to_string(),
        ),
    }
}

/// What to print for an accepted request.
fn success_line(action: &CtlAction, answer: &Answer) -> String {
    match action {
        CtlAction::Get { .. } => serde_json::from_str::<serde_json::Value>(&answer.body)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| answer.body.clone()),
        CtlAction::SetBudget { budget } => match budget.0 {
            Some(b) => format!("budget set to {b} bytes"),
            None => "budget removed".to_string(),
        },
        CtlAction::Stop => "stop asked for; the VMM exits as on SIGTERM".to_string(),
    }
}

/// Runs `vmm ctl`; returns the exit status.
pub fn run(args: &CtlArgs) -> i32 {
    let (method, path, body) = request_of(&args.action);
    match request(&args.api_sock, method, path, &body) {
        Ok(a) if a.ok() => {
            println!("{}", success_line(&args.action, &a));
            0
        }
        Ok(a) => {
            eprintln!(
                "vmm: error: {} {path}: {} ({})",
                method,
                a.fault_message(),
                a.status
            );
            status::API_REFUSED
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            status::API_UNREACHABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse_from, Command};

    fn ctl(args: &[&str]) -> CtlArgs {
        let mut v = vec!["vmm", "ctl", "--api-sock", "/tmp/x.sock"];
        v.extend_from_slice(args);
        match parse_from(v).unwrap().command {
            Command::Ctl(c) => c,
            other => panic!("not ctl: {other:?}"),
        }
    }

    #[test]
    fn each_action_makes_its_request() {
        assert_eq!(request_of(&ctl(&["get"]).action).1, "/memory");
        assert_eq!(request_of(&ctl(&["get", "vm"]).action).1, "/vm");
        assert_eq!(request_of(&ctl(&["get", "stats"]).action).1, "/stats");
        let (m, p, b) = request_of(&ctl(&["set-budget", "64M"]).action);
        assert_eq!(
            (m, p, b.as_str()),
            ("PATCH", "/memory", "{\"budget_bytes\":67108864}")
        );
        let (_, _, b) = request_of(&ctl(&["set-budget", "none"]).action);
        assert_eq!(b, "{\"budget_bytes\":null}");
        let (m, p, b) = request_of(&ctl(&["stop"]).action);
        assert_eq!(
            (m, p, b.as_str()),
            ("PUT", "/actions", "{\"action\":\"stop\"}")
        );
        for bad in [
            &["set-budget", "lots"][..],
            &["get", "disk"],
            &["pause"],
            &[],
        ] {
            let mut v = vec!["vmm", "ctl", "--api-sock", "/tmp/x.sock"];
            v.extend_from_slice(bad);
            assert!(parse_from(v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nothing_listening_is_its_own_status() {
        let args = CtlArgs {
            api_sock: "/nonexistent/vmm.sock".into(),
            action: CtlAction::Stop,
        };
        assert_eq!(run(&args), status::API_UNREACHABLE);
    }
}
