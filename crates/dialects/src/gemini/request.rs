//! Reading a Gemini `generateContent` / `streamGenerateContent` / `countTokens` body.
//!
//! Google's JSON mapping accepts each field in camelCase and in snake_case; both are read.

use relais_core::{
    ChatRequest, ContentPart, Error, ImageSource, Message, Reasoning, ResponseFormat, Role, Tool,
    ToolCall, ToolChoice,
};
use serde_json::{Map, Value};

use crate::parse_json;

/// Gemini request fields passed on whole to a Gemini upstream (which alone can honour them).
pub const GEMINI_ONLY: [&str; 2] = ["safetySettings", "cachedContent"];

fn bad(param: &str, msg: impl Into<String>) -> Error {
    Error::bad_request(msg).with_param(param)
}

fn unsupported(param: &str, msg: impl Into<String>) -> Error {
    Error::unsupported(msg).with_param(param)
}

/// `camelCase` to `snake_case`, for the second spelling Google accepts.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A field by its camelCase name or its snake_case one.
fn get<'v>(obj: &'v Map<String, Value>, camel: &str) -> Option<&'v Value> {
    obj.get(camel)
        .or_else(|| obj.get(&snake(camel)))
        .filter(|v| !v.is_null())
}

fn take(obj: &mut Map<String, Value>, camel: &str) -> Option<Value> {
    obj.remove(camel)
        .or_else(|| obj.remove(&snake(camel)))
        .filter(|v| !v.is_null())
}

/// Decode a `generateContent` body for route `model` (the path's model segment).
pub fn parse_generate(body: &[u8], model: &str, stream: bool) -> Result<ChatRequest, Error> {
    let Value::Object(mut body) = parse_json::<Value>(body)? else {
        return Err(bad("", "the request body must be a JSON object"));
    };
    let mut req = ChatRequest {
        model: model.to_owned(),
        stream,
        stream_include_usage: true,
        extra_family: Some("gemini"),
        ..ChatRequest::default()
    };
    if let Some(system) = take(&mut body, "systemInstruction") {
        let parts = content_parts(&system, "systemInstruction", &mut Calls::default())?;
        req.messages.push(Message {
            role: Role::System,
            content: parts,
            name: None,
        });
    }
    let contents = take(&mut body, "contents").unwrap_or(Value::Array(Vec::new()));
    let Value::Array(contents) = contents else {
        return Err(bad("contents", "'contents' must be an array"));
    };
    if contents.is_empty() {
        return Err(bad("contents", "'contents' must not be empty"));
    }
    let mut calls = Calls::default();
    for (i, c) in contents.iter().enumerate() {
        let path = format!("contents[{i}]");
        let role = match c.get("role").and_then(Value::as_str).unwrap_or("user") {
            "user" => Role::User,
            "model" => Role::Assistant,
            other => {
                return Err(bad(
                    &format!("{path}.role"),
                    format!("'{path}.role' must be user or model, not '{other}'"),
                ));
            }
        };
        let parts = content_parts(c, &path, &mut calls)?;
        // Function responses are tool messages of their own; the rest stays in the turn.
        let (results, rest): (Vec<_>, Vec<_>) = parts
            .into_iter()
            .partition(|p| matches!(p, ContentPart::ToolResult { .. }));
        for r in results {
            req.messages.push(Message {
                role: Role::Tool,
                content: vec![r],
                name: None,
            });
        }
        if !rest.is_empty() {
            req.messages.push(Message {
                role,
                content: rest,
                name: None,
            });
        }
    }
    if let Some(tools) = take(&mut body, "tools") {
        req.tools = parse_tools(&tools)?;
    }
    if let Some(config) = take(&mut body, "toolConfig") {
        req.tool_choice = tool_choice(&config, &req.tools)?;
    }
    if let Some(Value::Object(g)) = take(&mut body, "generationConfig") {
        generation_config(&g, &mut req)?;
    }
    for (key, value) in body {
        let camel = camel(&key);
        if GEMINI_ONLY.contains(&camel.as_str()) {
            req.extra.insert(camel, value);
        } else if !value.is_null() {
            return Err(bad(
                &key,
                format!(
                    "Invalid JSON payload received. Unknown name \"{key}\": Cannot find field."
                ),
            ));
        }
    }
    Ok(req)
}

/// `snake_case` to `camelCase`.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Function calls seen so far, so a `functionResponse` without an id answers the earliest
/// unanswered call of its name.
#[derive(Default)]
struct Calls {
    made: Vec<(String, String, bool)>,
}

impl Calls {
    fn call(&mut self, id: Option<&str>, name: &str) -> String {
        let id = id.map_or_else(|| format!("call_{}_{name}", self.made.len()), str::to_owned);
        self.made.push((id.clone(), name.to_owned(), false));
        id
    }

    fn answer(&mut self, id: Option<&str>, name: &str, path: &str) -> Result<String, Error> {
        let found = self.made.iter_mut().find(|(i, n, answered)| match id {
            Some(id) => i == id,
            None => n == name && !*answered,
        });
        match found {
            Some((i, _, answered)) => {
                *answered = true;
                Ok(i.clone())
            }
            None => Err(bad(
                path,
                format!("'{path}' answers no earlier functionCall of '{name}'"),
            )),
        }
    }
}

fn content_parts(
    content: &Value,
    path: &str,
    calls: &mut Calls,
) -> Result<Vec<ContentPart>, Error> {
    let parts = match content.get("parts") {
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(_) => return Err(bad(path, format!("'{path}.parts' must be an array"))),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let path = format!("{path}.parts[{j}]");
        let Value::Object(p) = p else {
            return Err(bad(&path, format!("'{path}' must be an object")));
        };
        // A signature rides on the part it signs: canonically, a signed reasoning part right
        // before it (as the Gemini provider decodes it).
        if let Some(sig) = get(p, "thoughtSignature").and_then(Value::as_str) {
            out.push(ContentPart::Reasoning {
                text: String::new(),
                signature: Some(sig.to_owned()),
            });
        }
        if let Some(text) = get(p, "text") {
            let text = text.as_str().unwrap_or_default().to_owned();
            if get(p, "thought").and_then(Value::as_bool) == Some(true) {
                out.push(ContentPart::Reasoning {
                    text,
                    signature: None,
                });
            } else {
                out.push(ContentPart::Text(text));
            }
        } else if let Some(d) = get(p, "inlineData").and_then(Value::as_object) {
            let mime = get(d, "mimeType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let data = get(d, "data").and_then(Value::as_str).unwrap_or_default();
            if mime.starts_with("image/") {
                out.push(ContentPart::Image {
                    source: ImageSource::Base64 {
                        media_type: mime.to_owned(),
                        data: data.to_owned(),
                    },
                    detail: None,
                });
            } else if mime == "application/pdf" {
                out.push(ContentPart::Document {
                    data: Some(format!("data:{mime};base64,{data}")),
                    file_id: None,
                    filename: None,
                });
            } else {
                return Err(unsupported(
                    &format!("{path}.inlineData"),
                    format!("inline data of type '{mime}' is not supported (images and PDF are)"),
                ));
            }
        } else if let Some(call) = get(p, "functionCall").and_then(Value::as_object) {
            let name = get(call, "name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let id = calls.call(get(call, "id").and_then(Value::as_str), name);
            let args = get(call, "args")
                .cloned()
                .unwrap_or(Value::Object(Map::new()));
            out.push(ContentPart::ToolCall(ToolCall {
                id,
                name: name.to_owned(),
                arguments: args.to_string(),
            }));
        } else if let Some(resp) = get(p, "functionResponse").and_then(Value::as_object) {
            let name = get(resp, "name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let call_id = calls.answer(get(resp, "id").and_then(Value::as_str), name, &path)?;
            let response = get(resp, "response").cloned().unwrap_or(Value::Null);
            // `{"output": x}` / `{"error": x}` (Google's documented keys) unwrap to x.
            let (value, is_error) = match &response {
                Value::Object(m) if m.len() == 1 && m.contains_key("output") => {
                    (m["output"].clone(), false)
                }
                Value::Object(m) if m.len() == 1 && m.contains_key("error") => {
                    (m["error"].clone(), true)
                }
                _ => (response, false),
            };
            let content = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.push(ContentPart::ToolResult {
                call_id,
                content,
                is_error,
            });
        } else if get(p, "thoughtSignature").is_some() {
            // A part that is only a signature.
        } else {
            let kind = p.keys().next().map_or("(empty)", String::as_str);
            return Err(unsupported(
                &path,
                format!(
                    "part '{kind}' is not supported (text, inlineData, functionCall and functionResponse are)"
                ),
            ));
        }
    }
    Ok(out)
}

/// Google's OpenAPI-style schema (`"type": "OBJECT"`) as JSON Schema (`"type": "object"`).
pub fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        ("properties", Value::Object(props)) => Value::Object(
                            props
                                .iter()
                                .map(|(n, s)| (n.clone(), json_schema(s)))
                                .collect(),
                        ),
                        _ => json_schema(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

fn parse_tools(tools: &Value) -> Result<Vec<Tool>, Error> {
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "'tools' must be an array"));
    };
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let Value::Object(t) = t else {
            return Err(bad(&format!("tools[{i}]"), "a tool must be an object"));
        };
        for (key, value) in t {
            if camel(key) != "functionDeclarations" {
                return Err(unsupported(
                    &format!("tools[{i}].{key}"),
                    format!(
                        "tool '{key}' is not supported: only functionDeclarations can be routed to any vendor"
                    ),
                ));
            }
            let Value::Array(decls) = value else {
                return Err(bad(
                    &format!("tools[{i}].{key}"),
                    "functionDeclarations must be an array",
                ));
            };
            for (j, d) in decls.iter().enumerate() {
                let path = format!("tools[{i}].functionDeclarations[{j}]");
                let Value::Object(d) = d else {
                    return Err(bad(&path, format!("'{path}' must be an object")));
                };
                let name = get(d, "name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() {
                    return Err(bad(
                        &format!("{path}.name"),
                        format!("'{path}.name' is missing"),
                    ));
                }
                let parameters = get(d, "parametersJsonSchema")
                    .cloned()
                    .or_else(|| get(d, "parameters").map(json_schema));
                out.push(Tool {
                    name: name.to_owned(),
                    description: get(d, "description")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    parameters,
                    strict: None,
                    cache: None,
                });
            }
        }
    }
    Ok(out)
}

fn tool_choice(config: &Value, tools: &[Tool]) -> Result<Option<ToolChoice>, Error> {
    let Some(f) = config
        .as_object()
        .and_then(|c| get(c, "functionCallingConfig"))
    else {
        return Ok(None);
    };
    let Some(f) = f.as_object() else {
        return Err(bad("toolConfig.functionCallingConfig", "must be an object"));
    };
    let allowed: Vec<&str> = get(f, "allowedFunctionNames")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mode = get(f, "mode").and_then(Value::as_str).unwrap_or("AUTO");
    Ok(Some(match mode {
        "AUTO" | "MODE_UNSPECIFIED" | "VALIDATED" if allowed.is_empty() => ToolChoice::Auto,
        "NONE" => ToolChoice::None,
        "ANY" if allowed.is_empty() => ToolChoice::Required,
        "ANY" | "AUTO" | "VALIDATED"
            if allowed.len() == 1 && tools.iter().any(|t| t.name == allowed[0]) =>
        {
            ToolChoice::Tool(allowed[0].to_owned())
        }
        _ if !allowed.is_empty() => {
            return Err(unsupported(
                "toolConfig.functionCallingConfig.allowedFunctionNames",
                "allowedFunctionNames with more than one name (or one not in tools) is not supported",
            ));
        }
        other => {
            return Err(bad(
                "toolConfig.functionCallingConfig.mode",
                format!("mode '{other}' must be AUTO, ANY, NONE or VALIDATED"),
            ));
        }
    }))
}

fn generation_config(g: &Map<String, Value>, req: &mut ChatRequest) -> Result<(), Error> {
    for (key, value) in g {
        if value.is_null() {
            continue;
        }
        let path = format!("generationConfig.{key}");
        let num = || {
            value
                .as_f64()
                .ok_or_else(|| bad(&path, format!("'{path}' must be a number")))
        };
        let int = || {
            value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(&path, format!("'{path}' must be a non-negative integer")))
        };
        match camel(key).as_str() {
            "temperature" => req.temperature = Some(num()?),
            "topP" => req.top_p = Some(num()?),
            "topK" => req.top_k = Some(int()?),
            "maxOutputTokens" => req.max_output_tokens = Some(int()?),
            "seed" => req.seed = value.as_i64(),
            "candidateCount" => {
                if int()? != 1 {
                    return Err(unsupported(
                        &path,
                        "candidateCount other than 1 is not supported",
                    ));
                }
            }
            "stopSequences" => {
                req.stop = value
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "responseMimeType" => match value.as_str() {
                Some("application/json") => {
                    if req.response_format.is_none() {
                        req.response_format = Some(ResponseFormat::JsonObject);
                    }
                }
                Some("text/plain") => {}
                other => {
                    return Err(unsupported(
                        &path,
                        format!(
                            "responseMimeType {other:?} is not supported (application/json and text/plain are)"
                        ),
                    ));
                }
            },
            "responseSchema" | "responseJsonSchema" => {
                let schema = if camel(key) == "responseSchema" {
                    json_schema(value)
                } else {
                    value.clone()
                };
                req.response_format = Some(ResponseFormat::JsonSchema {
                    name: "response".to_owned(),
                    schema: Some(schema),
                    strict: None,
                    description: None,
                });
            }
            "thinkingConfig" => {
                let t = value
                    .as_object()
                    .ok_or_else(|| bad(&path, "must be an object"))?;
                let budget = get(t, "thinkingBudget").and_then(Value::as_i64);
                let level = get(t, "thinkingLevel").and_then(Value::as_str);
                req.reasoning = match (budget, level) {
                    (Some(b), _) if b > 0 => Some(Reasoning {
                        effort: None,
                        budget_tokens: u32::try_from(b).ok(),
                    }),
                    (Some(0), _) => Some(Reasoning {
                        effort: Some("none".to_owned()),
                        budget_tokens: None,
                    }),
                    (_, Some(level)) => Some(Reasoning {
                        effort: Some(level.to_ascii_lowercase()),
                        budget_tokens: None,
                    }),
                    _ => None,
                };
            }
            "presencePenalty"
            | "frequencyPenalty"
            | "responseLogprobs"
            | "logprobs"
            | "responseModalities"
            | "speechConfig"
            | "mediaResolution"
            | "audioTimestamp"
            | "enableEnhancedCivicAnswers"
            | "imageConfig" => {
                // Accepted only at their neutral values: anything else cannot be carried.
                let neutral = matches!(value, Value::Bool(false))
                    || value.as_f64() == Some(0.0)
                    || *value == serde_json::json!(["TEXT"]);
                if !neutral {
                    return Err(unsupported(&path, format!("'{path}' is not supported")));
                }
            }
            _ => {
                return Err(bad(
                    &path,
                    format!(
                        "Invalid JSON payload received. Unknown name \"{key}\" at 'generation_config': Cannot find field."
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The text of a `countTokens` body (its `contents`, or its `generateContentRequest`) as a
/// request whose input can be estimated.
pub fn parse_count_tokens(body: &[u8], model: &str) -> Result<ChatRequest, Error> {
    let Value::Object(mut body) = parse_json::<Value>(body)? else {
        return Err(bad("", "the request body must be a JSON object"));
    };
    if let Some(inner) = take(&mut body, "generateContentRequest") {
        return parse_generate(inner.to_string().as_bytes(), model, false);
    }
    let mut only = Map::new();
    if let Some(c) = take(&mut body, "contents") {
        only.insert("contents".into(), c);
    }
    parse_generate(Value::Object(only).to_string().as_bytes(), model, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, Error> {
        parse_generate(v.to_string().as_bytes(), "route", false)
    }

    #[test]
    fn a_tool_round_trip_in_either_spelling() {
        let r = parse(json!({
            "system_instruction": {"parts": [{"text": "sys"}]},
            "contents": [
                {"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get", "args": {"city": "x"}}, "thoughtSignature": "sig"}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get", "response": {"output": "sunny"}}}]}
            ],
            "tools": [{"functionDeclarations": [{"name": "get", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get"]}},
            "generationConfig": {"temperature": 0.2, "max_output_tokens": 30, "thinkingConfig": {"thinkingBudget": 100}}
        }))
        .unwrap();
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[0].role, Role::System);
        let ContentPart::ToolCall(call) = &r.messages[2].content[1] else {
            panic!("{:?}", r.messages[2]);
        };
        assert!(
            matches!(&r.messages[2].content[0], ContentPart::Reasoning { signature: Some(s), .. } if s == "sig")
        );
        assert_eq!(call.arguments, r#"{"city":"x"}"#);
        assert!(
            matches!(&r.messages[3].content[0], ContentPart::ToolResult { call_id, content, .. } if *call_id == call.id && content == "sunny")
        );
        assert_eq!(
            r.tools[0].parameters.as_ref().unwrap()["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(r.tool_choice, Some(ToolChoice::Tool("get".into())));
        assert_eq!(r.max_output_tokens, Some(30));
        assert_eq!(r.reasoning.unwrap().budget_tokens, Some(100));
    }

    #[test]
    fn what_cannot_be_carried_is_refused_by_name() {
        for (body, param) in [
            (
                json!({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"googleSearch": {}}]}),
                "tools[0].googleSearch",
            ),
            (
                json!({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 2}}),
                "generationConfig.candidateCount",
            ),
            (
                json!({"contents": [{"parts": [{"text": "x"}]}], "frobnicate": 1}),
                "frobnicate",
            ),
            (
                json!({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
                "contents[0].parts[0]",
            ),
            (
                json!({"contents": [{"parts": [{"inlineData": {"mimeType": "audio/wav", "data": "AA=="}}]}]}),
                "contents[0].parts[0].inlineData",
            ),
            (json!({"contents": []}), "contents"),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let r = parse(json!({"contents": [{"parts": [{"text": "x"}]}], "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]})).unwrap();
        assert!(r.extra.contains_key("safetySettings"));
    }
}
