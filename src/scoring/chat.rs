//! Chat templates: a conversation rendered by the model's own Jinja template, as the trainer
//! rendered it, and split back into markup and message contents.
//!
//! Fine-tuning frameworks render chat data with Hugging Face transformers'
//! `apply_chat_template`: the Jinja template stored with the model (in a GGUF,
//! `tokenizer.chat_template`) run by Jinja2 with `trim_blocks` and `lstrip_blocks`,
//! `raise_exception`, `bos_token`/`eos_token` and Python's string methods. The template may
//! add a default system message, date headers, fold a system message into the first user
//! turn, trim contents or refuse some role orders, so scoring must run it rather than guess its
//! family. It runs here in MiniJinja, configured the same way.
//!
//! The segment-wise token layout (docs/METHOD.md) needs to know which parts of the render are
//! markup and which are message contents. The conversation is rendered a second time with each
//! content replaced by a unique sentinel, which gives the markup between contents; the real
//! render is then walked against it. A template may emit a content trimmed (Jinja's `trim`,
//! Python's `strip`): what it emitted is what is scored.
//!
//! A template comes with a model file, which is untrusted input: every render runs within
//! [`RenderBounds`] (MiniJinja's fuel, which counts instructions and the memory values take; a
//! cap on the rendered text; a recursion depth), scaled by the conversation's size and far
//! above what real templates need, so a template that loops, recurses or writes without end
//! is refused in milliseconds instead of taking the machine's memory.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A chat message: role (`system`, `user`, `assistant`) and content.
pub type Message<'a> = (&'a str, &'a str);

/// miwv's ChatML template, for `--template chatml`.
pub const CHATML: &str = include_str!("../../assets/templates/chatml.jinja");

/// The date templates print as today's (`strftime_now`), fixed so that a run's sequences never
/// depend on the day it runs: Llama 3.1's own default date.
pub const TEMPLATE_DATE: (i32, u32, u32) = (2024, 7, 26);

/// Where a chat template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatSource {
    /// The GGUF's `tokenizer.chat_template`.
    Gguf,
    /// A `--chat-template` file.
    File,
    /// miwv's built-in ChatML template ([`CHATML`]).
    Chatml,
}

impl ChatSource {
    /// The template's name in messages and `run.json`'s `template_name`.
    pub fn name(self) -> &'static str {
        match self {
            ChatSource::Gguf => "model",
            ChatSource::File => "chat-template",
            ChatSource::Chatml => "chatml",
        }
    }

    /// Where the template comes from, in words.
    pub fn describe(self) -> &'static str {
        match self {
            ChatSource::Gguf => "the GGUF's tokenizer.chat_template",
            ChatSource::File => "a --chat-template file",
            ChatSource::Chatml => "miwv's built-in chatml template",
        }
    }
}

/// A Jinja chat template and the special-token strings it is rendered with.
#[derive(Clone, Serialize, Deserialize)]
pub struct ChatTemplate {
    /// Where the template comes from.
    pub source: ChatSource,
    /// The template's Jinja text.
    pub jinja: String,
    /// sha256 of the Jinja text.
    pub sha256: String,
    /// The text of the model's BOS token, passed as `bos_token`.
    pub bos_token: String,
    /// The text of the model's EOS token, passed as `eos_token`.
    pub eos_token: String,
    /// A user and an assistant message rendered with `{user}` and `{assistant}` as contents:
    /// the markup at a glance (`None` when the template refuses that conversation).
    pub markup: Option<String>,
    #[serde(skip)]
    compiled: OnceLock<Arc<Environment<'static>>>,
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &Self) -> bool {
        (&self.source, &self.jinja, &self.bos_token, &self.eos_token)
            == (
                &other.source,
                &other.jinja,
                &other.bos_token,
                &other.eos_token,
            )
    }
}

impl Eq for ChatTemplate {}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// What one render may cost. The fuel and the output grow with the conversation's text; the
/// bases leave real templates (whose largest cost in the test catalogue is measured by
/// `real_templates_stay_far_below_the_bounds`) a margin of more than a hundredfold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderBounds {
    /// MiniJinja fuel: about one unit per instruction, and one per 64 bytes of values made.
    pub fuel: u64,
    /// Bytes of rendered text.
    pub output: usize,
    /// MiniJinja's recursion depth (loops count 1, macro calls and includes about 10).
    pub recursion: usize,
}

impl RenderBounds {
    /// The fuel any render may use.
    pub const FUEL_BASE: u64 = 2_000_000;
    /// Fuel per byte of the conversation's text (a template may copy it a few times).
    pub const FUEL_PER_BYTE: u64 = 1;
    /// Rendered bytes any render may write.
    pub const OUTPUT_BASE: usize = 1 << 20;
    /// Rendered bytes per byte of the conversation's text.
    pub const OUTPUT_PER_BYTE: usize = 4;
    /// The recursion depth (MiniJinja's default is 500).
    pub const RECURSION: usize = 100;

    /// The bounds for rendering a conversation of `text_bytes` bytes of roles and contents.
    pub fn for_text(text_bytes: usize) -> Self {
        RenderBounds {
            fuel: Self::FUEL_BASE + Self::FUEL_PER_BYTE * text_bytes as u64,
            output: Self::OUTPUT_BASE + Self::OUTPUT_PER_BYTE * text_bytes,
            recursion: Self::RECURSION,
        }
    }
}

/// Which bound a template crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Instructions and memory (MiniJinja's fuel).
    Fuel,
    /// Rendered text.
    Output,
    /// Recursion depth.
    Recursion,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bound::Fuel => "instructions and memory",
            Bound::Output => "rendered text",
            Bound::Recursion => "recursion depth",
        })
    }
}

/// Why a conversation could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The template does not compile, or raised while rendering (`raise_exception` included).
    #[error("the chat template says: {0}")]
    Template(String),
    /// The template crossed a bound: it loops, recurses or writes far more than any chat
    /// template needs.
    #[error("the chat template exceeded its bound on {bound} ({limit}) for a conversation of {text_bytes} bytes, far above what real chat templates use; it was stopped")]
    Bounded {
        /// The bound crossed.
        bound: Bound,
        /// Its value.
        limit: u64,
        /// The conversation's size.
        text_bytes: usize,
    },
    /// The render does not contain message `message`'s content, as written or trimmed.
    #[error(
        "the chat template's output does not contain message {message} ({role}) as written or \
         trimmed, so its tokens cannot be told from the template's markup"
    )]
    Unsplittable {
        /// The message's index in the conversation (0-based).
        message: usize,
        /// Its role.
        role: String,
    },
}

/// A part of a rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Template markup (may be empty).
    Markup(String),
    /// Message `message`'s content as the template emitted it.
    Content {
        /// Index of the message in the conversation.
        message: usize,
        /// The emitted text.
        text: String,
    },
}

impl ChatTemplate {
    /// A template from its Jinja text, which comes from `source`.
    ///
    /// # Errors
    /// [`RenderError::Template`] when the text is not a template MiniJinja can compile.
    pub fn new(
        source: ChatSource,
        jinja: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, RenderError> {
        let mut template = Self {
            source,
            jinja: jinja.to_string(),
            sha256: format!("{:x}", Sha256::digest(jinja.as_bytes())),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            markup: None,
            compiled: OnceLock::new(),
        };
        template.environment()?;
        template.markup = template
            .render(&[("user", "{user}"), ("assistant", "{assistant}")])
            .ok();
        Ok(template)
    }

    /// The environment with the template compiled, built once.
    fn environment(&self) -> Result<&Environment<'static>, RenderError> {
        if let Some(env) = self.compiled.get() {
            return Ok(env);
        }
        let env = Arc::new(huggingface_environment(&self.jinja)?);
        Ok(self.compiled.get_or_init(|| env))
    }

    /// The conversation as the template renders it for training: no generation prompt at the
    /// end, as `apply_chat_template(messages, add_generation_prompt=False)`.
    ///
    /// # Errors
    /// [`RenderError::Template`] with the template's own message when it raises.
    pub fn render(&self, messages: &[Message]) -> Result<String, RenderError> {
        let text_bytes = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
        self.render_within(messages, RenderBounds::for_text(text_bytes))
            .map(|(text, _)| text)
    }

    /// [`ChatTemplate::render`] within `bounds`; also returns the fuel the render used.
    ///
    /// # Errors
    /// [`RenderError::Template`] when the template raises, [`RenderError::Bounded`] when it
    /// crosses a bound.
    pub fn render_within(
        &self,
        messages: &[Message],
        bounds: RenderBounds,
    ) -> Result<(String, u64), RenderError> {
        let text_bytes = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
        let bounded = |bound, limit: u64| RenderError::Bounded {
            bound,
            limit,
            text_bytes,
        };
        // An environment is a few reference-counted maps: a copy per render carries its fuel.
        let mut env = Environment::clone(self.environment()?);
        env.set_fuel(Some(bounds.fuel));
        env.set_recursion_limit(bounds.recursion);
        let messages: Vec<Value> = messages
            .iter()
            .map(|(role, content)| context! { role => *role, content => *content })
            .collect();
        let mut output = CappedWriter::new(bounds.output);
        let rendered = env.get_template(TEMPLATE_NAME).and_then(|t| {
            t.render_captured_to(
                context! {
                    messages => messages,
                    add_generation_prompt => false,
                    tools => (),
                    documents => (),
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                },
                &mut output,
            )
        });
        match rendered {
            Ok(captured) => {
                let used = captured.state().fuel_levels().map_or(0, |(used, _)| used);
                let text = String::from_utf8(output.bytes)
                    .map_err(|_| RenderError::Template("the render is not UTF-8".into()))?;
                Ok((text, used))
            }
            Err(_) if output.overflowed => Err(bounded(Bound::Output, bounds.output as u64)),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(bounded(Bound::Fuel, bounds.fuel)),
            Err(e) if is_recursion(&e) => Err(bounded(Bound::Recursion, bounds.recursion as u64)),
            Err(e) => Err(RenderError::Template(describe(&e))),
        }
    }

    /// The render split into markup and contents, alternating and starting and ending with
    /// markup: `M0 c0 M1 c1 ... Mn`, one content per message, each as the template emitted it.
    ///
    /// # Errors
    /// [`RenderError`] when the template raises, or when its output cannot be split (a
    /// template that rewrites a content beyond trimming it).
    pub fn segments(&self, messages: &[Message]) -> Result<Vec<Segment>, RenderError> {
        let rendered = self.render(messages)?;
        let sentinels: Vec<String> = (0..messages.len()).map(sentinel).collect();
        let placeholders: Vec<Message> = messages
            .iter()
            .zip(&sentinels)
            .map(|((role, _), s)| (*role, s.as_str()))
            .collect();
        let skeleton = self.render(&placeholders)?;
        let mut markup = Vec::with_capacity(messages.len() + 1);
        let mut rest = skeleton.as_str();
        for (j, s) in sentinels.iter().enumerate() {
            let (before, after) = rest
                .split_once(s.as_str())
                .ok_or_else(|| unsplittable(messages, j))?;
            markup.push(before);
            rest = after;
        }
        markup.push(rest);
        let contents = emitted_contents(&rendered, messages, &markup)
            .map_err(|j| unsplittable(messages, j))?;
        let mut segments = Vec::with_capacity(2 * messages.len() + 1);
        for (j, text) in contents.into_iter().enumerate() {
            segments.push(Segment::Markup(markup[j].to_string()));
            segments.push(Segment::Content {
                message: j,
                text: text.to_string(),
            });
        }
        segments.push(Segment::Markup(markup[messages.len()].to_string()));
        Ok(segments)
    }
}

const TEMPLATE_NAME: &str = "chat";

fn sentinel(j: usize) -> String {
    format!("MIWVCONTENT{j}MIWVEND")
}

fn unsplittable(messages: &[Message], j: usize) -> RenderError {
    RenderError::Unsplittable {
        message: j,
        role: messages.get(j).map_or("", |m| m.0).to_string(),
    }
}

/// The forms in which a template may emit a content: as written, or trimmed as Jinja's `trim`
/// and Python's `strip`, `lstrip` and `rstrip` do.
fn emitted_forms(content: &str) -> [&str; 4] {
    [
        content,
        content.trim(),
        content.trim_start(),
        content.trim_end(),
    ]
}

/// Each message's content as it appears in `rendered` between the markup pieces; when no
/// choice of forms reproduces the render exactly, the first message that none accounts for.
fn emitted_contents<'r>(
    rendered: &'r str,
    messages: &[Message],
    markup: &[&str],
) -> Result<Vec<&'r str>, usize> {
    let mut found = Vec::with_capacity(messages.len());
    let mut deepest = 0;
    match rendered.strip_prefix(markup[0]) {
        Some(rest) if walk(rest, messages, &markup[1..], &mut found, &mut deepest) => Ok(found),
        _ => Err(deepest.min(messages.len().saturating_sub(1))),
    }
}

/// Backtracking over the forms of each content (in practice the first form fits); `deepest`
/// keeps the furthest message reached, for the error.
fn walk<'r>(
    rest: &'r str,
    messages: &[Message],
    markup: &[&str],
    found: &mut Vec<&'r str>,
    deepest: &mut usize,
) -> bool {
    *deepest = (*deepest).max(found.len());
    let Some(((_, content), later)) = messages.split_first() else {
        return rest.is_empty();
    };
    let mut tried: Vec<&str> = Vec::with_capacity(4);
    for form in emitted_forms(content) {
        if tried.contains(&form) {
            continue;
        }
        tried.push(form);
        let Some(after) = rest.strip_prefix(form) else {
            continue;
        };
        let Some(next) = after.strip_prefix(markup[0]) else {
            continue;
        };
        found.push(&rest[..form.len()]);
        if walk(next, later, &markup[1..], found, deepest) {
            return true;
        }
        found.pop();
    }
    false
}

/// Rendered text kept up to a cap; past it, writes fail and the render stops.
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl CappedWriter {
    fn new(cap: usize) -> Self {
        CappedWriter {
            bytes: Vec::new(),
            cap,
            overflowed: false,
        }
    }
}

impl Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("the render is past its size bound"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether MiniJinja stopped a render at its recursion limit.
fn is_recursion(error: &JinjaError) -> bool {
    error.kind() == ErrorKind::InvalidOperation
        && error
            .detail()
            .is_some_and(|d| d.contains("recursion limit exceeded"))
}

/// An environment configured as transformers configures Jinja2 for chat templates.
fn huggingface_environment(jinja: &str) -> Result<Environment<'static>, RenderError> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| RenderError::Template(describe(&e)))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| {
        strftime_template_date(&format)
    });
    env.add_filter("tojson", python_json);
    env.add_template_owned(TEMPLATE_NAME, jinja.to_string())
        .map_err(|e| RenderError::Template(describe(&e)))?;
    Ok(env)
}

/// A MiniJinja error as one line: the template's own message for `raise_exception`, and the
/// line it comes from otherwise.
fn describe(error: &JinjaError) -> String {
    let detail = error.detail().unwrap_or_default();
    match (error.kind(), error.line()) {
        (ErrorKind::InvalidOperation, _) if !detail.is_empty() => detail.to_string(),
        (kind, Some(line)) => format!("{kind}: {detail} (template line {line})"),
        (kind, None) => format!("{kind}: {detail}"),
    }
}

/// Python's `strftime` for [`TEMPLATE_DATE`] at midnight, for the directives templates use.
fn strftime_template_date(format: &str) -> Result<String, JinjaError> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let (year, month, day) = TEMPLATE_DATE;
    // 2024-07-26 was a Friday.
    let weekday = DAYS[4];
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('-') if chars.clone().next() == Some('d') => {
                chars.next();
                out.push_str(&day.to_string());
            }
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H' | 'M' | 'S') => out.push_str("00"),
            Some('%') => out.push('%'),
            other => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.unwrap_or(' ')
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `tojson` as transformers defines it: Python's `json.dumps` with `ensure_ascii=False`, so
/// `", "` and `": "` between items, or one item per line with `indent`; no HTML escaping.
fn python_json(value: &Value, kwargs: minijinja::value::Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| JinjaError::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(
    value: &serde_json::Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (n, (key, item)) in map.iter().enumerate() {
                if n > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(key).unwrap_or_default());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate::new(ChatSource::Chatml, CHATML, "<|im_start|>", "<|im_end|>").unwrap()
    }

    #[test]
    fn chatml_renders_and_splits_back_into_its_messages() {
        let messages = [
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
        ];
        let template = chatml();
        let rendered = template.render(&messages).unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n"
        );
        let segments = template.segments(&messages).unwrap();
        assert_eq!(segments.len(), 7);
        let joined: String = segments
            .iter()
            .map(|s| match s {
                Segment::Markup(t) | Segment::Content { text: t, .. } => t.as_str(),
            })
            .collect();
        assert_eq!(joined, rendered);
        assert_eq!(
            segments[5],
            Segment::Content {
                message: 2,
                text: "Hello!".into()
            }
        );
        assert_eq!(
            template.markup.as_deref(),
            Some("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n")
        );
    }

    #[test]
    fn a_trimmed_content_is_scored_as_emitted_and_markup_inside_a_content_stays_content() {
        let template = ChatTemplate::new(
            ChatSource::File,
            "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</s>{% endfor %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let messages = [("user", "  </s><user>x  "), ("assistant", " y\n")];
        let segments = template.segments(&messages).unwrap();
        assert_eq!(
            segments,
            [
                Segment::Markup("<user>".into()),
                Segment::Content {
                    message: 0,
                    text: "</s><user>x".into()
                },
                Segment::Markup("</s><assistant>".into()),
                Segment::Content {
                    message: 1,
                    text: "y".into()
                },
                Segment::Markup("</s>".into()),
            ]
        );
    }

    #[test]
    fn raise_exception_and_rewritten_contents_are_errors_with_the_reason() {
        let strict = ChatTemplate::new(
            ChatSource::File,
            "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            strict.render(&[("assistant", "a")]).unwrap_err(),
            RenderError::Template("Conversations must start with a user message".into())
        );
        let upper = ChatTemplate::new(
            ChatSource::File,
            "{% for m in messages %}[{{ m.content | upper }}]{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            upper
                .segments(&[("user", "ok"), ("assistant", "no")])
                .unwrap_err(),
            RenderError::Unsplittable {
                message: 0,
                role: "user".into()
            }
        );
        assert!(matches!(
            ChatTemplate::new(ChatSource::File, "{% for %}", "", ""),
            Err(RenderError::Template(_))
        ));
    }

    #[test]
    fn python_methods_dates_and_json_as_transformers_renders_them() {
        let template = ChatTemplate::new(
            ChatSource::File,
            "{{ strftime_now('%d %b %Y') }}|{% if messages[0].content.strip().startswith('a') %}yes{% endif %}|{{ {'a': [1, 'é'], 'b': '<'} | tojson }}|{{ {'a': 1} | tojson(indent=2) }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            template.render(&[("user", "  abc ")]).unwrap(),
            "26 Jul 2024|yes|{\"a\": [1, \"é\"], \"b\": \"<\"}|{\n  \"a\": 1\n}"
        );
    }

    #[test]
    fn booleans_print_as_in_python_and_the_generation_tag_is_refused() {
        let prints_bool =
            ChatTemplate::new(ChatSource::File, "{{ messages[0].content == 'a' }}", "", "")
                .unwrap();
        assert_eq!(prints_bool.render(&[("user", "a")]).unwrap(), "True");
        let generation =
            "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}";
        assert!(matches!(
            ChatTemplate::new(ChatSource::File, generation, "", ""),
            Err(RenderError::Template(_))
        ));
    }
}
