//! Just enough PTX parsing to load a module: the `.entry` names and the byte size of each of
//! their parameters (which is what a launch's packed arguments must match).

use tf_hal::{Error, ErrorKind, Result};

/// One kernel entry of a PTX module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxEntry {
    pub name: String,
    /// Size in bytes of each parameter, in order.
    pub param_sizes: Vec<usize>,
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            out.push(' ');
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn type_size(ty: &str) -> Option<usize> {
    Some(match ty {
        ".b8" | ".u8" | ".s8" | ".pred" => 1,
        ".b16" | ".u16" | ".s16" | ".f16" | ".bf16" => 2,
        ".b32" | ".u32" | ".s32" | ".f32" | ".f16x2" | ".bf16x2" => 4,
        ".b64" | ".u64" | ".s64" | ".f64" => 8,
        ".b128" => 16,
        _ => return None,
    })
}

fn parse_param(decl: &str, entry: &str) -> Result<usize> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidImage,
            format!(
                "PTX entry {entry}: cannot read parameter {:?}: {why}",
                decl.trim()
            ),
        )
    };
    let tokens: Vec<&str> = decl.split_whitespace().collect();
    if tokens.first() != Some(&".param") {
        return Err(bad("expected .param"));
    }
    let ty = tokens
        .iter()
        .find_map(|t| type_size(t))
        .ok_or_else(|| bad("no scalar type"))?;
    let name = tokens.last().copied().unwrap_or("");
    if let Some(open) = name.find('[') {
        let count: usize = name[open + 1..]
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad("bad array length"))?;
        Ok(ty * count)
    } else {
        Ok(ty)
    }
}

/// Read the entries of a PTX module. A module without any `.entry` is an error.
pub fn parse_entries(text: &str) -> Result<Vec<PtxEntry>> {
    let src = strip_comments(text);
    if !src.contains(".version") && !src.contains(".target") {
        return Err(Error::new(
            ErrorKind::InvalidImage,
            "not PTX: no .version or .target directive",
        ));
    }
    let mut entries = Vec::new();
    let mut rest = src.as_str();
    while let Some(pos) = rest.find(".entry") {
        let after = &rest[pos + ".entry".len()..];
        // ".entry" must be a whole word
        if !after.starts_with(|c: char| c.is_whitespace()) {
            rest = after;
            continue;
        }
        let after = after.trim_start();
        let name_end = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$' || c == '.'))
            .unwrap_or(after.len());
        let name = after[..name_end].to_string();
        if name.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                "PTX: .entry without a name",
            ));
        }
        let tail = after[name_end..].trim_start();
        let mut param_sizes = Vec::new();
        let consumed;
        if let Some(list) = tail.strip_prefix('(') {
            let close = list.find(')').ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidImage,
                    format!("PTX entry {name}: unterminated parameter list"),
                )
            })?;
            for decl in list[..close].split(',') {
                if decl.trim().is_empty() {
                    continue;
                }
                param_sizes.push(parse_param(decl, &name)?);
            }
            consumed = list[close..].as_ptr() as usize - rest.as_ptr() as usize;
        } else {
            consumed = tail.as_ptr() as usize - rest.as_ptr() as usize;
        }
        if entries.iter().any(|e: &PtxEntry| e.name == name) {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                format!("PTX: entry {name} is defined twice"),
            ));
        }
        entries.push(PtxEntry { name, param_sizes });
        rest = &rest[consumed..];
    }
    if entries.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidImage,
            "PTX module has no .entry: there is no kernel to load",
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_project_kernels() {
        let e = parse_entries(tf_hal_kernels()).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tf_vector_add_f32",
                "tf_saxpy_f32",
                "tf_fill_u32",
                "tf_busy"
            ]
        );
        assert_eq!(e[0].param_sizes, [8, 8, 8, 4]);
        assert_eq!(e[1].param_sizes, [4, 4, 8, 8]);
        assert_eq!(e[2].param_sizes, [8, 4, 4]);
        assert_eq!(e[3].param_sizes, [8]);
    }

    fn tf_hal_kernels() -> &'static str {
        include_str!("../../../hal/kernels/tf_kernels.ptx")
    }

    #[test]
    fn nvcc_style_params_and_arrays() {
        let ptx = ".version 8.0\n.target sm_90\n.address_size 64\n\
            .visible .entry _Z3fooPfi(\n .param .u64 .ptr .global .align 4 _Z3fooPfi_param_0,\n\
            .param .align 8 .b8 _Z3fooPfi_param_1[24]\n)\n{ ret; }\n\
            /* .entry commented_out( .param .u32 x ) */\n\
            .entry bare\n{ ret; }\n";
        let e = parse_entries(ptx).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].param_sizes, [8, 24]);
        assert_eq!(e[1].name, "bare");
        assert!(e[1].param_sizes.is_empty());
    }

    #[test]
    fn no_entries_is_an_error() {
        let err =
            parse_entries(".version 7.0\n.target sm_70\n.func helper() { ret; }\n").unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidImage);
        assert!(err.message.contains("no .entry"), "{err}");
        let err = parse_entries("hello world").unwrap_err();
        assert!(err.message.contains("not PTX"), "{err}");
    }
}
