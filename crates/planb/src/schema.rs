//! Enough of JSON Schema to check tool arguments and structured output: `type` (one or a list),
//! `properties`, `required`, `additionalProperties`, `items`, `enum`, `const`, `anyOf`, `oneOf`,
//! `allOf`, numeric and length bounds. Keywords it does not know (`$ref`, `pattern`, `format`)
//! are not checked: a backup is never failed on a rule this checker cannot read.

use serde_json::Value;

/// Check `value` against `schema`; the error names the first place that does not conform.
pub fn validate(value: &Value, schema: &Value) -> Result<(), String> {
    check(value, schema, "$")
}

fn type_matches(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64()
                || value.is_u64()
                || value
                    .as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        _ => true,
    }
}

fn check(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        // `true` accepts anything, `false` nothing; any other non-object is not a schema.
        return match schema {
            Value::Bool(false) => Err(format!("{at}: nothing is allowed here")),
            _ => Ok(()),
        };
    };
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(value, t) => {
            return Err(format!("{at}: expected {t}"));
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(value, t)) =>
        {
            return Err(format!(
                "{at}: expected one of {}",
                Value::Array(ts.clone())
            ));
        }
        _ => {}
    }
    if let Some(Value::Array(allowed)) = s.get("enum") {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of the allowed values"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != value {
            return Err(format!("{at}: must be {c}"));
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check(value, sub, at)?;
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(any)) = s.get(key) {
            let passing = any
                .iter()
                .filter(|sub| check(value, sub, at).is_ok())
                .count();
            let ok = if key == "oneOf" {
                passing == 1
            } else {
                passing > 0
            };
            if !ok {
                return Err(format!("{at}: does not match {key}"));
            }
        }
    }
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(required)) = s.get("required") {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        return Err(format!("{at}: missing required property '{r}'"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                let path = format!("{at}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => check(v, sub, &path)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{at}: property '{k}' is not allowed"));
                        }
                        Some(sub @ Value::Object(_)) => check(v, sub, &path)?,
                        _ => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = s.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(v, sub, &format!("{at}[{i}]"))?;
                }
            }
            bound(s, "minItems", "maxItems", items.len() as f64, at, "items")?;
        }
        Value::String(text) => {
            bound(
                s,
                "minLength",
                "maxLength",
                text.chars().count() as f64,
                at,
                "characters",
            )?;
        }
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                bound(s, "minimum", "maximum", x, at, "")?;
                if s.get("exclusiveMinimum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| x <= m)
                    || s.get("exclusiveMaximum")
                        .and_then(Value::as_f64)
                        .is_some_and(|m| x >= m)
                {
                    return Err(format!("{at}: {x} is out of range"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn bound(
    s: &serde_json::Map<String, Value>,
    min: &str,
    max: &str,
    x: f64,
    at: &str,
    unit: &str,
) -> Result<(), String> {
    if let Some(m) = s.get(min).and_then(Value::as_f64) {
        if x < m {
            return Err(format!("{at}: {x} {unit} is below {min} {m}"));
        }
    }
    if let Some(m) = s.get(max).and_then(Value::as_f64) {
        if x > m {
            return Err(format!("{at}: {x} {unit} is above {max} {m}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::validate;
    use serde_json::json;

    #[test]
    fn checks_what_tool_schemas_use() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "unit": {"enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["city"],
            "additionalProperties": false
        });
        assert!(validate(&json!({"city": "Paris", "unit": "c", "days": 3}), &schema).is_ok());
        assert!(validate(&json!({"city": "Paris", "days": 3.0}), &schema).is_ok());
        for (bad, why) in [
            (json!({"unit": "c"}), "missing required property 'city'"),
            (json!({"city": 5}), "$.city: expected string"),
            (json!({"city": "P", "unit": "k"}), "not one of the allowed"),
            (json!({"city": "P", "days": 30}), "above maximum"),
            (json!({"city": "P", "days": 1.5}), "expected integer"),
            (
                json!({"city": "P", "tags": ["a", 1]}),
                "$.tags[1]: expected string",
            ),
            (json!({"city": "P", "x": 1}), "property 'x' is not allowed"),
            (json!({"city": ""}), "below minLength"),
            (json!(["city"]), "expected object"),
        ] {
            let err = validate(&bad, &schema).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn combinators_and_unknown_keywords() {
        let one = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(validate(&json!("a"), &one).is_ok());
        assert!(validate(&json!(true), &one).is_err());
        let nullable = json!({"type": ["string", "null"]});
        assert!(validate(&json!(null), &nullable).is_ok());
        assert!(validate(&json!(1), &nullable).is_err());
        // A $ref or a pattern is not checked rather than failed.
        assert!(validate(&json!("x"), &json!({"$ref": "#/defs/a", "pattern": "^y$"})).is_ok());
    }
}
