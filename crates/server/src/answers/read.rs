//! Reading an answer back from the hub: from its start or from a cursor, replayed then live,
//! ending after its `end`; or, for the protocols that answer with one object, what is stored
//! of it so far.

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use sluice_hub::{Cursor, Delivery, Hub, Selector, SubscribeRequest, Update, queue};

use super::events::AnswerEvent;
use super::{Answers, Reader, Running, Started, answer_of, end_id, start_id, topic};
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
        let reader = self.reader(id);
        let pieces = self.pieces(hub, id, after, reader.running().cloned()).await?;
        let pieces = if merge { merged(pieces) } else { pieces };
        Ok((pieces, reader))
    }

    /// Follows a new answer as the request that started it: the events its pump hands over
    /// as it stores them, without the hub's fan-out in between (a thread and a queue per
    /// event); then, if that feed stops before `end` (this reader fell behind, or the store
    /// refused an event), on from the hub after the last event fed, as [`Answers::follow`]
    /// reads. Either way every event arrives once, in order, under the id a later reader
    /// sees.
    pub(crate) fn read_new(
        self: &Arc<Self>,
        hub: &Hub,
        started: Started,
        merge: bool,
    ) -> (BoxStream<'static, Piece>, Reader) {
        let reader = self.reader(&started.id);
        let fallback = Fallback {
            answers: Arc::clone(self),
            hub: hub.clone(),
            id: started.id,
            running: reader.running().cloned(),
        };
        let source = Source::Fed { feed: started.feed, last: None };
        let pieces = stream::unfold((source, fallback), |(mut source, fallback)| async move {
            loop {
                source = match source {
                    Source::Fed { mut feed, mut last } => match feed.recv().await {
                        Some(piece) => {
                            let mut ended = false;
                            if let Piece::Event(Some(fed), event) = &piece {
                                ended = matches!(event, AnswerEvent::End(_));
                                last.get_or_insert_default().clone_from(fed);
                            }
                            let next =
                                if ended { Source::Done } else { Source::Fed { feed, last } };
                            return Some((piece, (next, fallback)));
                        }
                        None => match fallback.pieces_after(last).await {
                            Ok(pieces) => Source::Hub(pieces),
                            Err(error) => {
                                tracing::debug!(?error, "a creator could not read on from the hub");
                                let failed = Piece::Frame(Delivery::ReplayFailed.frame());
                                return Some((failed, (Source::Done, fallback)));
                            }
                        },
                    },
                    Source::Hub(mut pieces) => {
                        let piece = pieces.next().await?;
                        return Some((piece, (Source::Hub(pieces), fallback)));
                    }
                    Source::Done => return None,
                }
            }
        });
        let pieces = if merge { merged(pieces.boxed()) } else { pieces.boxed() };
        (pieces, reader)
    }

    /// Answer `id` after event `after` (or from its start), replayed then live, ending after
    /// `end`; cut short if the pump, running here, gives up on the store. An answer that
    /// nothing produces any more is ended first.
    async fn pieces(
        &self,
        hub: &Hub,
        id: &str,
        after: Option<String>,
        running: Option<Arc<Running>>,
    ) -> Result<BoxStream<'static, Piece>, ApiError> {
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
        let deliveries = hub.deliveries(request).await.map_err(crate::error::subscribe_error)?;
        // If the answer's pump gives up on the store, its readers here are told to reconnect.
        let deliveries = match running {
            Some(running) => until_abandoned(deliveries.stream, running),
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
        Ok(pieces.boxed())
    }
}

/// What a new answer's creator needs to read on from the hub when its feed stops short.
struct Fallback {
    answers: Arc<Answers>,
    hub: Hub,
    id: String,
    running: Option<Arc<Running>>,
}

impl Fallback {
    async fn pieces_after(
        &self,
        last: Option<String>,
    ) -> Result<BoxStream<'static, Piece>, ApiError> {
        self.answers.pieces(&self.hub, &self.id, last, self.running.clone()).await
    }
}

/// Where a new answer's creator reads it from ([`Answers::read_new`]).
enum Source {
    /// The pump's feed, and the id of the last event it gave.
    Fed { feed: queue::Receiver<Piece>, last: Option<String> },
    /// The hub, after the last event fed.
    Hub(BoxStream<'static, Piece>),
    /// Past `end`.
    Done,
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
    use serde_json::Value;
    use sluice_hub::{Fanout, HubConfig, MemoryStore};
    use sluice_llm::{Delta, DeltaStream, ProviderError};
    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    use super::*;
    use crate::answers::{Kind, NewAnswer, Unread};

    /// A hub over a memory store, whose subscribers (and answers' creators) may have
    /// `queue_capacity` updates waiting.
    fn hub(queue_capacity: usize) -> Hub {
        let fanout = Fanout::new();
        let store = Arc::new(MemoryStore::new(10_000, fanout.listener()));
        Hub::new(store, fanout, HubConfig { queue_capacity, ..HubConfig::default() })
    }

    fn new_answer() -> NewAnswer {
        NewAnswer {
            kind: Kind::Generation,
            start: Value::Null,
            unread: Unread::RunOn,
            id: None,
            key: None,
        }
    }

    /// An upstream the test speaks for: what it sends, the answer's deltas say.
    fn upstream() -> (UnboundedSender<Result<Delta, ProviderError>>, DeltaStream) {
        let (sender, receiver) = unbounded_channel();
        let deltas = stream::unfold(receiver, |mut r| async { Some((r.recv().await?, r)) });
        (sender, deltas.boxed())
    }

    fn text(n: u64, text: &str) -> Piece {
        Piece::Event(Some(format!("#a.{n}")), AnswerEvent::Text(text.to_owned()))
    }

    /// Each piece as `id kind` (`text:…` for text), or `frame`.
    fn described(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .map(|piece| match piece {
                Piece::Event(id, AnswerEvent::Text(text)) => format!("{id:?} text:{text}"),
                Piece::Event(id, event) => format!("{id:?} {}", event.event_type()),
                Piece::Frame(_) => "frame".to_owned(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_creator_that_keeps_up_is_fed_without_subscribing_to_the_hub() {
        let (hub, answers) = (hub(16), Arc::new(Answers::default()));
        let (upstream, deltas) = upstream();
        let started = answers.start(&hub, deltas, new_answer()).await.unwrap();
        let id = started.id.clone();
        let (mut creator, _reader) = answers.read_new(&hub, started, false);
        upstream.send(Ok(Delta::Text("hello".to_owned()))).unwrap();
        let first_two = vec![creator.next().await.unwrap(), creator.next().await.unwrap()];
        assert_eq!(
            described(&first_two),
            [format!("Some(\"#{id}.start\") start"), format!("Some(\"#{id}.0\") text:hello")]
        );
        assert_eq!(hub.subscriber_count(), 0, "the creator reads its feed, not the hub");
        drop(upstream);
        let rest = described(&creator.collect::<Vec<_>>().await);
        assert_eq!(
            rest,
            [format!("Some(\"#{id}.usage\") usage"), format!("Some(\"#{id}.end\") end")]
        );
    }

    #[tokio::test]
    async fn the_upstream_is_asked_as_the_answer_starts_and_what_it_said_at_once_is_kept() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let (hub, answers) = (hub(16), Arc::new(Answers::default()));
        let (upstream, later) = upstream();
        // A provider sends its request on the stream's first poll; this one then has a first
        // delta ready at once, and the rest later.
        let asked = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&asked);
        let deltas = stream::once(async move {
            flag.store(true, Ordering::SeqCst);
            stream::iter([Ok(Delta::Text("at once".to_owned()))]).chain(later)
        })
        .flatten()
        .boxed();
        let started = answers.start(&hub, deltas, new_answer()).await.unwrap();
        // The test's runtime has one thread and has not yet run the pump's task.
        assert!(asked.load(Ordering::SeqCst), "asked before its creator writes anything");
        let id = started.id.clone();
        let (mut creator, _reader) = answers.read_new(&hub, started, false);
        let first_two = vec![creator.next().await.unwrap(), creator.next().await.unwrap()];
        assert_eq!(
            described(&first_two),
            [format!("Some(\"#{id}.start\") start"), format!("Some(\"#{id}.0\") text:at once")]
        );
        upstream.send(Ok(Delta::Text("later".to_owned()))).unwrap();
        let third = creator.next().await.unwrap();
        assert_eq!(described(&[third]), [format!("Some(\"#{id}.1\") text:later")]);
    }

    #[tokio::test]
    async fn a_creator_that_falls_behind_reads_on_from_the_hub_and_misses_nothing() {
        // Room for two events waiting: the creator, not reading until the answer has ended,
        // is fed the first two and reads the other 50 from the hub.
        let (hub, answers) = (hub(2), Arc::new(Answers::default()));
        let deltas = stream::iter((0..50).map(|n| Ok(Delta::Text(format!("{n} ")))));
        let started = answers.start(&hub, deltas.boxed(), new_answer()).await.unwrap();
        let id = started.id.clone();
        let (creator, _reader) = answers.read_new(&hub, started, false);
        while !answers.ended(&hub, &id).await.unwrap() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let creator = described(&creator.collect::<Vec<_>>().await);
        let (later, _reader) = answers.follow(&hub, &id, None, false).await.unwrap();
        let later = described(&later.collect::<Vec<_>>().await);
        assert_eq!(creator.len(), 53, "start, 50 texts, usage, end: {creator:?}");
        assert_eq!(creator, later, "the creator reads what any later reader reads");
    }

    #[tokio::test]
    async fn a_creator_is_told_to_reconnect_as_soon_as_the_store_fails() {
        let (hub, answers) = (hub(16), Arc::new(Answers::default()));
        let (upstream, deltas) = upstream();
        let started = answers.start(&hub, deltas, new_answer()).await.unwrap();
        let id = started.id.clone();
        let (mut creator, _reader) = answers.read_new(&hub, started, false);
        upstream.send(Ok(Delta::Text("stored".to_owned()))).unwrap();
        assert_eq!(
            described(&[creator.next().await.unwrap(), creator.next().await.unwrap()]).len(),
            2
        );
        hub.store().close().await.unwrap();
        upstream.send(Ok(Delta::Text("refused".to_owned()))).unwrap();
        assert!(matches!(creator.next().await, Some(Piece::Frame(_))), "a comment saying why");
        // Told while the pump still tries to end the answer, not once it gives up.
        assert!(answers.running.lock().unwrap().contains_key(&id));
        assert!(creator.next().await.is_none());
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
