//! Data: image–text datasets on disk and in buckets (streamed), importers, image preprocessing, tokenization, batching.

pub mod image;
pub mod import;
pub mod loader;
pub mod shards;
pub mod source;
pub mod stream;
pub mod tokenizer;
pub mod webdataset;

pub use loader::{Batch, Loader, LoaderOptions, Position};
pub use shards::Sample;
pub use source::{Dataset, Shard};
pub use tokenizer::Tokenizer;
