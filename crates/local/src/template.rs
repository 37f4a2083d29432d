//! Chat prompts rendered with the model's own Jinja template (from the GGUF metadata), so the
//! model sees exactly the format it was trained with. llama.cpp's built-in template matcher is
//! not used: it drops template details such as SmolLM2's default system prompt.

use minijinja::{Environment, Error as JinjaError, ErrorKind as JinjaKind, context};
use relais_core::{ChatRequest, ContentPart, Error, Role};
use serde::Serialize;

#[derive(Serialize)]
struct TemplateMessage {
    role: &'static str,
    content: String,
}

pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(JinjaKind::InvalidOperation, msg))
}

impl ChatTemplate {
    pub(crate) fn new(source: String, bos: String, eos: String) -> Result<Self, String> {
        let mut env = Environment::new();
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source)
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(Self { env, bos, eos })
    }

    /// Render the prompt for `req`, ending with the assistant's turn opened.
    pub(crate) fn render(&self, req: &ChatRequest) -> Result<String, Error> {
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.iter().enumerate() {
            let mut content = String::new();
            for part in &m.content {
                match part {
                    ContentPart::Text(t) => content.push_str(t),
                    ContentPart::ToolResult { content: c, .. } => content.push_str(c),
                    ContentPart::Reasoning { .. } | ContentPart::CacheBreakpoint(_) => {}
                    ContentPart::ToolCall(_) => {
                        return Err(Error::unsupported(format!(
                            "messages[{i}]: the local model does not support tool calls"
                        ))
                        .with_param(format!("messages[{i}]")));
                    }
                    ContentPart::Image { .. } | ContentPart::Document { .. } => {
                        return Err(Error::unsupported(format!(
                            "messages[{i}]: the local model accepts text only"
                        ))
                        .with_param(format!("messages[{i}].content")));
                    }
                    ContentPart::Opaque { .. } => {
                        return Err(Error::unsupported(format!(
                            "messages[{i}]: a content part of this type cannot be sent to the local model"
                        ))
                        .with_param(format!("messages[{i}].content")));
                    }
                }
            }
            let role = match m.role {
                Role::System | Role::Developer => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            messages.push(TemplateMessage { role, content });
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::internal(format!("chat template: {e}")))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| {
            Error::bad_request(format!(
                "the model's chat template rejected the conversation: {e}"
            ))
        })
    }
}

/// Gemma's turn format, for Gemma GGUF files that ship without a template (`chat_template = "gemma"`).
pub(crate) const GEMMA: &str = "{{ bos_token }}{% set sys = namespace(text='') %}{% for m in messages %}{% if m.role == 'system' %}{% set sys.text = sys.text + m.content + '\\n\\n' %}{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n{% if m.role != 'assistant' and sys.text %}{{ sys.text }}{% set sys.text = '' %}{% endif %}{{ m.content | trim }}<end_of_turn>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// ChatML, for files without a template (`chat_template = "chatml"`).
pub(crate) const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::Message;

    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(SMOL.into(), String::new(), String::new()).unwrap();
        let req = ChatRequest {
            messages: vec![Message::text(Role::User, "Hi")],
            ..ChatRequest::default()
        };
        assert_eq!(
            t.render(&req).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn images_are_refused_clearly() {
        let t = ChatTemplate::new(CHATML.into(), String::new(), String::new()).unwrap();
        let mut m = Message::text(Role::User, "look");
        m.content.push(ContentPart::Image {
            source: relais_core::ImageSource::Url("http://x".into()),
            detail: None,
        });
        let req = ChatRequest {
            messages: vec![m],
            ..ChatRequest::default()
        };
        let e = t.render(&req).unwrap_err();
        assert_eq!(e.kind, relais_core::ErrorKind::Unsupported);
    }
}
