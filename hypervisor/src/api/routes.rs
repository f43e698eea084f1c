//! The API's resources: which request reaches which part of the VMM, and
//! what each answers. `GET /vm`, `GET /stats`, `GET /memory` read;
//! `PATCH /memory` sets the reclaimer's budget; `PUT /actions` stops the
//! VM. The VMM side is the [`VmControl`] trait, so the routing is tested
//! without a VM.
//!
//! It must never block on the guest or a vCPU: every answer comes from
//! counters and tables the VMM already keeps, read without a lock a vCPU
//! takes.

use serde::Deserialize;

use super::http::{Method, Request, Response};

/// What the API can ask of a running VMM.
pub trait VmControl {
    /// `GET /vm`: state, uptime and configuration, as JSON.
    fn vm(&self) -> serde_json::Value;
    /// `GET /stats`: the stats document, live.
    fn stats(&self) -> serde_json::Value;
    /// `GET /memory`: the working set by page state, the budget and the
    /// cgroup's figures.
    fn memory(&self) -> serde_json::Value;
    /// `PATCH /memory`: a new budget in bytes, or none. `Err` is the
    /// reason it was refused (below the guest's floor, say).
    fn set_budget(&self, bytes: Option<u64>) -> Result<(), String>;
    /// `PUT /actions {"action": "stop"}`: the clean stop SIGTERM makes.
    fn stop(&self);
}

/// The body of `PUT /actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action: String,
}

/// Answers one request.
pub fn route(req: &Request, vm: &dyn VmControl) -> Response {
    match (req.method, req.path.as_str()) {
        (Method::Get, "/vm") => Response::json(vm.vm().to_string()),
        (Method::Get, "/stats") => Response::json(vm.stats().to_string()),
        (Method::Get, "/memory") => Response::json(vm.memory().to_string()),
        (Method::Patch, "/memory") => match budget_of(&req.body) {
            Ok(bytes) => match vm.set_budget(bytes) {
                Ok(()) => Response::no_content(),
                Err(why) => Response::fault(400, &why),
            },
            Err(e) => Response::fault(400, &format!("bad body for PATCH /memory: {e}")),
        },
        (Method::Put, "/actions") => match object::<Action>(&req.body) {
            Ok(a) if a.action == "stop" => {
                vm.stop();
                Response::no_content()
            }
            Ok(a) => Response::fault(400, &format!("unknown action {:?} (stop)", a.action)),
            Err(e) => Response::fault(400, &format!("bad body for PUT /actions: {e}")),
        },
        (_, "/vm" | "/stats" | "/memory" | "/actions") => Response::fault(
            405,
            &format!("{:?} is not allowed on {}", req.method, req.path),
        ),
        _ => Response::fault(404, &format!("no resource {:?}", short(&req.path))),
    }
}

/// The budget a `PATCH /memory` body asks for: exactly one field,
/// `budget_bytes` (or its short name `budget`), a whole number of bytes or
/// null for none. `{}` is refused rather than read as "no budget".
fn budget_of(body: &[u8]) -> Result<Option<u64>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(fields) = value.as_object() else {
        return Err("expected a JSON object".into());
    };
    let mut it = fields.iter();
    let (Some((name, v)), None) = (it.next(), it.next()) else {
        return Err("expected exactly one field, budget_bytes".into());
    };
    if name != "budget_bytes" && name != "budget" {
        return Err(format!("unknown field {:?} (budget_bytes)", short(name)));
    }
    match v {
        serde_json::Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| "budget_bytes must be a whole number of bytes or null".into()),
    }
}

/// A body that must be one JSON object of type `T` (serde would also
/// take a struct from an array; the API does not).
fn object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    serde_json::from_value(value)
}

fn short(path: &str) -> String {
    path.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Fake {
        budget: RefCell<Vec<Option<u64>>>,
        stopped: RefCell<bool>,
    }

    impl VmControl for Fake {
        fn vm(&self) -> serde_json::Value {
            serde_json::json!({"state": "running"})
        }
        fn stats(&self) -> serde_json::Value {
            serde_json::json!({"exits": 1})
        }
        fn memory(&self) -> serde_json::Value {
            serde_json::json!({"stable_pages": 5})
        }
        fn set_budget(&self, bytes: Option<u64>) -> Result<(), String> {
            if bytes.is_some_and(|b| b < 4096) {
                return Err("below the floor".into());
            }
            self.budget.borrow_mut().push(bytes);
            Ok(())
        }
        fn stop(&self) {
            *self.stopped.borrow_mut() = true;
        }
    }

    fn req(method: Method, path: &str, body: &str) -> Request {
        Request {
            method,
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn reads_answer_with_the_vmm_s_documents() {
        let f = Fake::default();
        let r = route(&req(Method::Get, "/memory", ""), &f);
        assert_eq!((r.status, r.body.as_str()), (200, "{\"stable_pages\":5}"));
        assert_eq!(
            route(&req(Method::Get, "/vm", ""), &f).body,
            "{\"state\":\"running\"}"
        );
        assert_eq!(route(&req(Method::Get, "/stats", ""), &f).status, 200);
    }

    #[test]
    fn the_budget_is_set_cleared_and_refused() {
        let f = Fake::default();
        let ok = route(
            &req(Method::Patch, "/memory", "{\"budget_bytes\": 8388608}"),
            &f,
        );
        assert_eq!(ok.status, 204);
        let clear = route(
            &req(Method::Patch, "/memory", "{\"budget_bytes\": null}"),
            &f,
        );
        assert_eq!(clear.status, 204);
        assert_eq!(*f.budget.borrow(), vec![Some(8 << 20), None]);
        let low = route(&req(Method::Patch, "/memory", "{\"budget_bytes\": 1}"), &f);
        assert_eq!(
            (low.status, low.body.as_str()),
            (400, "{\"fault_message\":\"below the floor\"}")
        );
        let short_name = route(&req(Method::Patch, "/memory", "{\"budget\": null}"), &f);
        assert_eq!(short_name.status, 204);
        assert_eq!(f.budget.borrow().len(), 3);
        for bad in [
            "",
            "{",
            "{}",
            "{\"budget_mib\": 5}",
            "{\"budget_bytes\": -1}",
            "{\"budget_bytes\": 1.5}",
            "{\"budget_bytes\": \"8M\"}",
            "{\"budget_bytes\": 8, \"x\": 1}",
            "[1]",
        ] {
            let r = route(&req(Method::Patch, "/memory", bad), &f);
            assert_eq!(r.status, 400, "{bad}");
            assert!(
                r.body.starts_with("{\"fault_message\":\"bad body"),
                "{bad}: {}",
                r.body
            );
        }
        assert_eq!(f.budget.borrow().len(), 3, "refused bodies change nothing");
    }

    #[test]
    fn stop_is_the_only_action_and_unknown_paths_are_404() {
        let f = Fake::default();
        assert_eq!(
            route(&req(Method::Put, "/actions", "{\"action\": \"pause\"}"), &f).status,
            400
        );
        assert!(!*f.stopped.borrow());
        assert_eq!(
            route(&req(Method::Put, "/actions", "{\"action\": \"stop\"}"), &f).status,
            204
        );
        assert!(*f.stopped.borrow());
        assert_eq!(route(&req(Method::Get, "/nope", ""), &f).status, 404);
        assert_eq!(route(&req(Method::Put, "/memory", "{}"), &f).status, 405);
        assert_eq!(route(&req(Method::Get, "/actions", ""), &f).status, 405);
    }
}
