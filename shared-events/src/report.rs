//! Reports, as a domain defines them: a fold over the events of a range of the log, finished
//! into a table. The projection engine runs them: it fixes the range when a report starts (a
//! start and an end offset per partition), reads exactly that range read-committed, feeds every
//! event to [`Report::apply`], and keeps the table [`Report::finish`] makes, so that the same
//! range always gives the same table.
//!
//! A report sees events in log order within a partition, and in no particular order across
//! partitions and topics: what it computes must not depend on that order (sums, counts, the
//! least of something), or the same range would not give the same table twice.
//!
//! A domain registers its reports through [`Reports`], which a service implements for every
//! event type it can decode; a new report over an existing event type touches its domain crate
//! only.

use std::collections::BTreeMap;

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// A string (`2026-01`).
    Text,
    /// A whole number.
    Integer,
    /// Amounts by currency: a JSON object `{"EUR": 1250}`; in CSV, a column per currency.
    Amounts,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "string",
            Self::Integer => "integer",
            Self::Amounts => "amounts",
        }
    }
}

/// One column of a report's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub kind: ColumnType,
    pub description: &'static str,
}

/// The first column of a report by month: the UTC month of each event's `occurred_at`.
pub const MONTH: Column = Column {
    name: "month",
    kind: ColumnType::Text,
    description: "The UTC month, YYYY-MM",
};

/// One cell, of its column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Integer(i64),
    Amounts(BTreeMap<String, i64>),
}

impl Cell {
    fn json(&self) -> serde_json::Value {
        match self {
            Self::Text(text) => text.clone().into(),
            Self::Integer(n) => (*n).into(),
            Self::Amounts(amounts) => amounts
                .iter()
                .map(|(currency, cents)| (currency.clone(), serde_json::Value::from(*cents)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// A finished report: its columns and its rows, each row a cell per column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: &'static [Column],
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// `{"columns": [{"name", "type", "description"}], "rows": [{<column>: <cell>}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let columns: Vec<serde_json::Value> = self
            .columns
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "type": c.kind.name(), "description": c.description
                })
            })
            .collect();
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|row| {
                self.columns
                    .iter()
                    .zip(row)
                    .map(|(column, cell)| (column.name.to_owned(), cell.json()))
                    .collect::<serde_json::Map<_, _>>()
                    .into()
            })
            .collect();
        serde_json::json!({ "columns": columns, "rows": rows })
    }
}

/// A table as CSV (RFC 4180, `\r\n` line ends): a header of column names, then a line per row.
/// An [`ColumnType::Amounts`] column becomes a column per currency any row has,
/// `<column>.<currency>`, in currency order; a row without that currency shows `0`.
pub fn csv(columns: &[(String, ColumnType)], rows: &[Vec<serde_json::Value>]) -> String {
    // The currencies of each amounts column, over every row.
    let currencies: Vec<Vec<String>> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| {
            let mut seen = std::collections::BTreeSet::new();
            if *kind == ColumnType::Amounts {
                for row in rows {
                    if let Some(serde_json::Value::Object(amounts)) = row.get(i) {
                        seen.extend(amounts.keys().cloned());
                    }
                }
            }
            seen.into_iter().collect()
        })
        .collect();
    let mut header = Vec::new();
    for ((name, kind), currencies) in columns.iter().zip(&currencies) {
        if *kind == ColumnType::Amounts {
            header.extend(currencies.iter().map(|c| field(&format!("{name}.{c}"))));
        } else {
            header.push(field(name));
        }
    }
    let mut out = header.join(",");
    out.push_str("\r\n");
    for row in rows {
        let mut line = Vec::new();
        for (i, ((_, kind), currencies)) in columns.iter().zip(&currencies).enumerate() {
            let cell = row.get(i).unwrap_or(&serde_json::Value::Null);
            if *kind == ColumnType::Amounts {
                line.extend(currencies.iter().map(|c| {
                    cell.get(c)
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(0)
                        .to_string()
                }));
            } else {
                line.push(match cell {
                    serde_json::Value::String(text) => field(text),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                });
            }
        }
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A CSV field, quoted when it must be. A field a spreadsheet would run as a formula is
/// prefixed with `'` (OWASP's advice against CSV injection).
fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// A report a domain defines: a fold over events, finished into a table.
pub trait Report: Send + Sync + 'static {
    /// What it is fed: one topic's event type, or an enum over several topics' types.
    type Event;
    /// What it accumulates; a new report starts from the default.
    type State: Default;

    /// Its name in `POST /admin/reports`: `monthly-orders`.
    const NAME: &'static str;
    /// The topics it reads, each named by the collection of the aggregate whose events it
    /// carries (`orders`, `customers`).
    const TOPICS: &'static [&'static str];
    /// What it shows, for the catalog of reports.
    const SUMMARY: &'static str;
    const COLUMNS: &'static [Column];

    fn apply(state: &mut Self::State, event: &Self::Event);

    /// The rows, a cell per column of [`Report::COLUMNS`], in an order that depends on the
    /// state only.
    fn finish(state: Self::State) -> Vec<Vec<Cell>>;

    /// The table of a finished state.
    fn table(state: Self::State) -> Table {
        Table {
            columns: Self::COLUMNS,
            rows: Self::finish(state),
        }
    }
}

/// Where a domain registers its reports over events of type `E`: a service implements it for
/// every event type it can decode from its topics.
pub trait Reports<E> {
    fn report<R: Report<Event = E>>(&mut self);
}

/// A UTC calendar month; shown as `YYYY-MM`, ordered in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i64,
    pub month: u8,
}

impl Month {
    /// The month of a time in milliseconds since the epoch (proleptic Gregorian, UTC).
    pub fn of(ms: i64) -> Self {
        // Days to civil date, after Howard Hinnant's `civil_from_days`.
        let days = ms.div_euclid(86_400_000) + 719_468;
        let era = days.div_euclid(146_097);
        let day_of_era = days.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted = (5 * day_of_year + 2) / 153;
        let month = if shifted < 10 {
            shifted + 3
        } else {
            shifted - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month: u8::try_from(month).unwrap_or(1),
        }
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[Column] = &[
        Column {
            name: "month",
            kind: ColumnType::Text,
            description: "",
        },
        Column {
            name: "count",
            kind: ColumnType::Integer,
            description: "",
        },
        Column {
            name: "revenue",
            kind: ColumnType::Amounts,
            description: "",
        },
    ];

    fn table() -> Table {
        Table {
            columns: COLUMNS,
            rows: vec![
                vec![
                    Cell::Text("2026-01".into()),
                    Cell::Integer(2),
                    Cell::Amounts(BTreeMap::from([("EUR".into(), 100)])),
                ],
                vec![
                    Cell::Text("=cmd,\"x\"".into()),
                    Cell::Integer(-1),
                    Cell::Amounts(BTreeMap::from([("USD".into(), 5), ("EUR".into(), 7)])),
                ],
            ],
        }
    }

    #[test]
    fn a_table_as_json_names_its_columns_and_cells() {
        let json = table().to_json();
        assert_eq!(json["columns"][2]["type"], "amounts");
        assert_eq!(json["rows"][0]["month"], "2026-01");
        assert_eq!(json["rows"][1]["revenue"]["USD"], 5);
    }

    #[test]
    fn csv_spreads_amounts_and_quotes_what_it_must() {
        let table = table();
        let json = table.to_json();
        let columns: Vec<(String, ColumnType)> = COLUMNS
            .iter()
            .map(|c| (c.name.to_owned(), c.kind))
            .collect();
        let rows: Vec<Vec<serde_json::Value>> = json["rows"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|row| COLUMNS.iter().map(|c| row[c.name].clone()).collect())
            .collect();
        assert_eq!(
            csv(&columns, &rows),
            "month,count,revenue.EUR,revenue.USD\r\n2026-01,2,100,0\r\n\"'=cmd,\"\"x\"\"\",-1,7,5\r\n"
        );
    }

    #[test]
    fn months_are_utc() {
        let month = |ms| Month::of(ms).to_string();
        assert_eq!(month(1_767_225_599_999), "2025-12");
        assert_eq!(month(1_767_225_600_000), "2026-01");
        assert_eq!(month(0), "1970-01");
        assert_eq!(month(-1), "1969-12");
        // 2024-02-29T12:00:00Z, 2000-03-01T00:00:00Z
        assert_eq!(month(1_709_208_000_000), "2024-02");
        assert_eq!(month(951_868_800_000), "2000-03");
    }

    proptest::proptest! {
        #[test]
        fn months_agree_with_rfc3339(ms in 0i64..4_102_444_800_000) {
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs());
            let text = humantime::format_rfc3339_seconds(time).to_string();
            proptest::prop_assert_eq!(Month::of(ms).to_string(), &text[..7]);
        }
    }
}
