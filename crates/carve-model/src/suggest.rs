//! "Did you mean" suggestions for unknown names.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub name: String,
    pub score: f64,
}

/// Names close to `query`, best first (at most three). Case-insensitive; a name that contains the
/// query, or is contained by it, counts as close.
pub fn did_you_mean<'a>(query: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<Suggestion> {
    let q = query.trim().to_ascii_lowercase();
    if q.is_empty() {
        return Vec::new();
    }
    let mut scored: Vec<Suggestion> = Vec::new();
    for name in names {
        let n = name.to_ascii_lowercase();
        let mut score = strsim::jaro_winkler(&q, &n);
        if q.len() >= 3 && (n.contains(&q) || q.contains(&n)) {
            score = score.max(0.9);
        }
        if score >= 0.8 && !scored.iter().any(|s| s.name == name) {
            scored.push(Suggestion {
                name: name.to_string(),
                score,
            });
        }
    }
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.name.cmp(&b.name)));
    if let Some(best) = scored.first().map(|s| s.score) {
        scored.retain(|s| s.score >= best - 0.05);
    }
    scored.truncate(3);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"];
        assert_eq!(did_you_mean("3g.40g", names)[0].name, "3g.40gb");
        assert_eq!(did_you_mean("1g.10gbb", names)[0].name, "1g.10gb");
        assert!(did_you_mean("banana", names).is_empty());
        assert!(did_you_mean("", names).is_empty());
    }
}
