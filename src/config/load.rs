//! Reading config files: the main file, then every file its `[watchdog] include` globs match.
//!
//! Each item (`[watchdog]`, `[defaults]`, each `[[probe]]`, `[[rule]]` and `[action.X]`) is
//! deserialized on its own from the parsed document, so a bad probe does not hide the next
//! one's problems. Within an item, a key serde rejects (misspelt, wrong type) is reported,
//! removed, and the item tried again — so two misspelt keys give two messages.

use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::check::{self, Document, Item};
use super::diagnostic::{Diagnostics, Source};
use super::{Config, raw};

/// Loads and checks the config at `path`. On success, the warnings come with it; on failure,
/// every problem found (errors and warnings), sorted by position.
pub fn load(path: &Path) -> Result<(Config, Diagnostics), Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut documents = Vec::new();

    let Some(main) = read_source(path, &mut diags) else {
        return Err(diags);
    };
    warn_if_writable_by_others(&main, &mut diags);
    let main_doc = parse_document(main, true, &mut diags);

    // Includes are relative to the main file's directory, read in sorted order so that the
    // result does not depend on the directory listing.
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut included = Vec::new();
    if let Some(watchdog) = main_doc.watchdog.as_ref().map(|(w, _)| w)
        && let Some(patterns) = &watchdog.include
    {
        for pattern in patterns {
            let full = base.join(pattern.get_ref());
            let full_text = full.to_string_lossy().to_string();
            match glob::glob(&full_text) {
                Ok(paths) => {
                    let mut matched: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                    matched.sort();
                    included.extend(matched);
                }
                Err(e) => diags.error(
                    &main_doc.source,
                    pattern.span().start,
                    None,
                    format!(
                        "include pattern `{}` is not a valid glob: {e}",
                        pattern.get_ref()
                    ),
                ),
            }
        }
    }
    documents.push(main_doc);
    for file in included {
        if let Some(source) = read_source(&file, &mut diags) {
            warn_if_writable_by_others(&source, &mut diags);
            documents.push(parse_document(source, false, &mut diags));
        }
    }

    let config = check::check(&documents, &mut diags);
    let diags = diags.sorted();
    match config {
        Some(config) if !diags.has_errors() => Ok((config, diags)),
        _ => Err(diags),
    }
}

fn read_source(path: &Path, diags: &mut Diagnostics) -> Option<Source> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(Source::new(path.to_path_buf(), text)),
        Err(e) => {
            diags.file_error(path, format!("cannot read config file: {e}"));
            None
        }
    }
}

/// The config makes root run commands: a file others can write is a privilege escalation.
fn warn_if_writable_by_others(source: &Source, diags: &mut Diagnostics) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(&source.path) {
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 {
            diags.warn(
                source,
                0,
                None,
                format!(
                    "file mode is {:o}: writable by group or others, who could make the watchdog run commands as its user (chmod go-w)",
                    mode & 0o777
                ),
            );
        }
    }
}

/// Splits one file into its items and deserializes each.
fn parse_document(source: Source, is_main: bool, diags: &mut Diagnostics) -> Document {
    let mut doc = Document {
        source,
        watchdog: None,
        defaults: None,
        probes: Vec::new(),
        rules: Vec::new(),
        actions: Vec::new(),
    };
    // The parsed tree borrows the text; parse a copy so `doc` can own the source.
    let text = doc.source.text.clone();
    let (root, syntax_errors) = DeTable::parse_recoverable(&text);
    for e in &syntax_errors {
        let offset = e.span().map_or(0, |s| s.start);
        diags.error(
            &doc.source,
            offset,
            None,
            e.message().trim_end().to_string(),
        );
    }
    if !syntax_errors.is_empty() {
        // A recovered tree after a syntax error would mostly produce follow-on noise.
        return doc;
    }

    let root = root.into_inner();
    for (key, value) in root.iter() {
        let name = key.get_ref().as_ref();
        let at = key.span().start;
        match name {
            "watchdog" | "defaults" if !is_main => diags.error(
                &doc.source,
                at,
                None,
                format!("[{name}] belongs in the main config file, not in an included one"),
            ),
            "watchdog" => {
                doc.watchdog = item::<raw::Watchdog>(&doc.source, value, None, diags)
                    .map(|(w, span)| (w, span.start));
            }
            "defaults" => {
                doc.defaults = item::<raw::Timing>(&doc.source, value, None, diags)
                    .map(|(d, span)| (d, span.start));
            }
            "probe" => {
                for element in array_of_tables(&doc.source, name, value, diags) {
                    let subject = table_name(element).map(|n| format!("probe \"{n}\""));
                    if let Some((p, span)) =
                        item::<raw::Probe>(&doc.source, element, subject.as_deref(), diags)
                    {
                        doc.probes.push(Item {
                            value: p,
                            at: span.start,
                        });
                    }
                }
            }
            "rule" => {
                for element in array_of_tables(&doc.source, name, value, diags) {
                    let subject = rule_subject(element);
                    if let Some((r, span)) =
                        item::<raw::Rule>(&doc.source, element, Some(&subject), diags)
                    {
                        doc.rules.push(Item {
                            value: r,
                            at: span.start,
                        });
                    }
                }
            }
            "action" => match value.get_ref() {
                DeValue::Table(actions) => {
                    for (action_name, action) in actions.iter() {
                        let subject = format!("action \"{}\"", action_name.get_ref());
                        if let Some((a, span)) =
                            item::<raw::Action>(&doc.source, action, Some(&subject), diags)
                        {
                            doc.actions.push((
                                Spanned::new(action_name.span(), action_name.get_ref().to_string()),
                                Item {
                                    value: a,
                                    at: span.start,
                                },
                            ));
                        }
                    }
                }
                _ => diags.error(
                    &doc.source,
                    value.span().start,
                    None,
                    "`action` must be a table of actions: [action.NAME]",
                ),
            },
            other => {
                let hint = closest(other, &["watchdog", "defaults", "probe", "rule", "action"])
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                diags.error(
                    &doc.source,
                    at,
                    None,
                    format!(
                        "unknown section `{other}`{hint}; expected [watchdog], [defaults], [[probe]], [[rule]] or [action.NAME]"
                    ),
                );
            }
        }
    }
    doc
}

fn array_of_tables<'a, 'i>(
    source: &Source,
    name: &str,
    value: &'a Spanned<DeValue<'i>>,
    diags: &mut Diagnostics,
) -> Vec<&'a Spanned<DeValue<'i>>> {
    match value.get_ref() {
        DeValue::Array(items) => items.iter().collect(),
        _ => {
            diags.error(
                source,
                value.span().start,
                None,
                format!("`{name}` must be an array of tables: [[{name}]]"),
            );
            Vec::new()
        }
    }
}

fn table_name<'a>(value: &'a Spanned<DeValue<'_>>) -> Option<&'a str> {
    value.get_ref().get("name")?.get_ref().as_str()
}

fn rule_subject(value: &Spanned<DeValue<'_>>) -> String {
    match value
        .get_ref()
        .get("probe")
        .and_then(|p| p.get_ref().as_str())
    {
        Some(probe) => format!("rule for probe \"{probe}\""),
        None => "rule".to_string(),
    }
}

/// Deserializes one item, reporting every key serde rejects: a rejected key is removed and the
/// item tried again, until it deserializes or a problem has no key to blame (a missing field).
/// Returns the item if it could be built (even with some keys dropped: the caller's checks
/// still run on it, and the reported errors make the config invalid anyway).
fn item<T: DeserializeOwned>(
    source: &Source,
    value: &Spanned<DeValue<'_>>,
    subject: Option<&str>,
    diags: &mut Diagnostics,
) -> Option<(T, std::ops::Range<usize>)> {
    let span = value.span();
    let mut value = value.clone();
    for _ in 0..64 {
        match T::deserialize(value.clone().into_deserializer()) {
            Ok(t) => return Some((t, span)),
            Err(e) => {
                let at = e.span().unwrap_or(span.clone());
                diags.error(source, at.start, subject, humanize(e.message()));
                let DeValue::Table(table) = value.get_mut() else {
                    return None;
                };
                let culprit = table
                    .iter()
                    .find(|(k, v)| overlaps(&k.span(), &at) || overlaps(&v.span(), &at))
                    .map(|(k, _)| k.clone());
                match culprit {
                    Some(key) => {
                        table.remove(&key);
                    }
                    None => return None,
                }
            }
        }
    }
    None
}

fn overlaps(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> bool {
    a.start <= b.start && b.start < a.end.max(a.start + 1)
}

/// Turns serde's "unknown field `expct`, expected one of `a`, `b`" into a suggestion.
fn humanize(message: &str) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return match closest(field, &candidates) {
            Some(s) => format!("unknown key `{field}` (did you mean `{s}`?)"),
            None => format!(
                "unknown key `{field}`; valid keys: {}",
                candidates.join(", ")
            ),
        };
    }
    message.to_string()
}

/// The candidate within edit distance 2 (or a third of the word) of `word`, if any.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("expct", &["expect", "send", "address"]),
            Some("expect")
        );
        assert_eq!(closest("zzzzzz", &["expect", "send"]), None);
        assert_eq!(
            humanize("unknown field `intreval`, expected one of `name`, `interval`"),
            "unknown key `intreval` (did you mean `interval`?)"
        );
    }
}
