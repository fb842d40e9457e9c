//! Table-driven tests: ports of kube-proxy's (pkg/proxy), case by case, and lb's own in their
//! style.
mod categorize;
mod ownership;
mod service;
mod slices;

/// Every failure `check` reports over a case table, each prefixed with its case's name.
fn table_failures<C>(
    cases: &[C],
    name: impl Fn(&C) -> &str,
    check: impl Fn(&C) -> Vec<String>,
) -> Vec<String> {
    cases
        .iter()
        .flat_map(|case| {
            let name = name(case);
            check(case).into_iter().map(move |e| format!("{name}: {e}"))
        })
        .collect()
}

/// A case table's names are unique, so a failure names one case.
fn assert_unique_names<'a>(names: impl Iterator<Item = &'a str>) {
    let all: Vec<&str> = names.collect();
    let mut unique = all.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "duplicate case names in {all:?}");
}
