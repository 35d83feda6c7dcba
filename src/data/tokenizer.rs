//! Tokenizers: any HF `tokenizer.json`, and training a BPE, WordPiece or word-level tokenizer
//! from captions. Encoding truncates to the model's length keeping the special tokens the
//! tokenizer adds (BERT's `[CLS]` … `[SEP]`, CLIP's start and end of text), as the reference
//! libraries do, and pads (with id 0, `[PAD]` in trained tokenizers).

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::{Lowercase, NormalizerWrapper};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, PostProcessor};

use crate::error::{Error, Result};

/// A caption's token ids, and whether its text was cut to fit.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i32>,
    pub truncated: bool,
}

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub pad_id: u32,
}

fn bad(path: &Path, fix: impl Into<String>) -> Error {
    Error::invalid(format!("tokenizer `{}`", path.display()), fix.into())
}

/// The kinds `basic tokenizer train` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bpe,
    WordPiece,
    WordLevel,
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json = serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
            bad(
                path,
                format!("it is not JSON ({e}); give a HF tokenizer.json"),
            )
        })?;
        if let Some(p) = json.get("post_processor") {
            check_templates(p).map_err(|why| bad(path, why))?;
        }
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            bad(
                path,
                format!("not a tokenizer.json the tokenizers library reads: {e}"),
            )
        })?;
        // Lengths are the model's: the file's own truncation and padding settings (a
        // sentence-transformers file pads to 128) are replaced by `encode`'s.
        inner
            .with_truncation(None)
            .map_err(|e| bad(path, e.to_string()))?
            .with_padding(None);
        let pad_id = inner
            .token_to_id("[PAD]")
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        Ok(Tokenizer { inner, pad_id })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` in exactly `length` tokens: the text's tokens cut to leave room for
    /// the special tokens the tokenizer adds around them (which are kept), then padded with the
    /// pad id.
    pub fn encode(&self, text: &str, length: usize) -> Result<Encoded> {
        let fail = |e: tokenizers::Error| {
            Error::invalid(
                format!("caption `{text}`"),
                format!("the tokenizer cannot encode it: {e}"),
            )
        };
        // The tokenizers library trusts the file it loaded and panics on some inconsistencies
        // that `load` cannot all foresee: a panic here is this caption's error, not a crash.
        let run = || -> tokenizers::Result<(tokenizers::Encoding, bool)> {
            let mut enc = self.inner.encode(text, false)?;
            let specials = self
                .inner
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(false));
            let room = length.saturating_sub(specials);
            let truncated = enc.len() > room;
            if truncated {
                enc.truncate(room, 0, tokenizers::TruncationDirection::Right);
            }
            Ok((self.inner.post_process(enc, None, true)?, truncated))
        };
        let (enc, truncated) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .map_err(|_| {
                Error::invalid(
                    format!("caption `{text}`"),
                    "the tokenizers library failed on it (its tokenizer.json is inconsistent); \
                     use a tokenizer.json that transformers loads and encodes with",
                )
            })?
            .map_err(fail)?;
        let mut ids: Vec<i32> = enc
            .get_ids()
            .iter()
            .take(length)
            .map(|&i| i as i32)
            .collect();
        ids.resize(length, self.pad_id as i32);
        Ok(Encoded { ids, truncated })
    }

    /// Trains a tokenizer on `corpus` (one caption per line) and saves it as `out`.
    pub fn train(corpus: &Path, kind: Kind, vocab_size: usize, out: &Path) -> Result<Tokenizer> {
        let specials = vec![
            AddedToken::from("[PAD]", true),
            AddedToken::from("[UNK]", true),
        ];
        let (model, mut trainer): (ModelWrapper, TrainerWrapper) = match kind {
            Kind::Bpe => (
                BPE::builder()
                    .unk_token("[UNK]".into())
                    .build()
                    .map_err(|e| bad(out, e.to_string()))?
                    .into(),
                BpeTrainer::builder()
                    .vocab_size(vocab_size)
                    .min_frequency(1)
                    .special_tokens(specials)
                    .build()
                    .into(),
            ),
            Kind::WordPiece => (
                WordPiece::builder()
                    .unk_token("[UNK]".into())
                    .build()
                    .map_err(|e| bad(out, e.to_string()))?
                    .into(),
                WordPieceTrainer::builder()
                    .vocab_size(vocab_size)
                    .min_frequency(1)
                    .special_tokens(specials)
                    .build()
                    .into(),
            ),
            Kind::WordLevel => (
                WordLevel::builder()
                    .unk_token("[UNK]".into())
                    .build()
                    .map_err(|e| bad(out, e.to_string()))?
                    .into(),
                WordLevelTrainer::builder()
                    .vocab_size(vocab_size)
                    .min_frequency(1)
                    .special_tokens(specials)
                    .build()
                    .map_err(|e| bad(out, e.to_string()))?
                    .into(),
            ),
        };
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_normalizer(Some(NormalizerWrapper::Lowercase(Lowercase)));
        t.with_pre_tokenizer(Some(PreTokenizerWrapper::Whitespace(Whitespace {})));
        let files = vec![corpus.to_string_lossy().into_owned()];
        t.train_from_files(&mut trainer, files)
            .map_err(|e| bad(corpus, format!("training failed: {e}")))?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        t.save(out, false)
            .map_err(|e| bad(out, format!("cannot save: {e}")))?;
        Tokenizer::load(out)
    }
}

/// The special tokens of every `TemplateProcessing` post-processor (also inside a `Sequence`)
/// exist and have as many ids as tokens: the tokenizers library checks this when a template is
/// built in code but not when it is read from a file, and panics when encoding with one that
/// lacks them. Processors are recognised by their fields, not their `type`: the library reads
/// a post-processor by its shape whatever its `type` says (a misspelt type still loads as a
/// template).
fn check_templates(p: &serde_json::Value) -> std::result::Result<(), String> {
    let has = |k: &str| p.get(k).is_some();
    if let Some(ps) = p.get("processors").and_then(|v| v.as_array()) {
        return ps.iter().try_for_each(check_templates);
    }
    match has("single") || has("pair") || has("special_tokens") {
        false => Ok(()),
        true => {
            let specials = p.get("special_tokens").and_then(|v| v.as_object());
            for (name, tok) in specials.into_iter().flatten() {
                let len = |k: &str| tok.get(k).and_then(|v| v.as_array()).map(Vec::len);
                if len("ids") != len("tokens") {
                    return Err(format!(
                        "its post-processor's special token `{name}` has a different number of \
                         ids and tokens"
                    ));
                }
            }
            let pieces = ["single", "pair"]
                .iter()
                .filter_map(|k| p.get(*k).and_then(|v| v.as_array()))
                .flatten();
            for piece in pieces {
                let Some(id) = piece.pointer("/SpecialToken/id").and_then(|v| v.as_str()) else {
                    continue;
                };
                if !specials.is_some_and(|s| s.contains_key(id)) {
                    return Err(format!(
                        "its post-processor's template uses the special token `{id}`, which its \
                         special_tokens do not define"
                    ));
                }
            }
            Ok(())
        }
    }
}
