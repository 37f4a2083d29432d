use relais_core::Error;
use serde::de::DeserializeOwned;

/// Parse a request body, with an error a client can act on: the position of a syntax error, or
/// the path of the field with the wrong type. The happy path runs plain `serde_json`; only a
/// failure pays for a second, path-tracking pass.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    match serde_json::from_slice::<T>(body) {
        Ok(v) => Ok(v),
        Err(err) => Err(describe::<T>(body, err)),
    }
}

fn describe<T: DeserializeOwned>(body: &[u8], err: serde_json::Error) -> Error {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            let what = err.to_string();
            let what = what.split(" at line ").next().unwrap_or(&what).to_owned();
            Error::bad_request(format!(
                "invalid JSON body at line {} column {}: {what}",
                err.line(),
                err.column()
            ))
            .with_code("invalid_json")
        }
        Category::Data => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let path = match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(e) => e.path().to_string(),
                Ok(_) => String::new(),
            };
            let what = err.to_string();
            let what = what.split(" at line ").next().unwrap_or(&what).to_owned();
            let param = if path.is_empty() || path == "." {
                None
            } else {
                Some(path)
            };
            let msg = match &param {
                Some(p) => format!(
                    "invalid value for '{p}': {what} (line {} column {})",
                    err.line(),
                    err.column()
                ),
                None => format!(
                    "invalid request body: {what} (line {} column {})",
                    err.line(),
                    err.column()
                ),
            };
            let mut e = Error::bad_request(msg).with_code("invalid_request");
            e.param = param;
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[expect(dead_code, reason = "only parsed")]
        a: Vec<u32>,
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse_json::<T>(b"{\"a\": [1,\n 2,]}").unwrap_err();
        assert!(e.message.contains("line 2 column"), "{}", e.message);
        assert_eq!(e.code.as_deref(), Some("invalid_json"));
    }

    #[test]
    fn type_error_has_path() {
        let e = parse_json::<T>(br#"{"a": [1, "x"]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("a[1]"), "{}", e.message);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert!(e.message.contains("recursion limit"), "{}", e.message);
    }
}
