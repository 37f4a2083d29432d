//! What the mock answers: deterministic functions of the request, so tests can predict them.

use serde_json::{Map, Value, json};

/// The mock's answer to one chat request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Text { words: Vec<String>, truncated: bool },
    Tools(Vec<(String, String, String)>),
}

fn last_message(req: &Value) -> Option<&Value> {
    req.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
}

pub(crate) fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A value satisfying a JSON schema, well enough for tests.
fn example(schema: Option<&Value>) -> Value {
    let Some(schema) = schema else {
        return json!({});
    };
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => schema
            .get("enum")
            .and_then(|e| e.get(0))
            .cloned()
            .unwrap_or_else(|| json!("mock")),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([example(schema.get("items"))]),
        _ => {
            let mut obj = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    obj.insert(k.clone(), example(Some(v)));
                }
            }
            Value::Object(obj)
        }
    }
}

/// The marker a test puts in its prompt to make the mock a scripted coding agent:
/// `relais-agent-write:<absolute path>`.
pub const AGENT_MARKER: &str = "relais-agent-write:";

/// What the scripted agent writes into the file.
pub const AGENT_CONTENT: &str = "written through relais";

/// The file a scripted agent must write: named by the marker in any user message.
fn agent_target(req: &Value) -> Option<String> {
    req.get("messages")?
        .as_array()?
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .find_map(|m| {
            let text = text_of(m.get("content"));
            let at = text.find(AGENT_MARKER)? + AGENT_MARKER.len();
            let path: String = text[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '<' | '`'))
                .collect();
            (!path.is_empty()).then_some(path)
        })
}

/// How well a tool's name says it writes a file: a file writer first, then a patch tool,
/// then a shell; `None` for anything else.
fn writer_rank(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "write_file" | "write" | "create_file" | "writefile" => Some(0),
        "apply_patch" => Some(1),
        "shell" | "exec_command" | "run_shell_command" | "bash" | "shell_command"
        | "local_shell" => Some(2),
        _ => None,
    }
}

/// The arguments that make `tool` write `content` to `path`, shaped from its JSON schema: a
/// path property gets the path, a content property the content, a command property a shell
/// command (a string, or `bash -lc` as an array), a patch tool's `input` a patch adding the
/// file; other required properties an example value.
fn agent_arguments(tool: &Value, path: &str) -> String {
    let schema = tool.pointer("/function/parameters");
    let name = tool
        .pointer("/function/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or(path);
    let patch = format!("*** Begin Patch\n*** Add File: {file}\n+{AGENT_CONTENT}\n*** End Patch\n");
    let command = format!("printf '%s' '{AGENT_CONTENT}' > '{path}'");
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut args = Map::new();
    let props = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    for (key, prop) in props.into_iter().flatten() {
        let k = key.to_ascii_lowercase();
        let value = if k == "input" && name.eq_ignore_ascii_case("apply_patch") {
            json!(patch)
        } else if k.contains("path") || k == "file" || k == "filename" {
            json!(path)
        } else if matches!(
            k.as_str(),
            "content" | "contents" | "text" | "file_text" | "data"
        ) {
            json!(AGENT_CONTENT)
        } else if matches!(k.as_str(), "command" | "cmd" | "script") {
            if prop.get("type").and_then(Value::as_str) == Some("array") {
                json!(["bash", "-lc", command])
            } else {
                json!(command)
            }
        } else if required.contains(&key.as_str()) {
            example(Some(prop))
        } else {
            continue;
        };
        args.insert(key.clone(), value);
    }
    Value::Object(args).to_string()
}

/// The scripted coding agent: tools offered and no tool result yet, it calls the tool that
/// writes the file; once a result is there, it says it is done.
fn agent_reply(req: &Value, path: &str) -> Option<Reply> {
    let messages = req.get("messages").and_then(Value::as_array)?;
    if messages
        .iter()
        .any(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
    {
        let words = format!("Done: wrote {path}.");
        return Some(Reply::Text {
            words: words.split_inclusive(' ').map(str::to_owned).collect(),
            truncated: false,
        });
    }
    let tools = req.get("tools").and_then(Value::as_array)?;
    let tool = tools
        .iter()
        .filter_map(|t| {
            let name = t.pointer("/function/name").and_then(Value::as_str)?;
            Some((writer_rank(name)?, t))
        })
        .min_by_key(|(rank, _)| *rank)?
        .1;
    let name = tool.pointer("/function/name").and_then(Value::as_str)?;
    Some(Reply::Tools(vec![(
        "call_agent_0".to_owned(),
        name.to_owned(),
        agent_arguments(tool, path),
    )]))
}

/// Decide the answer. Rules, in order:
/// - a prompt with [`AGENT_MARKER`]: the scripted coding agent (see `agent_reply`);
/// - JSON mode: an object (`{"answer": ...}` or an instance of the requested schema);
/// - tools offered and not refused, and the last message is not a tool result: call the named
///   tool, or the first two tools when parallel calls are allowed, or the first one;
/// - otherwise "Hello from mock! You said: <last user text>" (or a tool-result echo),
///   cut to `max_tokens` words.
pub fn reply_for(req: &Value) -> Reply {
    if let Some(reply) = agent_target(req).and_then(|path| agent_reply(req, &path)) {
        return reply;
    }
    let last = last_message(req);
    let last_role = last
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let last_text = text_of(last.and_then(|m| m.get("content")));
    let limit = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let format = req.pointer("/response_format/type").and_then(Value::as_str);
    let tools = req
        .get("tools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let choice = req.get("tool_choice");
    let text = if format == Some("json_object") {
        json!({"answer": last_text}).to_string()
    } else if format == Some("json_schema") {
        example(req.pointer("/response_format/json_schema/schema")).to_string()
    } else if !tools.is_empty() && choice != Some(&json!("none")) && last_role != "tool" {
        let named = choice
            .and_then(|c| c.pointer("/function/name"))
            .and_then(Value::as_str);
        let parallel = req.get("parallel_tool_calls").and_then(Value::as_bool) != Some(false);
        let chosen: Vec<&Value> = match named {
            Some(n) => tools
                .iter()
                .filter(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(n))
                .collect(),
            None if parallel && tools.len() >= 2 => tools.iter().take(2).collect(),
            None => tools.iter().take(1).collect(),
        };
        return Reply::Tools(
            chosen
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let name = t
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("tool");
                    let args = example(t.pointer("/function/parameters")).to_string();
                    (format!("call_mock_{i}"), name.to_owned(), args)
                })
                .collect(),
        );
    } else if last_role == "tool" {
        format!("Tool result received: {last_text}")
    } else {
        format!("Hello from mock! You said: {last_text}")
    };
    let mut words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    let mut truncated = false;
    if let Some(limit) = limit {
        if words.len() > limit {
            words.truncate(limit);
            truncated = true;
        }
    }
    Reply::Text { words, truncated }
}

/// Prompt tokens: one per whitespace-separated word of every message, plus one per message.
pub fn prompt_tokens(req: &Value) -> u64 {
    req.get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| text_of(m.get("content")).split_whitespace().count() as u64 + 1)
                .sum()
        })
        .unwrap_or(0)
}

/// The completion tokens the mock reports for `reply`.
pub fn completion_tokens(reply: &Reply) -> u64 {
    match reply {
        Reply::Text { words, .. } => words.len() as u64,
        Reply::Tools(calls) => calls.iter().map(|(_, _, a)| a.len() as u64 / 4 + 1).sum(),
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A whole `chat.completion` body.
pub fn completion_json(reply: &Reply, model: &str, prompt: u64) -> Value {
    let (message, finish) = match reply {
        Reply::Text { words, truncated } => (
            json!({"role": "assistant", "content": words.concat(), "refusal": null}),
            if *truncated { "length" } else { "stop" },
        ),
        Reply::Tools(calls) => (
            json!({"role": "assistant", "content": null, "tool_calls": calls.iter().map(|(id, name, args)| json!({
                "id": id, "type": "function", "function": {"name": name, "arguments": args}
            })).collect::<Vec<_>>()}),
            "tool_calls",
        ),
    };
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
        "usage": usage(prompt, completion_tokens(reply)),
    })
}

/// SSE frames of a streamed answer, `[DONE]` included. Azure's stream starts with an empty,
/// id-less chunk carrying only prompt filter results; `azure` reproduces it.
pub fn stream_frames(
    reply: &Reply,
    model: &str,
    prompt: u64,
    include_usage: bool,
    azure: bool,
) -> Vec<String> {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        format!("data: {c}\n\n")
    };
    let mut frames = Vec::new();
    if azure {
        frames.push(format!(
            "data: {}\n\n",
            json!({"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]})
        ));
    }
    frames.push(chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        None,
    ));
    let finish = match reply {
        Reply::Text { words, truncated } => {
            for w in words {
                frames.push(chunk(
                    json!([{"index": 0, "delta": {"content": w}, "finish_reason": null}]),
                    None,
                ));
            }
            if *truncated { "length" } else { "stop" }
        }
        Reply::Tools(calls) => {
            for (i, (id, name, args)) in calls.iter().enumerate() {
                frames.push(chunk(
                    json!([{"index": 0, "delta": {"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}, "finish_reason": null}]),
                    None,
                ));
                let mid = args
                    .char_indices()
                    .nth(args.chars().count() / 2)
                    .map_or(0, |(b, _)| b);
                for piece in [&args[..mid], &args[mid..]] {
                    frames.push(chunk(
                        json!([{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, "finish_reason": null}]),
                        None,
                    ));
                }
            }
            "tool_calls"
        }
    };
    frames.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
        None,
    ));
    if include_usage {
        frames.push(chunk(
            json!([]),
            Some(usage(prompt, completion_tokens(reply))),
        ));
    }
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

/// A lexical embedding for tests of similarity: the input lower-cased, punctuation as spaces,
/// its character trigrams counted into `dims` buckets (FNV-1a). Texts that share most of their
/// words are close; it knows nothing of meaning, which the semantic cache's test measures.
pub fn trigram_embedding(text: &str, dims: usize) -> Vec<f32> {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect();
    let padded: Vec<char> = format!(
        " {} ",
        clean.split_whitespace().collect::<Vec<_>>().join(" ")
    )
    .chars()
    .collect();
    let dims = dims.max(1);
    let mut v = vec![0f32; dims];
    for w in padded.windows(3) {
        let mut h: u32 = 0x811c_9dc5;
        for c in w {
            h ^= *c as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        v[h as usize % dims] += 1.0;
    }
    v
}

/// Deterministic embeddings: `dimensions` (default 8) floats derived from each input's bytes;
/// a model whose name starts with `trigram` gets [`trigram_embedding`]s (512 dimensions).
pub fn embeddings_json(req: &Value) -> Value {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let dims = req.get("dimensions").and_then(Value::as_u64).unwrap_or(8) as usize;
    let trigram = req
        .get("model")
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("trigram"));
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if trigram {
                let v = trigram_embedding(s, 512);
                return json!({"object": "embedding", "index": i, "embedding": v});
            }
            let v: Vec<f32> = (0..dims)
                .map(|d| {
                    let h = s.bytes().fold(d as u32 + 1, |acc, b| {
                        acc.wrapping_mul(31).wrapping_add(u32::from(b))
                    });
                    (h % 1000) as f32 / 1000.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens: u64 = inputs
        .iter()
        .map(|s| s.split_whitespace().count() as u64)
        .sum();
    json!({"object": "list", "data": data, "model": req.get("model").cloned().unwrap_or(Value::Null), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, params: Value) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": params}})
    }

    #[test]
    fn the_scripted_agent_writes_with_the_best_tool_then_finishes() {
        let write = tool(
            "Write",
            json!({"type": "object", "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}}, "required": ["file_path", "content"]}),
        );
        let shell = tool(
            "shell",
            json!({"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}, "timeout_ms": {"type": "number"}}, "required": ["command"]}),
        );
        let patch = tool(
            "apply_patch",
            json!({"type": "object", "properties": {"input": {"type": "string"}}}),
        );
        let ask = |tools: Vec<Value>| json!({"messages": [{"role": "user", "content": "please relais-agent-write:/tmp/x/out.txt now"}], "tools": tools});
        let Reply::Tools(calls) = reply_for(&ask(vec![shell.clone(), write])) else {
            panic!("no call");
        };
        assert_eq!(calls[0].1, "Write");
        let args: Value = serde_json::from_str(&calls[0].2).unwrap();
        assert_eq!(
            args,
            json!({"file_path": "/tmp/x/out.txt", "content": AGENT_CONTENT})
        );
        let Reply::Tools(calls) = reply_for(&ask(vec![shell.clone(), patch])) else {
            panic!("no call");
        };
        assert!(calls[0].2.contains("*** Add File: out.txt"));
        let Reply::Tools(calls) = reply_for(&ask(vec![shell])) else {
            panic!("no call");
        };
        let args: Value = serde_json::from_str(&calls[0].2).unwrap();
        assert_eq!(args["command"][0], "bash");
        assert!(args.get("timeout_ms").is_none());
        let mut done = ask(vec![]);
        done["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "tool", "content": "ok"}));
        let Reply::Text { words, .. } = reply_for(&done) else {
            panic!("no text");
        };
        assert_eq!(words.concat(), "Done: wrote /tmp/x/out.txt.");
    }
}
