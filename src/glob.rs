//! Tag-name globs (contract §7): `*` and `?` stay within one `/` level, `**`
//! spans levels, `[...]` classes as usual. Built on `globset`.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A compiled list of glob patterns; a name matches if any pattern matches.
#[derive(Debug, Clone)]
pub struct TagPatterns {
    patterns: Vec<String>,
    set: GlobSet,
}

/// A pattern that does not parse, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("glob {pattern:?} does not parse: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: String,
}

impl TagPatterns {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, GlobError> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            builder.add(compile(p.as_ref())?);
        }
        let set = builder.build().map_err(|e| GlobError {
            pattern: patterns
                .iter()
                .map(|p| p.as_ref())
                .collect::<Vec<_>>()
                .join(", "),
            reason: e.to_string(),
        })?;
        Ok(TagPatterns {
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
            set,
        })
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// Which of the patterns (by index) match `name`.
    pub fn matching(&self, name: &str) -> Vec<usize> {
        self.set.matches(name)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

fn compile(pattern: &str) -> Result<globset::Glob, GlobError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map_err(|e| GlobError {
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })
}

/// Checks one pattern without building a set (for configuration checks).
pub fn validate(pattern: &str) -> Result<(), GlobError> {
    compile(pattern).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_within_a_level_and_double_star_spans() {
        let p = TagPatterns::new(&["Line1/*"]).unwrap();
        assert!(p.is_match("Line1/Speed"));
        assert!(!p.is_match("Line1/Mixer/Speed"));
        let p = TagPatterns::new(&["Line1/**"]).unwrap();
        assert!(p.is_match("Line1/Mixer/Speed"));
        assert!(p.is_match("Line1/Speed"));
        assert!(!p.is_match("Line2/Speed"));
        let p = TagPatterns::new(&["Tank?.Level", "Mixer.[SR]peed"]).unwrap();
        assert!(p.is_match("Tank3.Level"));
        assert!(p.is_match("Mixer.Speed"));
        assert!(!p.is_match("Mixer.Feed"));
        assert_eq!(p.matching("Tank1.Level"), vec![0]);
    }

    #[test]
    fn a_bad_glob_names_itself() {
        let e = TagPatterns::new(&["Line1/[abc"]).unwrap_err();
        assert_eq!(e.pattern, "Line1/[abc");
        assert!(e.to_string().contains("Line1/[abc"));
    }
}
