//! `cargo xtask report <name>`: starts a report through a query replica's admin API, shows its
//! progress (percent, events/s, ETA) until it is finished, then prints its table, and writes it
//! as CSV if asked.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A report through the admin API.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// The report: `monthly-orders`, `monthly-customers`, `customer-cohorts`.
    report: String,
    /// `beginning`, an RFC 3339 UTC time, or a date (`2026-01-01`, midnight UTC).
    #[arg(long, default_value = "beginning")]
    from: String,
    /// `now`, an RFC 3339 UTC time, or a date (midnight UTC).
    #[arg(long, default_value = "now")]
    to: String,
    /// Events per second the report reads at most.
    #[arg(long)]
    max_events_per_second: Option<u64>,
    /// Also write the result as CSV to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// A query replica's base URL (the dev stack's first replica by default).
    #[arg(long, env = "QUERY_URL", default_value = "http://127.0.0.1:8091")]
    url: String,
    /// The admin token (the dev stack's by default).
    #[arg(long, env = "QUERY_ADMIN_TOKEN", default_value = crate::DEV_ADMIN_TOKEN, hide_default_value = true)]
    token: String,
}

/// `2026-01-01` is midnight UTC that day; anything else is passed as it is.
fn bound(text: &str) -> String {
    let is_date = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if is_date {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    }
}

pub(crate) fn run(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(report(args))
}

async fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = args.url.trim_end_matches('/');
    let mut body = json!({"report": args.report, "from": bound(&args.from), "to": bound(&args.to)});
    if let Some(limit) = args.max_events_per_second {
        body["max_events_per_second"] = limit.into();
    }
    let response = http
        .post(format!("{base}/admin/reports"))
        .bearer_auth(&args.token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("could not reach the query replica at {base}"))?;
    if response.status() != 202 {
        bail!("the replica refused: {}", problem(response).await);
    }
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("the replica named no location")?
        .to_owned();
    let url = format!("{base}{location}");
    eprintln!("report {location}");
    let status = loop {
        let response = http.get(&url).bearer_auth(&args.token).send().await?;
        if response.status() != 200 {
            bail!(
                "the replica did not show the report: {}",
                problem(response).await
            );
        }
        let status: Value = response.json().await?;
        draw(&status);
        if !matches!(status["state"].as_str(), Some("queued" | "running")) {
            eprintln!();
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if status["state"] != "done" {
        eprintln!(
            "the report is {}: {}",
            status["state"].as_str().unwrap_or("?"),
            status["error"].as_str().unwrap_or("no error given")
        );
        return Ok(ExitCode::FAILURE);
    }
    print!("{}", table(&status["result"]));
    println!(
        "{} events; offsets: {}",
        status["result"]["events"], status["result"]["offsets"]
    );
    if let Some(path) = &args.csv {
        let csv = http
            .get(&url)
            .bearer_auth(&args.token)
            .header("accept", "text/csv")
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("CSV written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn problem(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    format!(
        "{status}: {}",
        body["detail"].as_str().unwrap_or("(no detail)")
    )
}

/// One line of progress, redrawn in place.
fn draw(status: &Value) {
    const WIDTH: usize = 30;
    let percent = status["percent"].as_f64().unwrap_or(0.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let filled = ((percent / 100.0) * WIDTH as f64).round() as usize;
    let eta = status["eta_seconds"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.0} s"));
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r{:<9} [{}{}] {percent:5.1} %  {:>9} events/s  ETA {eta:<8}",
        status["state"].as_str().unwrap_or("?"),
        "#".repeat(filled.min(WIDTH)),
        ".".repeat(WIDTH - filled.min(WIDTH)),
        status["events_per_second"].as_f64().unwrap_or(0.0),
    );
    let _ = err.flush();
}

/// The result as an aligned text table; amounts as `EUR 12.50 USD 3.00`.
fn table(result: &Value) -> String {
    let columns: Vec<&str> = result["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| columns.iter().map(|c| cell(&row[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(columns.iter().map(|c| (*c).to_owned()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(amounts) => amounts
            .iter()
            .map(|(currency, cents)| {
                let cents = cents.as_i64().unwrap_or(0);
                let sign = if cents < 0 { "-" } else { "" };
                format!(
                    "{currency} {sign}{}.{:02}",
                    cents.unsigned_abs() / 100,
                    cents.unsigned_abs() % 100
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_midnight_utc() {
        assert_eq!(bound("2026-01-01"), "2026-01-01T00:00:00Z");
        assert_eq!(bound("beginning"), "beginning");
        assert_eq!(bound("2026-01-01T10:00:00Z"), "2026-01-01T10:00:00Z");
    }

    #[test]
    fn a_result_prints_as_an_aligned_table() {
        let result = json!({
            "columns": [{"name": "month"}, {"name": "orders_placed"}, {"name": "revenue_cents"}],
            "rows": [
                {"month": "2026-01", "orders_placed": 12, "revenue_cents": {"EUR": 1250, "USD": -5}},
            ]
        });
        assert_eq!(
            table(&result),
            "month    orders_placed  revenue_cents\n\
             -------  -------------  -------------------\n\
             2026-01  12             EUR 12.50 USD -0.05\n"
        );
    }
}
