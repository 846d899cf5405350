//! The benches' command lines: `--flag value`, `--flag=value` and bare switches.
//! Arguments a bench does not take are skipped, because Cargo passes its own
//! (`--bench`, filters).

/// The flags of `args` that a bench takes, in order: `(flag, value)`, the value empty
/// for a switch. `Ok(None)`: help was asked for (`--help`, `-h`).
pub fn flags(
    args: impl IntoIterator<Item = String>,
    with_value: &[&str],
    switches: &[&str],
    usage: &str,
) -> Result<Option<Vec<(String, String)>>, String> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        if switches.contains(&flag.as_str()) {
            out.push((flag, String::new()));
            continue;
        }
        if !with_value.contains(&flag.as_str()) {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{usage}"))?,
        };
        out.push((flag, value));
    }
    Ok(Some(out))
}

/// `value` of `flag` as a whole number.
pub fn whole(flag: &str, value: &str, usage: &str) -> Result<usize, String> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| format!("{flag}: {value:?} is not a whole number\n{usage}"))
}

/// `value` of `flag` as a whole number of at least 1.
pub fn positive(flag: &str, value: &str, usage: &str) -> Result<usize, String> {
    match whole(flag, value, usage)? {
        0 => Err(format!("{flag} must be at least 1\n{usage}")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn values_inline_or_next_switches_and_unknown_arguments_skipped() {
        let got = flags(
            args("--bench --runs 3 --nodes=4 --keep filter"),
            &["--runs", "--nodes"],
            &["--keep"],
            "usage",
        )
        .unwrap()
        .unwrap();
        let want = [("--runs", "3"), ("--nodes", "4"), ("--keep", "")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(flags(args("--runs 3 -h"), &["--runs"], &[], "u"), Ok(None));
        assert!(flags(args("--runs"), &["--runs"], &[], "u").is_err());
        assert_eq!(positive("--runs", "2", "u"), Ok(2));
        assert!(positive("--runs", "0", "u").is_err());
        assert!(whole("--runs", "x", "u").is_err());
    }
}
