//! Nothing here: see benches/extism.rs (and Cargo.toml for why this is a project of its own).
