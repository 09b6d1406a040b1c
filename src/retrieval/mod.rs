//! The retrieval layer: every sample's most similar other sample, through FAISS. With the
//! engine, the only layer that links native code (FAISS); it may import the pure layers.

pub mod neighbours;
