//! Chat templates are untrusted input: hostile ones are stopped by their render bounds in
//! well under a second, while the real templates of the catalogue (`tests/fixtures/chat/`)
//! render within a small fraction of every bound, on their conversations and on a long one.

use std::path::Path;
use std::time::{Duration, Instant};

use miwv::scoring::chat::{Bound, ChatSource, ChatTemplate, RenderBounds, RenderError};
use serde_json::Value;

fn template(jinja: &str) -> ChatTemplate {
    ChatTemplate::new(ChatSource::File, jinja, "<s>", "</s>").unwrap()
}

const CONVERSATION: [(&str, &str); 2] = [("user", "Hello there"), ("assistant", "Hi!")];

/// Renders `jinja` and expects it stopped at `bound`, quickly.
fn assert_stopped_at(jinja: &str, bound: Bound) {
    let started = Instant::now();
    let error = template(jinja).render(&CONVERSATION).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, RenderError::Bounded { bound: b, .. } if b == bound),
        "{jinja}: {error}"
    );
    assert!(
        error
            .to_string()
            .contains("far above what real chat templates use"),
        "{error}"
    );
    assert!(took < Duration::from_secs(5), "{jinja}: {took:?}");
}

#[test]
fn hostile_templates_stop_at_their_bounds() {
    // The loop that took a whole machine's memory: "x" * 1000 written 10^8 times.
    assert_stopped_at(
        "{% for m in messages %}{{ m.content }}{% for i in range(10000) %}{% for j in range(10000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}{% endfor %}",
        Bound::Output,
    );
    // The same loop building a string in memory instead of writing it.
    assert_stopped_at(
        "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s + 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' %}{% endfor %}{{ ns.s | length }}",
        Bound::Fuel,
    );
    // Loops that write nothing.
    assert_stopped_at(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        Bound::Fuel,
    );
    // A macro calling itself without end.
    assert_stopped_at(
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        Bound::Recursion,
    );
}

#[test]
fn a_template_that_raises_is_a_template_error() {
    let error = template("{{ raise_exception('no system messages here') }}")
        .render(&CONVERSATION)
        .unwrap_err();
    assert_eq!(
        error,
        RenderError::Template("no system messages here".into())
    );
}

/// The largest cost of the catalogue's templates, as fractions of the bounds.
#[test]
fn real_templates_stay_far_below_the_bounds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    // The catalogue's conversations, and a long one: 40 turns of 2 KB each.
    let mut conversations: Vec<Vec<(String, String)>> = cases["conversations"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            c["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let text = |k: &str| m[k].as_str().unwrap().to_string();
                    (text("role"), text("content"))
                })
                .collect()
        })
        .collect();
    conversations.push(
        (0..80)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                (role.to_string(), format!("turn {i} ").repeat(300))
            })
            .collect(),
    );
    let (mut fuel_share, mut output_share, mut rendered) = (0f64, 0f64, 0);
    for (name, entry) in cases["templates"].as_object().unwrap() {
        let jinja = std::fs::read_to_string(dir.join(entry["file"].as_str().unwrap())).unwrap();
        let bos = entry["bos_token"].as_str().unwrap_or_default();
        let eos = entry["eos_token"].as_str().unwrap_or_default();
        let template = ChatTemplate::new(ChatSource::Gguf, &jinja, bos, eos).unwrap();
        for conversation in &conversations {
            let messages: Vec<(&str, &str)> = conversation
                .iter()
                .map(|(r, c)| (r.as_str(), c.as_str()))
                .collect();
            let text_bytes = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
            let bounds = RenderBounds::for_text(text_bytes);
            match template.render_within(&messages, bounds) {
                Ok((text, fuel)) => {
                    fuel_share = fuel_share.max(fuel as f64 / bounds.fuel as f64);
                    output_share = output_share.max(text.len() as f64 / bounds.output as f64);
                    rendered += 1;
                }
                // Templates refuse some role orders; a bound must never be why.
                Err(RenderError::Template(_)) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
    eprintln!(
        "{rendered} renders: at most {:.2}% of the fuel bound and {:.2}% of the output bound",
        fuel_share * 100.0,
        output_share * 100.0
    );
    assert!(rendered > 50, "{rendered}");
    assert!(fuel_share < 0.01, "fuel: {fuel_share}");
    assert!(output_share < 0.2, "output: {output_share}");
}
