//! The model's chat template: messages in, prompt text out.
//!
//! GGUF files carry the Hugging Face Jinja template in `tokenizer.chat_template`. It is
//! rendered with minijinja the way `transformers` renders it: `trim_blocks` and
//! `lstrip_blocks` on, `messages` and `add_generation_prompt` in the context, along with
//! `bos_token`, `eos_token` and a `raise_exception` function, and Python's string methods
//! (`.strip()`, `.startswith()`, …) through minijinja-contrib's pycompat. Without a
//! template the model gets ChatML, which is what SmolLM2 and many small models use.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

use crate::types::{Message, Role};

/// ChatML, for models that carry no template.
pub(crate) const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const NAME: &str = "chat";

/// A compiled chat template.
#[derive(Debug)]
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A message as templates expect it.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [serde_json::Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl ChatTemplate {
    /// Compiles `source` (ChatML when `None`).
    pub(crate) fn new(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| format!("template syntax: {e}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.unwrap_or(CHATML).to_owned())
            .map_err(|e| format!("the chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub(crate) fn render(&self, messages: &[Message]) -> Result<String, String> {
        let messages: Vec<TemplateMessage<'_>> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: role_name(m.role),
                content: &m.content,
                tool_calls: &m.tool_calls,
                tool_call_id: m.tool_call_id.as_deref(),
            })
            .collect();
        let template = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => Value::from(Serde(&messages)),
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("rejected").to_owned(),
                _ => format!("{e:#}"),
            })
    }
}

/// Templates call `raise_exception("…")` to reject a conversation they cannot format.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_adds_its_system_prompt() {
        let template = ChatTemplate::new(Some(SMOLLM2), "<|im_start|>", "<|im_end|>").unwrap();
        let prompt = template.render(&[Message::new(Role::User, "Hi")]).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let prompt = template
            .render(&[Message::new(Role::System, "Be brief."), Message::new(Role::User, "Hi")])
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn chatml_fallback() {
        let template = ChatTemplate::new(None, "", "").unwrap();
        let prompt = template
            .render(&[Message::new(Role::User, "a"), Message::new(Role::Assistant, "b")])
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_and_python_methods_work() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}\
                      {% for m in messages %}{{ bos_token }}[{{ m['content'].strip() | upper }}]{% if m['content'].startswith(' x') %}!{% endif %}{% endfor %}";
        let template = ChatTemplate::new(Some(source), "<s>", "</s>").unwrap();
        let err = template.render(&[Message::new(Role::System, "s")]).unwrap_err();
        assert_eq!(err, "Conversation must start with a user message");
        assert_eq!(template.render(&[Message::new(Role::User, " x ")]).unwrap(), "<s>[X]!");
    }

    #[test]
    fn broken_template_is_an_error_at_load() {
        assert!(ChatTemplate::new(Some("{% for %}"), "", "").is_err());
    }
}
