//! Reading what a run reported: the guest programs' `result:` lines on the
//! console and the stats JSON document the VMM wrote. These helpers parse
//! and fail loudly with the text they could not read; they never judge a
//! figure (the tests do).

use serde_json::Value;

/// The value of `key=` in every `result:` line of `program`.
pub fn results(stdout: &str, program: &str, key: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("result:") && l.contains(&format!("program={program} ")))
        .map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {l}"))
        })
        .collect()
}

/// The stats JSON the VMM wrote to `path`.
pub fn read_stats(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// The number at dot-separated `path` in a JSON document.
pub fn json_u64(doc: &Value, path: &str) -> u64 {
    let mut v = doc;
    for k in path.split('.') {
        v = &v[k];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {doc}"))
}

/// Every garbage hypercall the VMM answered with an error: the sum of the
/// stats document's `hypercalls.errors` counts.
pub fn hypercall_errors(doc: &Value) -> u64 {
    doc["hypercalls"]["errors"]
        .as_object()
        .expect("hypercalls.errors object")
        .values()
        .filter_map(Value::as_u64)
        .sum()
}

/// The JSON document at `path` (any file a run wrote).
pub fn read_json(path: &std::path::Path) -> Value {
    read_stats(path.to_str().expect("a UTF-8 path"))
}
