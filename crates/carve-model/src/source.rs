//! Positions in source text, shared by every carve reader (catalog TOML, mig-parted YAML, tenancy
//! files, scheduler configs, plans), so that every error names its place the same way.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A 1-based line and column in a source text, shown as `line:column`. Columns count characters,
/// not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourcePos {
    pub line: usize,
    pub column: usize,
}

impl SourcePos {
    /// The first character of a text.
    pub const START: SourcePos = SourcePos { line: 1, column: 1 };

    /// A position from a 1-based line and column (a 0 is taken as 1).
    pub const fn new(line: usize, column: usize) -> SourcePos {
        SourcePos {
            line: if line == 0 { 1 } else { line },
            column: if column == 0 { 1 } else { column },
        }
    }

    /// The position of byte `offset` in `text`. An offset past the end is the end; one inside a
    /// character is that character.
    pub fn at_offset(text: &str, offset: usize) -> SourcePos {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map(|nl| before[nl + 1..].chars().count())
            .unwrap_or_else(|| before.chars().count())
            + 1;
        SourcePos { line, column }
    }
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_one() {
        assert_eq!(SourcePos::at_offset("ab\ncd", 0), SourcePos::new(1, 1));
        assert_eq!(SourcePos::at_offset("ab\ncd", 4), SourcePos::new(2, 2));
        assert_eq!(SourcePos::at_offset("ab\ncd", 99), SourcePos::new(2, 3));
        assert_eq!(SourcePos::new(0, 0), SourcePos::START);
        assert_eq!(SourcePos::new(3, 7).to_string(), "3:7");
    }

    #[test]
    fn offsets_inside_a_character_are_that_character() {
        // 'é' is two bytes: offset 2 falls inside it.
        assert_eq!(SourcePos::at_offset("aé", 2), SourcePos::new(1, 2));
        assert_eq!(SourcePos::at_offset("aé\nx", 3), SourcePos::new(1, 3));
    }

    #[test]
    fn serialises_as_line_and_column() {
        let v = serde_json::to_string(&SourcePos::new(4, 2)).unwrap();
        assert_eq!(v, r#"{"line":4,"column":2}"#);
    }
}
