//! `sluice listen URL`: the `curl -N` of Server-Sent Events. Events go to stdout, one per
//! record; connection news and errors go to stderr, so stdout can be piped into a program.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Serialize;
use sluice_client::{EventSource, Item, MessageEvent};

/// Print the events of a Server-Sent Events stream as they arrive.
///
/// Reconnects like a browser's EventSource (sending Last-Event-ID) unless --no-reconnect is
/// given. Exits 0 when the stream ends normally with --no-reconnect, or after --count events;
/// exits 1 when the server refuses the stream (any status but 200, or another content type).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The URL of the event stream.
    url: String,
    /// Resume after this event id (sent as Last-Event-ID on the first request).
    #[arg(long, value_name = "ID")]
    last_event_id: Option<String>,
    /// Print one JSON object per event and line: {"id": …, "event": …, "data": …}, where id is
    /// the last event id in force ("" when none) and event is "message" when none was given.
    #[arg(long)]
    json: bool,
    /// Stop at the end of the first connection instead of reconnecting.
    #[arg(long)]
    no_reconnect: bool,
    /// Add a request header, e.g. -H 'Authorization: Bearer …' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print nothing on stderr but errors.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    match raw.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected 'Name: value', got {raw:?}")),
    }
}

/// One event as `--json` prints it; field order is the documented one.
#[derive(Serialize)]
struct JsonEvent<'a> {
    id: &'a str,
    event: &'a str,
    data: &'a str,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut builder = EventSource::get(&args.url).reconnect(!args.no_reconnect);
    for (name, value) in args.headers {
        builder = builder.header(name, value);
    }
    if let Some(id) = args.last_event_id {
        builder = builder.last_event_id(id);
    }
    let mut source = builder.build()?;
    let mut stdout = io::stdout().lock();
    let mut printed = 0;
    while let Some(item) = source.next().await {
        match item.with_context(|| format!("listening to {}", args.url))? {
            Item::Open if !args.quiet => eprintln!("sluice: connected to {}", args.url),
            Item::Reconnecting { delay, cause } if !args.quiet => {
                eprintln!("sluice: {cause}; reconnecting in {:.1} s", delay.as_secs_f64());
            }
            Item::Message(event) => {
                match print(&mut stdout, &event, args.json) {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        return Ok(ExitCode::SUCCESS);
                    }
                    other => other.context("writing to stdout")?,
                }
                printed += 1;
                if args.count == Some(printed) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            _ => {}
        }
    }
    if args.count.is_some() {
        bail!("the stream ended after {printed} events");
    }
    Ok(ExitCode::SUCCESS)
}

fn print(out: &mut impl Write, event: &MessageEvent, json: bool) -> io::Result<()> {
    if json {
        let line =
            JsonEvent { id: &event.last_event_id, event: &event.event_type, data: &event.data };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    } else {
        // Printed as the canonical wire form, which is unambiguous for multi-line data. A
        // decoded event type may hold a NUL (the WHATWG decoder keeps it), which that form
        // cannot carry: such an event is reported instead of printed.
        let mut wire = BytesMut::new();
        match sluice_sse::Event::new(event.data.as_str())
            .with_event(event.event_type.as_ref())
            .and_then(|e| e.with_id(event.last_event_id.as_str()))
        {
            Ok(encodable) => encodable.encode(&mut wire),
            Err(why) => {
                tracing::warn!(id = %event.last_event_id, %why, "an event not printable as SSE (use --json)");
                return Ok(());
            }
        }
        out.write_all(&wire)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_type_holding_nul_is_reported_not_printed() {
        // Found by the decoder's fuzz target: `event: a\0b` decodes, but cannot be written back.
        let event =
            MessageEvent { event_type: "a\0b".into(), data: "x".into(), last_event_id: "1".into() };
        let mut out = Vec::new();
        print(&mut out, &event, false).unwrap();
        assert!(out.is_empty());
        print(&mut out, &event, true).unwrap();
        assert!(String::from_utf8(out).unwrap().contains(r#""event":"a\u0000b""#));
    }
}
