//! The configuration reference, `docs/configuration.md`, is generated from the two
//! sources the daemon itself reads: the typed schema (`src/config/schema.rs`: each
//! key, its type and its doc comment, each value type's own doc, each choice's
//! spelling) and the embedded default (`src/config/default.toml`: each default, and
//! the comment written above it). This test regenerates it and fails when the file
//! differs; `ANALYTICS_STACK_WRITE_DOCS=1 cargo test --test config_reference` writes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A struct's named fields: (key, type, doc), in declaration order.
type Fields = Vec<(String, syn::Type, String)>;

/// What the schema declares.
#[derive(Default)]
struct Schema {
    structs: BTreeMap<String, Fields>,
    /// Each struct's own doc comment.
    struct_docs: BTreeMap<String, String>,
    /// Enums: the spellings a file uses, and the enum's doc.
    enums: BTreeMap<String, (Vec<String>, String)>,
    /// Value types (tuple structs that check what they hold): what they read from
    /// a file ("string", "integer") and their doc.
    values: BTreeMap<String, (String, String)>,
}

fn doc_of(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                lines.push(s.value().trim().to_string());
            }
        }
    }
    // Rustdoc's links to items (`[`X`]`) read as plain code in a reference.
    lines
        .join(" ")
        .replace("[`", "`")
        .replace("`]", "`")
        .trim()
        .to_string()
}

/// The value of `#[serde(NAME = "…")]` among `attrs`.
fn serde_value(attrs: &[syn::Attribute], name: &str) -> Option<String> {
    let mut found = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(name) {
                let value: syn::LitStr = meta.value()?.parse()?;
                found = Some(value.value());
            } else if meta.input.peek(syn::Token![=]) {
                let _skipped: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    found
}

fn serde_flag(attrs: &[syn::Attribute], name: &str) -> bool {
    let mut found = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(name) {
                found = true;
            } else if meta.input.peek(syn::Token![=]) {
                let _skipped: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    found
}

/// A variant's name as serde spells it under `rename_all`.
fn spelled(variant: &str, rule: Option<&str>) -> String {
    let mut words = Vec::new();
    let mut word = String::new();
    for c in variant.chars() {
        if c.is_uppercase() && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        word.extend(c.to_lowercase());
    }
    words.push(word);
    match rule {
        Some("kebab-case") => words.join("-"),
        Some("snake_case") => words.join("_"),
        Some("lowercase") => words.concat(),
        _ => variant.to_string(),
    }
}

fn read_schema() -> Schema {
    let text = std::fs::read_to_string(repo().join("src/config/schema.rs")).unwrap();
    let file = syn::parse_file(&text).expect("the schema parses");
    let mut schema = Schema::default();
    for item in file.items {
        match item {
            syn::Item::Struct(s) => match &s.fields {
                syn::Fields::Named(named) => {
                    let fields = named
                        .named
                        .iter()
                        .filter(|f| !serde_flag(&f.attrs, "skip"))
                        .map(|f| {
                            (
                                f.ident.as_ref().unwrap().to_string(),
                                f.ty.clone(),
                                doc_of(&f.attrs),
                            )
                        })
                        .collect();
                    schema.structs.insert(s.ident.to_string(), fields);
                    schema
                        .struct_docs
                        .insert(s.ident.to_string(), doc_of(&s.attrs));
                }
                syn::Fields::Unnamed(_) => {
                    let read = match serde_value(&s.attrs, "try_from").as_deref() {
                        Some("String") => "string",
                        Some("i64" | "u64" | "u32" | "u16") => "integer",
                        _ => "value",
                    };
                    schema
                        .values
                        .insert(s.ident.to_string(), (read.into(), doc_of(&s.attrs)));
                }
                syn::Fields::Unit => {}
            },
            // `bounded_u32!(/// doc  Name, min, max, what)`: an integer newtype.
            syn::Item::Macro(m) if m.mac.path.is_ident("bounded_u32") => {
                let (doc, name) = m
                    .mac
                    .parse_body_with(|input: syn::parse::ParseStream| {
                        let attrs = input.call(syn::Attribute::parse_outer)?;
                        let ident: syn::Ident = input.parse()?;
                        // The bounds and the unit's word: read from the type's doc.
                        input.step(|cursor| {
                            let mut rest = *cursor;
                            while let Some((_, next)) = rest.token_tree() {
                                rest = next;
                            }
                            Ok(((), rest))
                        })?;
                        Ok((doc_of(&attrs), ident.to_string()))
                    })
                    .expect("bounded_u32! reads as (docs, name, min, max, what)");
                schema.values.insert(name, ("integer".into(), doc));
            }
            // An enum read from a string (`try_from = "String"`) is a value described
            // by its doc, not a choice of its variants' names.
            syn::Item::Enum(e)
                if serde_value(&e.attrs, "try_from").as_deref() == Some("String") =>
            {
                schema
                    .values
                    .insert(e.ident.to_string(), ("string".into(), doc_of(&e.attrs)));
            }
            syn::Item::Enum(e) => {
                let rule = serde_value(&e.attrs, "rename_all");
                let spellings = e
                    .variants
                    .iter()
                    .map(|v| {
                        serde_value(&v.attrs, "rename")
                            .unwrap_or_else(|| spelled(&v.ident.to_string(), rule.as_deref()))
                    })
                    .collect();
                schema
                    .enums
                    .insert(e.ident.to_string(), (spellings, doc_of(&e.attrs)));
            }
            _ => {}
        }
    }
    schema
}

/// The last segment of a type path and its generic arguments.
fn type_parts(ty: &syn::Type) -> (String, Vec<syn::Type>) {
    let syn::Type::Path(p) = ty else {
        return (quote_type(ty), vec![]);
    };
    let last = p.path.segments.last().unwrap();
    let args = match &last.arguments {
        syn::PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    (last.ident.to_string(), args)
}

fn quote_type(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect::<Vec<_>>()
            .join("::"),
        _ => "value".into(),
    }
}

/// The first sentence of a doc comment.
fn first_sentence(doc: &str) -> String {
    match doc.find(". ") {
        Some(i) => doc[..=i].to_string(),
        None => doc.to_string(),
    }
}

/// What a key holds, for the reader: the kind of value and what it must be.
fn describe(schema: &Schema, ty: &syn::Type) -> String {
    let (name, args) = type_parts(ty);
    match name.as_str() {
        "bool" => "boolean".into(),
        "u16" | "u32" | "u64" | "i64" => "integer".into(),
        "String" => "string".into(),
        "IpAddr" => "string: an IP address (v4 or v6)".into(),
        "Option" => describe(schema, &args[0]),
        "BTreeMap" | "HashMap" => format!(
            "table: {} → {}",
            describe(schema, &args[0]),
            describe(schema, &args[1])
        ),
        other => {
            if let Some((spellings, _)) = schema.enums.get(other) {
                spellings
                    .iter()
                    .map(|s| format!("`\"{s}\"`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            } else if let Some((read, doc)) = schema.values.get(other) {
                if doc.is_empty() {
                    read.clone()
                } else {
                    format!("{read}: {}", first_sentence(doc))
                }
            } else if schema.structs.contains_key(other) {
                "table".into()
            } else {
                other.to_string()
            }
        }
    }
}

/// The embedded default: each key's value, and the comment lines right above it
/// (a comment right under a `[section]` line, before a blank line or a key, is the
/// section's own).
struct Defaults {
    values: toml::Table,
    key_notes: BTreeMap<String, String>,
    section_notes: BTreeMap<String, String>,
}

fn read_defaults() -> Defaults {
    let text = std::fs::read_to_string(repo().join("src/config/default.toml")).unwrap();
    let values: toml::Table = text.parse().expect("the default parses");
    let (mut key_notes, mut section_notes) = (BTreeMap::new(), BTreeMap::new());
    let mut section = String::new();
    let mut comment: Vec<String> = Vec::new();
    let mut after_header = false;
    for line in text.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix('#') {
            comment.push(c.trim().to_string());
        } else if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            // A comment right above a section's header is the section's.
            if !comment.is_empty() {
                section_notes.insert(section.clone(), comment.join(" "));
            }
            comment.clear();
            after_header = true;
        } else if line.is_empty() {
            // A block that begins `KEY: …` is about a key the default leaves unset;
            // any other block right under the header is the section's.
            let unset_key = comment.first().and_then(|first| {
                let (key, rest) = first.split_once(": ")?;
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
                    .then(|| (key.to_string(), rest.to_string()))
            });
            if let Some((key, rest)) = unset_key {
                let text = std::iter::once(rest)
                    .chain(comment[1..].iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" ");
                key_notes.insert(format!("{section}.{key}"), text);
            } else if after_header && !comment.is_empty() {
                section_notes.insert(section.clone(), comment.join(" "));
            }
            comment.clear();
            after_header = false;
        } else if let Some((key, _)) = line.split_once('=') {
            let full = format!("{section}.{}", key.trim());
            if !comment.is_empty() {
                key_notes.insert(full, comment.join(" "));
            }
            comment.clear();
            after_header = false;
        }
    }
    Defaults {
        values,
        key_notes,
        section_notes,
    }
}

fn default_of(defaults: &toml::Table, key: &str) -> Option<toml::Value> {
    let mut value = toml::Value::Table(defaults.clone());
    for part in key.split('.') {
        value = value.as_table()?.get(part)?.clone();
    }
    Some(value)
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// One row per key, one table per section, walking the schema from `Config`.
fn render(schema: &Schema, defaults: &Defaults) -> (String, Vec<String>) {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from [src/config/schema.rs](../src/config/schema.rs) (keys, types, doc\n\
         comments) and [src/config/default.toml](../src/config/default.toml) (defaults and\n\
         their comments) by `ANALYTICS_STACK_WRITE_DOCS=1 cargo test --test config_reference`;\n\
         the same test fails when this file is out of date. Do not edit it by hand.\n\n\
         `/etc/analytics-stack/stack.toml`, then `/etc/analytics-stack/stack.d/*.toml` in name\n\
         order, are merged key by key over the default. Unknown keys and bad values are\n\
         refused, all at once, each with its file, line and column (exit code 3), before\n\
         anything changes.\n",
    );
    let mut keys = Vec::new();
    let config = &schema.structs["Config"];
    for (section, ty, section_doc) in config {
        let (type_name, _) = type_parts(ty);
        let _ = write!(out, "\n## `[{section}]`\n\n");
        let struct_doc = schema
            .struct_docs
            .get(&type_name)
            .cloned()
            .unwrap_or_default();
        for note in [section_doc.as_str(), struct_doc.as_str()]
            .into_iter()
            .chain(
                defaults
                    .section_notes
                    .get(section.as_str())
                    .map(String::as_str),
            )
            .filter(|n| !n.is_empty())
        {
            let _ = writeln!(out, "{note}\n");
        }
        out.push_str("| key | value | default | meaning |\n|---|---|---|---|\n");
        rows(
            schema, defaults, section, &type_name, "", &mut out, &mut keys,
        );
    }
    (out, keys)
}

/// The rows of the struct `struct_name` under `prefix`; `parent_doc` is the doc of
/// the key that holds it (a nested table: `redis.broker`), said before each row's.
fn rows(
    schema: &Schema,
    defaults: &Defaults,
    prefix: &str,
    struct_name: &str,
    parent_doc: &str,
    out: &mut String,
    keys: &mut Vec<String>,
) {
    for (field, ty, doc) in &schema.structs[struct_name] {
        let key = format!("{prefix}.{field}");
        let (type_name, args) = type_parts(ty);
        if schema.structs.contains_key(&type_name) {
            rows(schema, defaults, &key, &type_name, doc, out, keys);
            continue;
        }
        // A table of named entries whose values are tables: one row per field, NAME
        // standing for the entry's name.
        if matches!(type_name.as_str(), "BTreeMap" | "HashMap") {
            let (value_type, _) = type_parts(&args[1]);
            if schema.structs.contains_key(&value_type) {
                let _ = writeln!(
                    out,
                    "| `{key}.NAME` | {} | none | {} |",
                    cell(&format!("table, one per {}", describe(schema, &args[0]))),
                    cell(doc)
                );
                keys.push(key.clone());
                rows(
                    schema,
                    defaults,
                    &format!("{key}.NAME"),
                    &value_type,
                    "",
                    out,
                    keys,
                );
                continue;
            }
        }
        let default = match default_of(&defaults.values, &key) {
            Some(v) => format!("`{v}`"),
            None => "unset".into(),
        };
        // The schema's doc comment; the default's comment where the schema has none.
        let own = match (doc.is_empty(), defaults.key_notes.get(&key)) {
            (false, _) => doc.clone(),
            (true, Some(note)) => note.clone(),
            (true, None) => String::new(),
        };
        let meaning = match (parent_doc.is_empty(), own.is_empty()) {
            (_, true) => String::new(),
            (true, false) => own,
            (false, false) => format!("{parent_doc} {own}"),
        };
        let _ = writeln!(
            out,
            "| `{key}` | {} | {} | {} |",
            cell(&describe(schema, ty)),
            cell(&default),
            cell(&meaning)
        );
        keys.push(key);
    }
}

/// Every key of the default, as dotted paths.
fn default_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v.as_table() {
            Some(t) if !t.is_empty() => default_keys(t, &key, out),
            _ => out.push(key),
        }
    }
}

/// The cells of one row of the reference's tables (`|` inside a cell is `\|`).
fn cells(row: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = row.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    out
}

/// Text for troff: backslashes, hyphens and a leading dot or quote escaped, the
/// Markdown code marks and link targets dropped.
fn troff(text: &str) -> String {
    let text = text.replace('`', "").replace("**", "");
    // [label](target) -> label
    let mut plain = String::new();
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        plain.push_str(&rest[..open]);
        plain.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    plain.push_str(rest);
    let escaped = plain.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// The man page's CONFIGURATION section, from the reference: a subsection per table,
/// a tagged paragraph per key (its value, default and meaning).
fn man_section(reference: &str) -> String {
    let mut out = String::from(
        ".SH CONFIGURATION\n\
         .\\\" Generated from src/config/schema.rs and src/config/default.toml by\n\
         .\\\" ANALYTICS_STACK_WRITE_DOCS=1 cargo test \\-\\-test config_reference.\n\
         /etc/analytics\\-stack/stack.toml, then /etc/analytics\\-stack/stack.d/*.toml in name\n\
         order, merged key by key over the default; unknown keys and bad values are refused\n\
         before anything changes.\n",
    );
    for line in reference.lines() {
        if let Some(section) = line.strip_prefix("## ") {
            let _ = writeln!(out, ".SS {}", troff(section));
        } else if line.starts_with("| `") {
            let c = cells(line);
            let _ = writeln!(
                out,
                ".TP\n.B {}\n{}; default {}.\n{}",
                troff(&c[0]),
                troff(c[1].trim_end_matches('.')),
                troff(&c[2]),
                troff(&c[3])
            );
        }
    }
    out
}

const MAN_BEGIN: &str = ".\\\" BEGIN CONFIGURATION\n";
const MAN_END: &str = ".\\\" END CONFIGURATION\n";

#[test]
fn the_configuration_reference_is_generated_from_the_schema_and_the_default() {
    let schema = read_schema();
    let defaults = read_defaults();
    let (text, keys) = render(&schema, &defaults);

    // The walk covers the default: every key it sets has its row.
    let mut set = Vec::new();
    default_keys(&defaults.values, "", &mut set);
    let missing: Vec<&String> = set.iter().filter(|k| !keys.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "keys of the default without a row: {missing:?}"
    );
    // And every key has something that says what it is for.
    let silent: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| `") && l.ends_with("|  |"))
        .collect();
    assert!(silent.is_empty(), "keys with no meaning: {silent:#?}");

    let path = repo().join("docs/configuration.md");
    if std::env::var_os("ANALYTICS_STACK_WRITE_DOCS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == text,
        "docs/configuration.md is not what the schema and the default say: run \
         `ANALYTICS_STACK_WRITE_DOCS=1 cargo test --test config_reference` and commit it"
    );

    // The man page's CONFIGURATION section: the same rows, between its markers.
    let man_path = repo().join("docs/man/analytics-stack.1");
    let man = std::fs::read_to_string(&man_path).unwrap();
    let (Some(begin), Some(end)) = (man.find(MAN_BEGIN), man.find(MAN_END)) else {
        panic!("docs/man/analytics-stack.1 has no generated CONFIGURATION markers");
    };
    let section = man_section(&text);
    let wanted = format!("{}{MAN_BEGIN}{section}{}", &man[..begin], &man[end..]);
    if std::env::var_os("ANALYTICS_STACK_WRITE_DOCS").is_some() {
        std::fs::write(&man_path, &wanted).unwrap();
    }
    assert!(
        std::fs::read_to_string(&man_path).unwrap() == wanted,
        "the man page's CONFIGURATION section is not the reference's: run \
         `ANALYTICS_STACK_WRITE_DOCS=1 cargo test --test config_reference` and commit it"
    );
    assert_eq!(
        section.matches(".TP\n").count(),
        keys.len(),
        "a paragraph per key"
    );
}
