//! What a component says it was written in: the first `language` its `producers` custom
//! sections name (a Rust component names `Rust`, then `C11` for the WASI libc linked into it),
//! for operators to see.
//!
//! Informational only: a component may say anything or nothing, and nothing decides on it. It
//! must not fail a load: a section it cannot read is skipped.

use wasmparser::{KnownCustom, Parser, Payload};

/// The first language a component's producers sections name, if any.
pub(super) fn language(bytes: &[u8]) -> Option<String> {
    Parser::new(0).parse_all(bytes).flatten().find_map(|payload| {
        let Payload::CustomSection(section) = payload else { return None };
        let KnownCustom::Producers(reader) = section.as_known() else { return None };
        let field = reader.into_iter().flatten().find(|f| f.name == "language")?;
        let first = field.values.into_iter().flatten().next()?;
        Some(super::text::sanitize(first.name, 32))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_language_named_is_the_one() {
        let named = wat::parse_str(r#"(module (@producers (language "Rust" "") (language "C11" "")))"#).unwrap();
        assert_eq!(language(&named).as_deref(), Some("Rust"));
        assert_eq!(language(&wat::parse_str("(module)").unwrap()), None);
        assert_eq!(language(b"not wasm"), None);
    }
}
