//! Shared by the test files that write pre-open reports: a report file as
//! the console wrote it, read strictly and checked against the published
//! schema (docs/schema/pre-open-report.schema.json).

/// The report file at `path` as JSON, after the strict parse and the schema.
pub fn checked(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let value = lockstep_evidence::strict_json::parse(&text).unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/schema/pre-open-report.schema.json")).unwrap();
    let errors: Vec<String> = jsonschema::validator_for(&schema)
        .unwrap()
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    value
}
