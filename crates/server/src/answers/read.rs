//! Reading an answer back from the hub: from its start or from a cursor, replayed then live,
//! ending after its `end`; or, for the protocols that answer with one object, what is stored
//! of it so far.

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use sluice_hub::{Cursor, Delivery, Hub, Selector, SubscribeRequest, Update};

use super::events::AnswerEvent;
use super::{Answers, Reader, Running, answer_of, end_id, start_id, topic};
use crate::error::{ApiError, store_unavailable};

/// What a reader is sent: an answer event (with its id in the hub, when it has one), or a
/// frame the hub made (a comment saying why the stream ends, say), passed on as it is.
pub(crate) enum Piece {
    Event(Option<String>, AnswerEvent),
    Frame(Bytes),
}

/// Answer events straight from a provider, as pieces.
pub(crate) fn unstored(events: BoxStream<'static, AnswerEvent>) -> BoxStream<'static, Piece> {
    events.map(|event| Piece::Event(None, event)).boxed()
}

/// The cursor of a reconnection: the `Last-Event-ID` header, else the query's.
pub(crate) fn cursor(headers: &HeaderMap, query: Option<String>) -> Option<String> {
    headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or(query)
        .filter(|id| !id.is_empty())
}

/// Whether `cursor` is the `end` of its answer, stored (so a reconnect gets 204); also for an
/// answer stored before ids were the hub's own (`{answer}.end`, with no `#`).
pub(crate) async fn ended_at(hub: &Hub, cursor: &str) -> Result<bool, ApiError> {
    let answer = answer_of(cursor);
    if cursor != end_id(answer) && cursor != format!("{answer}.end") {
        return Ok(false);
    }
    Ok(hub.store().find(cursor).await.map_err(store_unavailable)?.is_some())
}

/// The stored update with id `event_id`, if it is kept.
async fn stored_update(hub: &Hub, event_id: &str) -> Result<Option<Arc<Update>>, ApiError> {
    let Some(seq) = hub.store().find(event_id).await.map_err(store_unavailable)? else {
        return Ok(None);
    };
    let page = hub.store().read_after(seq - 1, 1).await.map_err(store_unavailable)?;
    Ok(page.into_iter().next().filter(|u| u.seq() == seq))
}

fn event_of(update: &Update) -> Option<AnswerEvent> {
    AnswerEvent::from_update(update.event_type(), update.data())
}

impl Answers {
    /// Follows answer `id` after event `after`, or from its start (its `start` event
    /// included), replayed then live, ending after `end`. An answer that nothing produces any
    /// more is ended first, so the reader never waits forever. With `merge`, the deltas
    /// waiting together when the reader is ready for more are sent as one ([`merged`]).
    pub(crate) async fn follow(
        self: &Arc<Self>,
        hub: &Hub,
        id: &str,
        after: Option<String>,
        merge: bool,
    ) -> Result<(BoxStream<'static, Piece>, Reader), ApiError> {
        self.settle(hub, id).await?;
        // From the start: the `start` event, looked up by its id, then what follows it (so the
        // replay reads from the answer's first event rather than from the earliest kept).
        let (first, cursor) = match after {
            Some(after) => (None, Cursor::After(after)),
            None => match stored_update(hub, &start_id(id)).await? {
                Some(start) => (Some(start), Cursor::After(start_id(id))),
                None => (None, Cursor::Earliest),
            },
        };
        let selector = Selector::parse(&topic(id)).map_err(ApiError::internal)?;
        let request = SubscribeRequest {
            selectors: vec![selector.clone()],
            allowed_private: vec![selector],
            cursor,
            until_event_type: Some("end".to_owned()),
            hangup: None,
            direct: None,
        };
        let reader = self.reader(id);
        let deliveries = hub.deliveries(request).await.map_err(crate::error::subscribe_error)?;
        // If the answer's pump gives up on the store, its readers here are told to reconnect.
        let deliveries = match reader.running() {
            Some(running) => until_abandoned(deliveries.stream, Arc::clone(running)),
            None => deliveries.stream,
        };
        let first = stream::iter(first.map(Delivery::Update));
        let pieces = first.chain(deliveries).filter_map(|delivery| {
            std::future::ready(match delivery {
                Delivery::Update(update) => {
                    event_of(&update).map(|event| Piece::Event(Some(update.id().to_owned()), event))
                }
                other => Some(Piece::Frame(other.frame())),
            })
        });
        let pieces = if merge { merged(pieces.boxed()) } else { pieces.boxed() };
        Ok((pieces, reader))
    }
}

/// What is stored of answer `id` so far, in order (for an answer that runs, what it said up to
/// now).
pub(crate) async fn so_far(hub: &Hub, id: &str) -> Result<Vec<AnswerEvent>, ApiError> {
    const PAGE: usize = 1000;
    let store = hub.store();
    let Some(start) = store.find(&start_id(id)).await.map_err(store_unavailable)? else {
        return Ok(Vec::new());
    };
    let topic = topic(id);
    let (mut after, mut events) = (start - 1, Vec::new());
    loop {
        let page = store.read_after(after, PAGE).await.map_err(store_unavailable)?;
        let Some(last) = page.last() else { break };
        after = last.seq();
        let ours = page.iter().filter(|u| u.topics().first() == Some(&topic));
        events.extend(ours.filter_map(|u| event_of(u)));
        if matches!(events.last(), Some(AnswerEvent::End(_))) || page.len() < PAGE {
            break;
        }
    }
    Ok(events)
}

/// `deliveries`, cut short by a comment that says to reconnect if the answer's pump gives up
/// on the store.
fn until_abandoned(
    deliveries: BoxStream<'static, Delivery>,
    running: Arc<Running>,
) -> BoxStream<'static, Delivery> {
    stream::unfold(Some((deliveries, running)), |state| async move {
        let (mut deliveries, running) = state?;
        tokio::select! {
            biased;
            delivery = deliveries.next() => delivery.map(|d| (d, Some((deliveries, running)))),
            () = running.abandoned() => Some((Delivery::ReplayFailed, None)),
        }
    })
    .boxed()
}

/// Merges the deltas that are already waiting when the reader is ready for more: a reader that
/// keeps up gets every delta as it comes; a slow one gets fewer, larger events (the merged
/// event carries the last merged id, so resuming from it loses nothing) instead of falling
/// behind token by token. Only for protocols whose resume is by event id: one that numbers
/// its events (Responses) must see the same events on every read.
pub(crate) fn merged(pieces: BoxStream<'static, Piece>) -> BoxStream<'static, Piece> {
    pieces
        .ready_chunks(256)
        .flat_map(|batch| {
            let mut out: Vec<Piece> = Vec::with_capacity(batch.len());
            for piece in batch {
                match (out.last_mut(), piece) {
                    (
                        Some(Piece::Event(Some(id), AnswerEvent::Text(text))),
                        Piece::Event(Some(more_id), AnswerEvent::Text(more)),
                    ) => {
                        text.push_str(&more);
                        *id = more_id;
                    }
                    (_, piece) => out.push(piece),
                }
            }
            stream::iter(out)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: u64, text: &str) -> Piece {
        Piece::Event(Some(format!("#a.{n}")), AnswerEvent::Text(text.to_owned()))
    }

    #[tokio::test]
    async fn deltas_waiting_together_merge_under_the_last_id() {
        let waiting = vec![
            text(1, "a"),
            text(2, "b"),
            text(3, "c"),
            Piece::Event(Some("#a.usage".into()), AnswerEvent::Usage(Default::default())),
            text(5, "d"),
        ];
        let out: Vec<Piece> = merged(stream::iter(waiting).boxed()).collect().await;
        let described: Vec<String> = out
            .iter()
            .map(|p| match p {
                Piece::Event(id, AnswerEvent::Text(text)) => {
                    format!("{text}@{}", id.as_deref().unwrap())
                }
                Piece::Event(id, _) => id.clone().unwrap(),
                Piece::Frame(_) => "frame".to_owned(),
            })
            .collect();
        assert_eq!(described, ["abc@#a.3", "#a.usage", "d@#a.5"]);
    }

    #[test]
    fn an_event_id_names_its_answer_with_or_without_the_hubs_mark() {
        assert_eq!(answer_of("#abc.3"), "abc");
        assert_eq!(answer_of("abc.end"), "abc");
        assert_eq!(end_id("abc"), "#abc.end");
    }
}
