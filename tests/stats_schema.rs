//! The stats document (`vmm run --stats FILE`) against its schema,
//! `docs/stats-schema.json`, and its reference, `docs/stats.md`.
//!
//! The real guest boots under KVM in three small runs that between them
//! fill most sections (a budget with discard faults and the shared table on
//! a disk, batched hint hypercalls, free page reporting); each final
//! document must validate: no field the schema lacks, every required field,
//! every type right. The validator is written here, for the subset of JSON
//! Schema the schema uses (`type`, `properties`, `required`,
//! `additionalProperties: false`, `items`), and refuses a schema that uses
//! any other keyword rather than ignore it. Without KVM: the schema is well
//! formed (every object closed and requiring all its properties, every leaf
//! with a description and a unit), `docs/stats.md` names every leaf with
//! the schema's unit and no leaf the schema lacks, and the validator catches
//! an extra field, a missing one and a wrong type.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::guest::{boot_str, StatsFile};
use common::{json_u64 as get, read_stats, results, Disk};
use serde_json::Value;

const SCHEMA: &str = include_str!("../docs/stats-schema.json");
const REFERENCE: &str = include_str!("../docs/stats.md");

/// The units a leaf may carry (`docs/stats.md`, "Shape and types").
const UNITS: [&str; 5] = ["count", "pages", "bytes", "ms", "us"];
/// The keywords the validator applies.
const APPLIED: [&str; 5] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
];
/// The keywords it knows to be annotations only.
const ANNOTATIONS: [&str; 6] = ["$schema", "$id", "$comment", "title", "description", "unit"];
/// The types a leaf may have.
const LEAF_TYPES: [&str; 5] = ["integer", "number", "string", "boolean", "null"];

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("docs/stats-schema.json is not JSON")
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The type names a schema node allows (`type` as a string or a list).
fn types(node: &Value) -> Vec<&str> {
    match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        _ => false,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `value` (at dotted `path`) against `schema`, one message per
/// violation.
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let at = if path.is_empty() { "(document)" } else { path };
    let Some(node) = schema.as_object() else {
        errors.push(format!("{at}: the schema node is not an object"));
        return;
    };
    for k in node.keys() {
        if !APPLIED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
            errors.push(format!(
                "{at}: schema keyword {k:?} is outside the subset this validator applies"
            ));
        }
    }
    if node.contains_key("type") {
        let allowed = types(schema);
        if allowed.is_empty() {
            errors.push(format!("{at}: the schema's type is malformed"));
            return;
        }
        if !allowed.iter().any(|t| has_type(value, t)) {
            errors.push(format!(
                "{at}: {} {value} where the schema wants {}",
                kind(value),
                allowed.join(" or ")
            ));
            return;
        }
    }
    if let Value::Object(fields) = value {
        if let Some(required) = node.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    errors.push(format!(
                        "{}: required by the schema, missing from the document",
                        child(path, name)
                    ));
                }
            }
        }
        let properties = node.get("properties").and_then(Value::as_object);
        let closed = node.get("additionalProperties") == Some(&Value::Bool(false));
        for (name, v) in fields {
            let p = child(path, name);
            match properties.and_then(|ps| ps.get(name)) {
                Some(sub) => validate(sub, v, &p, errors),
                None if closed => errors.push(format!(
                    "{p}: in the document, not in the schema (add it to docs/stats-schema.json and docs/stats.md)"
                )),
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (value, node.get("items")) {
        for (i, v) in items.iter().enumerate() {
            validate(item, v, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Panics with every violation unless `doc` validates.
fn assert_valid(doc: &Value, what: &str) {
    let mut errors = Vec::new();
    validate(&schema(), doc, "", &mut errors);
    assert!(
        errors.is_empty(),
        "{what}: the stats document does not match docs/stats-schema.json:\n  {}\n--- document\n{doc}",
        errors.join("\n  ")
    );
}

/// Every leaf of the schema (a node that is not an object with
/// properties), with its dotted path.
fn leaves<'a>(node: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match node.get("properties").and_then(Value::as_object) {
        Some(ps) => {
            for (name, sub) in ps {
                leaves(sub, &child(path, name), out);
            }
        }
        None => out.push((path.to_string(), node)),
    }
}

/// A document the schema accepts: every property, each leaf of its first
/// type (0 for numbers).
fn example(node: &Value) -> Value {
    if let Some(ps) = node.get("properties").and_then(Value::as_object) {
        return Value::Object(ps.iter().map(|(k, v)| (k.clone(), example(v))).collect());
    }
    match types(node).first().copied() {
        Some("integer" | "number") => Value::from(0u64),
        Some("string") => Value::from(""),
        Some("boolean") => Value::from(false),
        Some("array") => Value::Array(Vec::new()),
        _ => Value::Null,
    }
}

/// The node at dotted `path` of a document, for mutation.
fn at_mut<'a>(doc: &'a mut Value, path: &str) -> &'a mut Value {
    path.split('.').fold(doc, |v, k| &mut v[k])
}

fn violations(doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    validate(&schema(), doc, "", &mut errors);
    errors
}

#[test]
fn the_schema_is_closed_and_every_leaf_has_a_description_and_a_unit() {
    fn check(node: &Value, path: &str, problems: &mut Vec<String>) {
        let at = if path.is_empty() { "(root)" } else { path };
        let Some(map) = node.as_object() else {
            problems.push(format!("{at}: not an object"));
            return;
        };
        for k in map.keys() {
            if !APPLIED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
                problems.push(format!("{at}: unknown keyword {k:?}"));
            }
        }
        let ts = types(node);
        if ts.is_empty() {
            problems.push(format!("{at}: no type"));
        }
        if let Some(ps) = map.get("properties") {
            let Some(ps) = ps.as_object() else {
                problems.push(format!("{at}: properties is not an object"));
                return;
            };
            if ts != ["object"] {
                problems.push(format!("{at}: has properties but type {ts:?}"));
            }
            if map.get("additionalProperties") != Some(&Value::Bool(false)) {
                problems.push(format!("{at}: additionalProperties is not false"));
            }
            let names: BTreeSet<&str> = ps.keys().map(String::as_str).collect();
            let required: Vec<&str> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let required_set: BTreeSet<&str> = required.iter().copied().collect();
            if required_set.len() != required.len() {
                problems.push(format!("{at}: a name is twice in required"));
            }
            // The VMM always writes every field: all are required.
            if required_set != names {
                let missing: Vec<_> = names.difference(&required_set).collect();
                let stray: Vec<_> = required_set.difference(&names).collect();
                problems.push(format!(
                    "{at}: required and properties differ: not required {missing:?}, required but no property {stray:?}"
                ));
            }
            for (name, sub) in ps {
                check(sub, &child(path, name), problems);
            }
            return;
        }
        if ts.iter().any(|t| !LEAF_TYPES.contains(t)) || ts.is_empty() {
            problems.push(format!(
                "{at}: leaf type {ts:?} is not one of {LEAF_TYPES:?}"
            ));
        }
        match map.get("description").and_then(Value::as_str) {
            Some(d) if !d.trim().is_empty() => {}
            _ => problems.push(format!("{at}: no description")),
        }
        match map.get("unit").and_then(Value::as_str) {
            Some(u) if UNITS.contains(&u) => {}
            Some(u) => problems.push(format!("{at}: unit {u:?} is not one of {UNITS:?}")),
            None => problems.push(format!("{at}: no unit")),
        }
    }
    let s = schema();
    let mut problems = Vec::new();
    check(&s, "", &mut problems);
    assert!(
        problems.is_empty(),
        "docs/stats-schema.json:\n  {}",
        problems.join("\n  ")
    );
    let mut all = Vec::new();
    leaves(&s, "", &mut all);
    assert!(all.len() > 100, "only {} leaves", all.len());
}

#[test]
fn the_reference_names_every_leaf_with_its_unit_and_no_other() {
    let s = schema();
    let mut all = Vec::new();
    leaves(&s, "", &mut all);
    let unit_of = |path: &str| {
        all.iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, n)| n.get("unit"))
            .and_then(Value::as_str)
    };
    let mut problems = Vec::new();
    for (path, _) in &all {
        if !REFERENCE.contains(&format!("`{path}`")) {
            problems.push(format!("{path}: not named in docs/stats.md"));
        }
    }
    // The rows of the field tables (`| field | unit | meaning |`): each
    // names one leaf, with the schema's unit.
    let mut rows = 0;
    let mut in_table = false;
    for line in REFERENCE.lines() {
        if line.trim() == "| field | unit | meaning |" {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || line.starts_with("| ---") {
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let path = cells
            .first()
            .and_then(|c| c.strip_prefix("| `"))
            .and_then(|c| c.strip_suffix('`'))
            .unwrap_or_else(|| panic!("docs/stats.md: field row without a `path`: {line}"));
        rows += 1;
        match (unit_of(path), cells.get(1)) {
            (None, _) => problems.push(format!(
                "docs/stats.md names {path}, which the schema has no leaf for"
            )),
            (Some(u), Some(&cell)) if cell == u => {}
            (Some(u), cell) => problems.push(format!(
                "docs/stats.md gives {path} the unit {cell:?}, the schema {u:?}"
            )),
        }
    }
    assert_eq!(rows, all.len(), "one table row per leaf in docs/stats.md");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_validator_refuses_an_extra_field_a_missing_one_and_a_wrong_type() {
    let s = schema();
    let good = example(&s);
    assert_eq!(violations(&good), Vec::<String>::new());

    let refused = |change: &dyn Fn(&mut Value), wanted: &str| {
        let mut doc = good.clone();
        change(&mut doc);
        let errors = violations(&doc);
        assert!(
            errors.iter().any(|e| e.starts_with(wanted)),
            "no violation at {wanted}: {errors:?}"
        );
    };
    // Extra fields, at the top and deep down.
    refused(&|d| d["new_section"] = Value::from(1), "new_section");
    refused(
        &|d| d["discard_faults"]["zero_fills_new"] = Value::from(1),
        "discard_faults.zero_fills_new",
    );
    refused(
        &|d| d["discard_faults"]["round_trip_us"]["p90_us"] = Value::from(1),
        "discard_faults.round_trip_us.p90_us",
    );
    // Missing fields.
    refused(
        &|d| {
            d["hypercalls"]["errors"]
                .as_object_mut()
                .unwrap()
                .remove("bad_count");
        },
        "hypercalls.errors.bad_count",
    );
    refused(
        &|d| {
            d.as_object_mut().unwrap().remove("elapsed_ms");
        },
        "elapsed_ms",
    );
    // Wrong types.
    refused(&|d| d["elapsed_ms"] = Value::from("5"), "elapsed_ms");
    refused(&|d| d["exits"]["io_out"] = Value::from(1.5), "exits.io_out");
    refused(&|d| d["frames"]["stable"] = Value::Null, "frames.stable");
    refused(&|d| d["block"] = Value::from(0), "block");
    refused(
        &|d| *at_mut(d, "memory.budget_bytes") = Value::from(true),
        "memory.budget_bytes",
    );
    // Null only where the schema allows it.
    let mut nullable = good.clone();
    *at_mut(&mut nullable, "memory.budget_bytes") = Value::Null;
    *at_mut(&mut nullable, "memory.cgroup_limit_bytes") = Value::from(1u64 << 30);
    assert_eq!(violations(&nullable), Vec::<String>::new());
    // A schema keyword outside the subset is refused, not ignored.
    let mut loose = s.clone();
    loose["properties"]["elapsed_ms"]["minimum"] = Value::from(1);
    let mut errors = Vec::new();
    validate(&loose, &good, "", &mut errors);
    assert!(errors.iter().any(|e| e.contains("minimum")), "{errors:?}");
}

/// A stats file path of this test, removed (with its `.tmp`) on drop.
/// Boots the guest with `--stats` at `stats`, checks that `program` ran
/// without an integrity error, and returns the final document, validated.
fn run_validated(stats: &str, vmm_flags: &str, guest: &str, program: &str) -> Value {
    let r = boot_str(
        &format!("--stats {stats} --stats-interval 100 {vmm_flags}"),
        guest,
    );
    r.expect_status(0);
    let errors = results(&r.stdout, program, "errors");
    assert!(
        !errors.is_empty() && errors.iter().all(|&e| e == 0),
        "{}",
        r.stdout
    );
    assert!(
        !std::path::Path::new(&format!("{stats}.tmp")).exists(),
        "{stats}.tmp left behind: the write is not a rename"
    );
    let doc = read_stats(stats);
    assert_valid(&doc, &format!("vmm run {vmm_flags:?} -- {guest:?}"));
    doc
}

#[test]
fn a_budget_with_discard_faults_and_the_shared_table_on_a_disk_matches_the_schema() {
    let disk = Disk::new("stats-schema", 4, "1M");
    let stats = disk.path("stats.json");
    let flags = format!(
        "--mem 16M --vcpus 2 --disk {} --host-budget 4M",
        disk.image()
    );
    let doc = run_validated(&stats, &flags, "copies=1 cow 2", "cow");
    assert_eq!(get(&doc, "memory.budget_bytes"), 4 << 20, "{doc}");
    assert_eq!(get(&doc, "hypercalls.set_state_table"), 1, "{doc}");
    assert_eq!(get(&doc, "discard_faults.info_areas"), 2, "{doc}");
    for filled in ["reclaim.pages_discarded", "block.reads", "exits.io_out"] {
        assert!(get(&doc, filled) > 0, "{filled}: {doc}");
    }
}

#[test]
fn batched_hint_hypercalls_match_the_schema() {
    let disk = Disk::new("stats-schema-batched", 4, "1M");
    let stats = disk.path("stats.json");
    let flags = format!(
        "--mem 16M --vcpus 1 --disk {} --hints batched",
        disk.image()
    );
    let doc = run_validated(&stats, &flags, "copies=1 scan-mmap 1", "scan-mmap");
    assert_eq!(get(&doc, "hypercalls.set_state_table"), 0, "{doc}");
    for filled in ["hypercalls.hint_batch", "hypercalls.make_volatile"] {
        assert!(get(&doc, filled) > 0, "{filled}: {doc}");
    }
    assert!(doc["memory"]["budget_bytes"].is_null(), "{doc}");
}

#[test]
fn free_page_reporting_matches_the_schema() {
    let stats = StatsFile::new("stats-schema-fpr");
    let flags = "--mem 16M --vcpus 1 --free-page-reporting";
    let doc = run_validated(
        stats.path(),
        flags,
        "copies=1 churn-idle 1 4 2500",
        "churn-idle",
    );
    for filled in ["reclaim.reports", "reclaim.reported_pages"] {
        assert!(get(&doc, filled) > 0, "{filled}: {doc}");
    }
    assert_eq!(get(&doc, "discard_faults.info_areas"), 0, "{doc}");
}
