//! Data: image–text datasets on disk, importers, image preprocessing, tokenization, batching.

pub mod image;
pub mod import;
pub mod loader;
pub mod shards;
pub mod tokenizer;

pub use loader::{Batch, Loader, LoaderOptions, Position};
pub use shards::{read_dataset, Sample};
pub use tokenizer::Tokenizer;
