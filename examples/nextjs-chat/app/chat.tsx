'use client';

import { useActionState, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';

import { type Answer, getServerSnapshot, getSnapshot, showEverywhere, subscribe } from './answer-store';

/**
 * What this tab has received of an answer: the text and the id of the last event in it,
 * saved together in sessionStorage after every event. sessionStorage belongs to the tab and
 * survives a reload, so a reloaded page shows the text it had and asks Sluice for the events
 * after that id: nothing is lost and nothing comes twice.
 */
interface Progress {
  answerId: string;
  text: string;
  lastEventId: string | null;
  /** The `end` event's finish_reason (stop, length, cancelled, error); null while streaming. */
  finish: string | null;
  error: string | null;
  tokens: number | null;
}

const PROGRESS = 'sluice-chat:progress';

function restore(answer: Answer): Progress {
  try {
    const saved = JSON.parse(sessionStorage.getItem(PROGRESS) ?? 'null') as Progress | null;
    if (saved?.answerId === answer.id) return saved;
  } catch {
    // nothing saved, or something unreadable: start from the answer's first event
  }
  return { answerId: answer.id, text: '', lastEventId: null, finish: null, error: null, tokens: null };
}

/** Follows `answer` with one EventSource until its `end`, and returns what has arrived. */
function useAnswer(answer: Answer | null): Progress | null {
  const [progress, setProgress] = useState(() => answer && restore(answer));
  const latest = useRef(progress);

  useEffect(() => {
    if (!answer || !latest.current || latest.current.finish) return;
    const save = (change: Partial<Progress>, { keep = true } = {}) => {
      const next = { ...latest.current!, ...change };
      latest.current = next;
      if (keep) sessionStorage.setItem(PROGRESS, JSON.stringify(next));
      setProgress(next);
    };

    // A new EventSource cannot send a Last-Event-ID header, so the id we resume after goes
    // in the query. On its own reconnects (a dropped connection) the browser sends the
    // header with the last id it saw, and Sluice prefers it.
    const url = new URL(answer.eventsUrl, location.href);
    if (latest.current.lastEventId) url.searchParams.set('lastEventID', latest.current.lastEventId);
    const source = new EventSource(url);

    source.addEventListener('delta', (event) => {
      const { text } = JSON.parse(event.data);
      save({ text: latest.current!.text + text, lastEventId: event.lastEventId });
    });
    source.addEventListener('usage', (event) => {
      const usage = JSON.parse(event.data);
      save({ tokens: usage.completion_tokens ?? null, lastEventId: event.lastEventId });
    });
    source.addEventListener('end', (event) => {
      source.close();
      save({ finish: JSON.parse(event.data).finish_reason, lastEventId: event.lastEventId });
    });
    source.addEventListener('error', (event) => {
      if (event instanceof MessageEvent) {
        // The model failed mid-answer (`end` follows).
        save({ error: JSON.parse(event.data).message, lastEventId: event.lastEventId });
      } else if (source.readyState === EventSource.CLOSED) {
        // Refused for good (404: Sluice no longer has this answer). Not kept: a page being
        // reloaded sees its connection closed the same way, and must try again after.
        save({ finish: 'gone', error: 'This answer is no longer available.' }, { keep: false });
      }
      // Otherwise the connection dropped and the browser is already reconnecting.
    });
    return () => source.close();
  }, [answer]);

  return progress;
}

async function startAnswer(_previous: string | null, form: FormData): Promise<string | null> {
  let response: Response;
  try {
    response = await fetch('/api/chat', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: form.get('prompt') }),
    });
  } catch {
    return 'The server cannot be reached.';
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) return body.error ?? `The answer could not be started (${response.status}).`;
  showEverywhere(body as Answer);
  return null;
}

function describe(progress: Progress): string {
  const tokens = progress.tokens === null ? '' : ` · ${progress.tokens} tokens`;
  switch (progress.finish) {
    case null:
      return progress.text ? 'Streaming…' : 'Waiting for the first token…';
    case 'stop':
      return `Done${tokens}`;
    case 'cancelled':
      return `Stopped${tokens}`;
    case 'length':
      return `Cut at the length limit${tokens}`;
    default:
      return progress.error ?? `Ended (${progress.finish})`;
  }
}

/** The prompt box and the answer of the moment, the same in every tab. */
export function Chat() {
  const stored = useSyncExternalStore(subscribe, getSnapshot, getServerSnapshot);
  const answer = useMemo(() => (stored ? (JSON.parse(stored) as Answer) : null), [stored]);
  // A new answer mounts a new Conversation, whose state starts from that answer.
  return <Conversation key={answer?.id ?? 'none'} answer={answer} />;
}

function Conversation({ answer }: { answer: Answer | null }) {
  const progress = useAnswer(answer);
  const streaming = answer !== null && progress !== null && progress.finish === null;
  const [error, start, starting] = useActionState(startAnswer, null);
  const [stopping, setStopping] = useState(false);

  async function stop() {
    setStopping(true);
    // The stream then ends with `end` (cancelled), in this tab and in every other one.
    const response = await fetch(answer!.cancelUrl, { method: 'POST' }).catch(() => null);
    if (!response?.ok) setStopping(false);
  }

  return (
    <>
      <form action={start} className="prompt">
        <textarea
          name="prompt"
          aria-label="Prompt"
          placeholder="Ask something…"
          rows={3}
          required
          disabled={streaming}
          onKeyDown={(event) => {
            if (event.key === 'Enter' && !event.shiftKey) {
              event.preventDefault();
              event.currentTarget.form?.requestSubmit();
            }
          }}
        />
        {streaming ? (
          <button type="button" onClick={stop} disabled={stopping}>
            {stopping ? 'Stopping…' : 'Stop'}
          </button>
        ) : (
          <button type="submit" disabled={starting}>
            {starting ? 'Starting…' : 'Send'}
          </button>
        )}
      </form>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {answer && progress && (
        <article className="answer" data-status={progress.finish ?? 'streaming'}>
          <p className="question">{answer.prompt}</p>
          <p className="text">
            {progress.text}
            {streaming && <span className="caret" aria-hidden="true" />}
          </p>
          <p className="status" aria-live="polite">
            {describe(progress)}
          </p>
        </article>
      )}
    </>
  );
}
