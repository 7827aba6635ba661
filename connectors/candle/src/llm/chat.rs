//! Chat prompts: the model's own Jinja template (`tokenizer.chat_template`),
//! or a plain transcript for base models that have none.

use magpie_core::{ChatMessage, Role};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use super::LlmError;

/// Renders chats for one model.
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    bos: String,
    eos: String,
}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// A renderer for `template` (none: plain transcript).
    pub fn new(template: Option<&str>, bos: &str, eos: &str) -> Result<Self, LlmError> {
        let env = match template {
            Some(src) if !src.trim().is_empty() => {
                let mut env = Environment::new();
                // a template from a downloaded file must not run forever
                env.set_fuel(Some(2_000_000));
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function("raise_exception", raise_exception);
                env.add_template_owned("chat", src.to_string())
                    .map_err(|e| {
                        LlmError::Template(format!("the model's chat template does not parse: {e}"))
                    })?;
                Some(env)
            }
            _ => None,
        };
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Whether the model brought a template.
    pub fn has_template(&self) -> bool {
        self.env.is_some()
    }

    /// The prompt text for `messages`, ending where the assistant's reply starts.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        self.render_with(messages, true)
    }

    /// The text for `messages`, with or without the cue for the assistant's reply.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, LlmError> {
        if messages.is_empty() {
            return Err(LlmError::InvalidInput("the chat has no messages".into()));
        }
        match &self.env {
            Some(env) => {
                let msgs: Vec<_> = messages
                    .iter()
                    .map(|m| context! { role => m.role.as_str(), content => m.content.clone() })
                    .collect();
                let tmpl = env
                    .get_template("chat")
                    .map_err(|e| LlmError::Template(e.to_string()))?;
                tmpl.render(context! {
                    messages => msgs,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.bos.clone(),
                    eos_token => self.eos.clone(),
                })
                .map_err(|e| LlmError::Template(format!("the model's chat template failed: {e}")))
            }
            None => {
                let mut t = plain_transcript(messages);
                if !add_generation_prompt {
                    t.truncate(t.len() - "Assistant:".len());
                }
                Ok(t)
            }
        }
    }
}

/// The chat format of the GLM family for files that carry no template, as
/// llama.cpp writes it: GLM-4's (`[gMASK]<sop>`) when the vocabulary has
/// `<sop>`, ChatGLM3's (`[gMASK]sop`) otherwise. Tool results go in as
/// `observation`, GLM's role for them.
pub fn glm_template(has_sop_tag: bool) -> String {
    let role = "{{ 'observation' if m['role'] == 'tool' else m['role'] }}";
    if has_sop_tag {
        format!("[gMASK]<sop>{{% for m in messages %}}<|{role}|>\n{{{{ m['content'] }}}}{{% endfor %}}{{% if add_generation_prompt %}}<|assistant|>\n{{% endif %}}")
    } else {
        format!("[gMASK]sop{{% for m in messages %}}<|{role}|>\n {{{{ m['content'] }}}}{{% endfor %}}{{% if add_generation_prompt %}}<|assistant|>{{% endif %}}")
    }
}

/// "System/User/Assistant:" transcript a base model continues.
pub fn plain_transcript(messages: &[ChatMessage]) -> String {
    let mut s = String::new();
    for m in messages {
        let who = match m.role {
            Role::System => {
                s.push_str(m.content.trim());
                s.push_str("\n\n");
                continue;
            }
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::Tool => "Tool result",
        };
        s.push_str(&format!("{who}: {}\n", m.content.trim()));
    }
    s.push_str("Assistant:");
    s
}

/// Message groups that must stay together when old turns are dropped: a
/// tool result stays with the assistant message that called the tool.
pub fn message_groups(messages: &[ChatMessage]) -> Vec<std::ops::Range<usize>> {
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match (m.role, groups.last_mut()) {
            (Role::Tool, Some(g)) => g.end = i + 1,
            _ => groups.push(i..i + 1),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_gemma_style_template() {
        let src = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";
        let t = ChatTemplate::new(Some(src), "<bos>", "<eos>").unwrap();
        let out = t.render(&[ChatMessage::new(Role::User, " hi ")]).unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn python_methods_and_raise_work() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip() }}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new(Role::User, " x ")]).unwrap(),
            "x"
        );
        let err = t
            .render(&[ChatMessage::new(Role::System, "s")])
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn endless_templates_are_stopped() {
        let src =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        assert!(t.render(&[ChatMessage::new(Role::User, "x")]).is_err());
        assert!(ChatTemplate::new(Some("{% for %}"), "", "").is_err());
    }

    #[test]
    fn glm_templates_render_as_llama_cpp_writes_them() {
        let chat = [
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "喜鹊?"),
        ];
        let t4 = ChatTemplate::new(Some(&glm_template(true)), "", "").unwrap();
        assert_eq!(
            t4.render(&chat).unwrap(),
            "[gMASK]<sop><|system|>\nBe brief.<|user|>\n喜鹊?<|assistant|>\n"
        );
        let t3 = ChatTemplate::new(Some(&glm_template(false)), "", "").unwrap();
        assert_eq!(
            t3.render(&chat).unwrap(),
            "[gMASK]sop<|system|>\n Be brief.<|user|>\n 喜鹊?<|assistant|>"
        );
        let tool = [
            ChatMessage::new(Role::User, "q"),
            ChatMessage::new(Role::Tool, "r"),
        ];
        assert!(t4.render(&tool).unwrap().contains("<|observation|>\nr"));
    }

    #[test]
    fn tool_results_stay_with_their_call() {
        let m = |r| ChatMessage::new(r, "x");
        let g = message_groups(&[
            m(Role::System),
            m(Role::User),
            m(Role::Assistant),
            m(Role::Tool),
            m(Role::Tool),
            m(Role::User),
        ]);
        assert_eq!(g, vec![0..1, 1..2, 2..5, 5..6]);
        assert!(plain_transcript(&[m(Role::User)]).ends_with("Assistant:"));
    }
}
