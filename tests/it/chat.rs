//! Chat templates against transformers, token for token: the catalogue in
//! `tests/fixtures/chat/` (real templates, and what transformers renders and tokenises for each
//! test conversation, generated once by `tools/reference/chat_fixtures.py`), rendered by miwv
//! and tokenised with the default model's GGUF vocabulary.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::common;

use miwv::data::dataset::{Sample, Turn};
use miwv::engine::Model;
use miwv::scoring::chat::{ChatSource, ChatTemplate, RenderError, Segment};
use miwv::scoring::prompt::{Layout, Template, Token, Tokenize};

#[derive(Deserialize)]
struct Fixtures {
    templates: BTreeMap<String, TemplateFixture>,
    conversations: BTreeMap<String, Conversation>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct TemplateFixture {
    file: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

#[derive(Deserialize)]
struct Conversation {
    messages: Vec<Message>,
    /// How many of the first messages are the example's (0: no example).
    example_messages: usize,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct Case {
    template: String,
    conversation: String,
    error: Option<String>,
    render: Option<String>,
    segments: Option<Vec<SegmentFixture>>,
    dropped_messages: Option<Vec<usize>>,
    tokens: Option<Vec<Token>>,
    scored: Option<Vec<[usize; 2]>>,
    target_scored: Option<Vec<[usize; 2]>>,
    same_as_whole: Option<bool>,
}

#[derive(Deserialize)]
struct SegmentFixture {
    kind: String,
    text: String,
}

fn fixtures() -> Fixtures {
    let path = common::root().join("tests/fixtures/chat/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn template(fixtures: &Fixtures, name: &str) -> ChatTemplate {
    let t = &fixtures.templates[name];
    let path = common::root().join("tests/fixtures/chat").join(&t.file);
    let jinja = std::fs::read_to_string(path).unwrap();
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    ChatTemplate::new(
        ChatSource::File,
        &jinja,
        &text(&t.bos_token),
        &text(&t.eos_token),
    )
    .unwrap()
}

/// The messages as a sample, when they are one: an optional system message, then user and
/// assistant alternating.
fn as_sample(id: &str, messages: &[Message]) -> Option<Sample> {
    let (system, rest) = match messages.split_first() {
        Some((first, rest)) if first.role == "system" => (first.content.clone(), rest),
        _ => (String::new(), messages),
    };
    let turns = rest
        .chunks(2)
        .map(|pair| match pair {
            [user, assistant] if user.role == "user" && assistant.role == "assistant" => {
                Some(Turn {
                    instruction: user.content.clone(),
                    input: String::new(),
                    output: assistant.content.clone(),
                })
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Sample {
        id: id.into(),
        system,
        turns,
        record: Default::default(),
    })
}

fn ranges(ranges: &[[usize; 2]]) -> Vec<std::ops::Range<usize>> {
    ranges.iter().map(|[a, b]| *a..*b).collect()
}

#[test]
fn the_catalogue_renders_and_tokenises_as_transformers_does() {
    let fixtures = fixtures();
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let mut checked = BTreeMap::<&str, usize>::new();
    for case in &fixtures.cases {
        let what = format!("{} / {}", case.template, case.conversation);
        let chat = template(&fixtures, &case.template);
        let conversation = &fixtures.conversations[&case.conversation];
        let messages: Vec<(&str, &str)> = conversation
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();

        if let Some(expected) = &case.error {
            match chat.segments(&messages) {
                Err(RenderError::Template(message)) => {
                    assert!(
                        message.contains(expected),
                        "{what}: {message} vs {expected}"
                    )
                }
                other => {
                    panic!("{what}: expected the template to raise {expected:?}, got {other:?}")
                }
            }
            *checked.entry("raise").or_default() += 1;
            continue;
        }
        let render = case.render.as_deref().unwrap();
        assert_eq!(chat.render(&messages).unwrap(), render, "{what}: render");
        if case
            .dropped_messages
            .as_ref()
            .is_some_and(|d| !d.is_empty())
        {
            // The template leaves a message out: nothing to score it by, so it is refused.
            assert!(
                matches!(
                    chat.segments(&messages),
                    Err(RenderError::Unsplittable { .. })
                ),
                "{what}"
            );
            *checked.entry("drops a message").or_default() += 1;
            continue;
        }

        // The split and the segment-wise token ids.
        let segments = chat.segments(&messages).unwrap();
        let expected = case.segments.as_ref().unwrap();
        assert_eq!(segments.len(), expected.len(), "{what}: segments");
        let mut tokens: Vec<Token> = Vec::new();
        let mut scored = Vec::new();
        for (segment, expected) in segments.iter().zip(expected) {
            let start = tokens.len();
            match segment {
                Segment::Markup(text) => {
                    assert_eq!(
                        (expected.kind.as_str(), text),
                        ("markup", &expected.text),
                        "{what}"
                    );
                    tokens.extend(model.tokenize_markup(text));
                }
                Segment::Content { message, text } => {
                    assert_eq!(
                        (expected.kind.as_str(), text),
                        ("content", &expected.text),
                        "{what}"
                    );
                    tokens.extend(model.tokenize(text));
                    if messages[*message].0 == "assistant" && tokens.len() > start {
                        scored.push(start..tokens.len());
                    }
                }
            }
        }
        assert_eq!(&tokens, case.tokens.as_ref().unwrap(), "{what}: token ids");
        assert_eq!(
            scored,
            ranges(case.scored.as_ref().unwrap()),
            "{what}: scored"
        );

        // The same through the scorer's layout, with the conversation as miwv's samples.
        let split = conversation.example_messages;
        let example = as_sample("example", &conversation.messages[..split]);
        let target = as_sample("target", &conversation.messages[split..]);
        if let (Some(example), Some(target)) = (example, target) {
            let layout = Layout::new(&model, &Template::Chat(chat.clone()), false);
            let shown: Vec<&Sample> = if split > 0 {
                vec![&example, &target]
            } else {
                vec![&target]
            };
            let rendered = layout.render(&shown).unwrap();
            assert_eq!(
                &rendered.tokens,
                case.tokens.as_ref().unwrap(),
                "{what}: layout"
            );
            assert_eq!(
                rendered.spans,
                ranges(case.target_scored.as_ref().unwrap()),
                "{what}: only the target is scored"
            );
            *checked.entry("through the layout").or_default() += 1;
        }
        *checked.entry("token for token").or_default() += 1;
    }
    eprintln!("{checked:?}");
    assert_eq!(fixtures.templates.len(), 11);
    assert_eq!(fixtures.cases.len(), 11 * fixtures.conversations.len());
    assert_eq!(
        checked["token for token"] + checked["raise"] + checked["drops a message"],
        fixtures.cases.len()
    );
    assert!(checked["token for token"] >= 60, "{checked:?}");
    assert!(checked["raise"] >= 8, "{checked:?}");
}

/// For the default model the segment-wise tokens are exactly the tokens transformers gives the
/// whole rendered text, except where a message holds special-token text (which miwv keeps as
/// text) or starts with whitespace that merges into the markup's newline.
#[test]
fn for_the_default_model_segment_wise_tokens_are_the_whole_text_tokens() {
    let fixtures = fixtures();
    for case in fixtures.cases.iter().filter(|c| c.template == "smollm2") {
        assert_eq!(
            case.same_as_whole,
            Some(case.conversation != "unusual"),
            "{}",
            case.conversation
        );
    }
}

/// The default run renders exactly what transformers renders for the default model.
#[test]
fn the_default_template_is_the_gguf_template_transformers_renders() {
    let fixtures = fixtures();
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let Template::Chat(ours) =
        miwv::pipeline::resolve_template(&model, miwv::scoring::prompt::TemplateChoice::Auto, None)
            .unwrap()
    else {
        panic!("the default model has a chat template")
    };
    let catalogued = template(&fixtures, "smollm2");
    assert_eq!(ours.jinja, catalogued.jinja);
    assert_eq!(
        (ours.bos_token.as_str(), ours.eos_token.as_str()),
        (catalogued.bos_token.as_str(), catalogued.eos_token.as_str())
    );
}

/// `--chat-template` with a template that refuses a system message: the run stops before any
/// embedding, naming the sample and quoting the template.
#[test]
fn a_template_that_refuses_a_sample_stops_the_run_before_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::miwv()
        .args(["select", "examples/chat-mini.jsonl", "-o"])
        .arg(dir.path())
        .args([
            "--chat-template",
            "tests/fixtures/chat/templates/mistral-v0.1.jinja",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "sample chat-000: the chat template says: Conversation roles must alternate \
             user/assistant/user/assistant/..."
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("embedded samples"), "{stderr}");
    assert!(!dir.path().join("scores.jsonl").exists());

    // Combined with a text format it is a command-line error.
    let output = common::miwv()
        .args(["select", "examples/chat-mini.jsonl", "--template", "alpaca"])
        .args(["--chat-template", "t.jinja"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--chat-template t.jinja") && stderr.contains("--template alpaca"),
        "{stderr}"
    );
}

/// `miwv doctor` shows a sample as the model sees it: the template's own default system
/// message, the scored responses between ⟦ and ⟧, each token; and another template in its
/// place with `--chat-template`.
#[test]
fn doctor_shows_a_sample_as_the_model_will_see_it() {
    let doctor = |extra: &[&str]| {
        let output = common::miwv()
            .args(["doctor", "examples/chat-mini.jsonl", "--sample", "1"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let shown = doctor(&[]);
    for part in [
        "template: model (the GGUF's tokenizer.chat_template, Jinja sha256 ",
        "sample 1 (id chat-001): ",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "<|im_start|>assistant\n⟦391⟧<|im_end|>\n",
    ] {
        assert!(shown.contains(part), "{part:?} missing:\n{shown}");
    }
    let token_lines = shown
        .lines()
        .skip_while(|l| !l.starts_with("tokens (position"));
    let scored_lines = token_lines
        .filter(|l| {
            let mut fields = l.split_whitespace();
            fields.next().is_some_and(|p| p.parse::<usize>().is_ok()) && fields.next() == Some("*")
        })
        .count();
    let scored: usize = shown
        .split(" tokens, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(scored_lines, scored, "one marked line per scored token");

    let zephyr = doctor(&[
        "--chat-template",
        "tests/fixtures/chat/templates/zephyr.jinja",
    ]);
    assert!(
        zephyr.contains("template: chat-template (a --chat-template file, Jinja sha256 "),
        "{zephyr}"
    );
    assert!(
        zephyr.contains("<|assistant|>\n⟦391⟧<|im_end|>\n"),
        "{zephyr}"
    );
}
