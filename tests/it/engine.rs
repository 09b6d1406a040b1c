//! The engine on the real default model: token layout, batch equivalence, duplicate examples.

use crate::common;

use miwv::data::dataset::read_dataset;
use miwv::engine::{Model, Scorer};
use miwv::pipeline::resolve_template;
use miwv::scoring::prompt::{Layout, Piece, ScoredSequence, Template, TemplateChoice, Tokenize};
use miwv::scoring::score::mean_loss;
use miwv::scoring::sizes::ContextSizes;

fn sizes(parallel: usize) -> ContextSizes {
    ContextSizes {
        ctx_per_sequence: 1024,
        parallel,
        batch: 1024 * parallel.min(2),
        ubatch: 512,
        threads: common::threads(),
        workers: 1,
    }
}

#[test]
fn segment_concatenation_decodes_back_to_the_exact_text() {
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let samples = read_dataset(&common::examples()).unwrap().samples;
    for choice in [
        TemplateChoice::Alpaca,
        TemplateChoice::Raw,
        TemplateChoice::Oda,
        TemplateChoice::Auto,
        TemplateChoice::Chatml,
    ] {
        let template = resolve_template(&model, choice, None).unwrap();
        let layout = Layout::new(&model, &template, false);
        for sample in &samples {
            let pieces = template.pieces(&[sample]).unwrap();
            let seq = layout.render(&[sample]).unwrap().scored().unwrap();
            let responses: Vec<String> = pieces
                .iter()
                .filter_map(|(_, p)| match p {
                    Piece::Response(text) => Some(text.clone()),
                    _ => None,
                })
                .collect();
            let scored: Vec<String> = seq
                .spans
                .iter()
                .map(|span| model.detokenize(&seq.tokens[span.clone()]))
                .collect();
            assert_eq!(
                scored, responses,
                "the scored ranges are exactly the responses of {} ({choice:?})",
                sample.id
            );
            let text: String = pieces
                .iter()
                .map(|(_, p)| match p {
                    Piece::Text(t) | Piece::Response(t) | Piece::Markup(t) => t.as_str(),
                    Piece::EndOfResponse(markup) => markup.as_deref().unwrap_or(""),
                })
                .collect();
            let decoded: Vec<u8> = seq.tokens.iter().flat_map(|&t| model.piece(t)).collect();
            assert_eq!(String::from_utf8_lossy(&decoded), text, "{choice:?}");
        }
    }
}

#[test]
fn the_model_template_is_the_gguf_jinja_with_its_default_system_message() {
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let template = resolve_template(&model, TemplateChoice::Auto, None).unwrap();
    let Template::Chat(chat) = &template else {
        panic!("SmolLM2-Instruct has a chat template");
    };
    assert_eq!(
        (template.name(), chat.source),
        ("model", miwv::scoring::chat::ChatSource::Gguf)
    );
    assert_eq!(
        (chat.bos_token.as_str(), chat.eos_token.as_str()),
        ("<|im_start|>", "<|im_end|>")
    );
    assert_eq!(
        chat.render(&[("user", "Hi"), ("assistant", "Hello!")])
            .unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
    // Markup tokens are special tokens; the same text inside data stays plain text.
    assert_eq!(model.tokenize_markup("<|im_start|>").len(), 1);
    assert!(model.tokenize("<|im_start|>").len() > 1);
    let chatml = resolve_template(&model, TemplateChoice::Chatml, None).unwrap();
    assert_eq!(chatml.name(), "chatml");
    let Template::Chat(chatml) = chatml else {
        panic!("ChatML is a chat template")
    };
    assert_eq!(chatml.jinja, miwv::scoring::chat::CHATML);
}

/// llama.cpp is not batch-invariant in general: the same tokens decoded beside other
/// sequences can take other kernel paths (repacked GEMM vs GEMV for Q4_0/Q4_K weights, ubatch
/// splits, flash attention), which order floating-point sums differently and move a short
/// response's mean loss by up to ~0.1 nats. With separate KV streams per sequence and the
/// earlier Q4_1 default (row-wise dot-product kernels) the difference measured on this CPU was
/// 0; the assertion keeps the 1e-2 nats tolerance for 16+ token responses so that it states
/// the guarantee the scheduler relies on rather than a property of one kernel.
#[test]
fn a_loss_inside_a_multi_sequence_batch_equals_the_single_sequence_loss() {
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let samples = read_dataset(&common::examples()).unwrap().samples;
    let layout = Layout::new(&model, &Template::Alpaca, false);
    let sequences: Vec<ScoredSequence> = samples
        .iter()
        .map(|s| layout.render(&[s]).unwrap().scored().unwrap())
        .filter(|s| s.target().len() >= 16)
        .take(12)
        .collect();
    assert_eq!(sequences.len(), 12);

    let mut single = Scorer::new(&model, sizes(1)).unwrap();
    let alone: Vec<f32> = sequences
        .iter()
        .map(|s| mean_loss(&single.target_log_probs(&[s]).unwrap()[0]))
        .collect();
    drop(single);

    let mut packed = Scorer::new(&model, sizes(4)).unwrap();
    let mut together = Vec::new();
    for chunk in sequences.chunks(4) {
        let refs: Vec<&ScoredSequence> = chunk.iter().collect();
        together.extend(
            packed
                .target_log_probs(&refs)
                .unwrap()
                .iter()
                .map(|lp| mean_loss(lp)),
        );
    }
    let worst = alone
        .iter()
        .zip(&together)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("largest |batched - single| mean response loss: {worst:.2e} nats");
    assert!(alone.iter().all(|l| l.is_finite() && *l > 0.0));
    assert!(worst <= 1e-2, "batched losses differ by {worst} nats");
}

#[test]
fn an_exact_duplicate_as_example_gives_a_clearly_negative_miwv() {
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let samples = read_dataset(&common::examples()).unwrap().samples;
    let layout = Layout::new(&model, &Template::Alpaca, false);
    let mut scorer = Scorer::new(&model, sizes(2)).unwrap();
    let mut checked = 0;
    for sample in samples
        .iter()
        .filter(|s| s.turns[0].output.len() > 200)
        .take(5)
    {
        let zero = layout.render(&[sample]).unwrap().scored().unwrap();
        let one = layout.render(&[sample, sample]).unwrap().scored().unwrap();
        let lps = scorer.target_log_probs(&[&zero, &one]).unwrap();
        let miwv = mean_loss(&lps[1]) - mean_loss(&lps[0]);
        eprintln!(
            "{}: zero-shot {:.3}, MIWV with itself as example {miwv:.3}",
            sample.id,
            mean_loss(&lps[0])
        );
        assert!(miwv < -0.5, "{}: MIWV {miwv}", sample.id);
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn oversized_batches_are_refused_not_aborted() {
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let mut scorer = Scorer::new(&model, sizes(1)).unwrap();
    let seq = ScoredSequence {
        tokens: vec![1; 2000],
        spans: std::iter::once(1..2000).collect(),
    };
    assert!(scorer.target_log_probs(&[&seq]).is_err());
}
