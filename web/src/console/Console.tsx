import { type FormEvent, useEffect, useRef, useState } from 'react';

import type { SseEvent } from '../lib/sse';
import { useTheme } from '../shared/theme';
import { limitedToSixStreams } from '../shared/transport';
import { HubSubscription, type Matching, type SubscriptionState } from './subscription';

const HUB = '/.well-known/mercure';
const MAX_EVENTS = 500;
const STORE = 'sluice.console.v1';

interface Received extends SseEvent {
  key: number;
  at: Date;
}

interface LogLine {
  key: number;
  at: Date;
  state: SubscriptionState;
  detail: string;
}

interface Saved {
  topics: string;
  matching: Matching;
  pubTopics: string;
  type: string;
}

const DEFAULTS: Saved = { topics: '*', matching: 'draft-07', pubTopics: 'https://example.com/books/1', type: '' };

function load(): Saved {
  try {
    return { ...DEFAULTS, ...JSON.parse(localStorage.getItem(STORE) ?? '{}') };
  } catch {
    return DEFAULTS;
  }
}

/** What each way of matching expects on a line, for the field's label. */
const MATCHER_HELP: Record<Matching, string> = {
  'draft-07': 'Topic selectors (one per line: a topic, a URI template such as /books/{id}, or *)',
  'draft-08-exact': 'Topics (one per line, compared exactly; * for all)',
  'draft-08-urlpattern': 'URL patterns (one per line, such as https://example.com/books/:id; * for all)',
};

/** Tokens stay in this tab only (sessionStorage), never in localStorage. */
function sessionValue(key: string): string {
  try {
    return sessionStorage.getItem(key) ?? '';
  } catch {
    return '';
  }
}

function setSessionValue(key: string, value: string): void {
  try {
    sessionStorage.setItem(key, value);
  } catch {
    // ignore
  }
}

function time(at: Date): string {
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}.${pad(at.getMilliseconds(), 3)}`;
}

function lines(text: string): string[] {
  return text
    .split(/\n|,/)
    .map((t) => t.trim())
    .filter(Boolean);
}

const STATE_DOT: Record<SubscriptionState | 'idle', string> = {
  idle: '',
  connecting: 'warn',
  open: 'ok',
  reconnecting: 'warn',
  closed: 'bad',
};

export function Console() {
  const theme = useTheme();
  const saved = useRef(load()).current;
  const [topics, setTopics] = useState(saved.topics);
  const [matching, setMatching] = useState<Matching>(saved.matching);
  const [subToken, setSubToken] = useState(() => sessionValue('sluice.console.subToken'));
  const [lastEventId, setLastEventId] = useState('');
  const [state, setState] = useState<SubscriptionState | 'idle'>('idle');
  const [detail, setDetail] = useState('');
  const [opens, setOpens] = useState(0);
  const [log, setLog] = useState<LogLine[]>([]);
  const [events, setEvents] = useState<Received[]>([]);
  const subscription = useRef<HubSubscription | null>(null);
  const counter = useRef(0);

  const [pubTopics, setPubTopics] = useState(saved.pubTopics);
  const [pubData, setPubData] = useState('{"hello": "world"}');
  const [pubType, setPubType] = useState(saved.type);
  const [pubId, setPubId] = useState('');
  const [pubPrivate, setPubPrivate] = useState(false);
  const [pubToken, setPubToken] = useState(() => sessionValue('sluice.console.pubToken'));
  const [pubResult, setPubResult] = useState<{ ok: boolean; text: string } | null>(null);
  const [devToken, setDevToken] = useState(false);
  const [publishing, setPublishing] = useState(false);

  useEffect(() => {
    try {
      localStorage.setItem(STORE, JSON.stringify({ topics, matching, pubTopics, type: pubType } satisfies Saved));
    } catch {
      // storage unavailable: the form is not remembered
    }
  }, [topics, matching, pubTopics, pubType]);
  useEffect(() => setSessionValue('sluice.console.subToken', subToken), [subToken]);
  useEffect(() => setSessionValue('sluice.console.pubToken', pubToken), [pubToken]);
  // `sluice serve --dev` offers its publisher token to a console opened on its own machine.
  useEffect(() => {
    if (pubToken) return;
    fetch('/api/dev/token', { cache: 'no-store' })
      .then((response) => (response.ok ? response.json() : null))
      .then((body: { publisher_token?: string } | null) => {
        if (body?.publisher_token) {
          setPubToken((typed) => typed || body.publisher_token || '');
          setDevToken(true);
        }
      })
      .catch(() => {});
    // Asked once, when the console opens.
  }, []);
  useEffect(() => () => subscription.current?.close(), []);

  const subscribe = (e: FormEvent) => {
    e.preventDefault();
    subscription.current?.close();
    const selectors = lines(topics);
    if (selectors.length === 0) return;
    setOpens(0);
    setLog([]);
    subscription.current = new HubSubscription(HUB, selectors, matching, subToken.trim(), lastEventId.trim(), {
      onEvent: (event) => {
        const received = { ...event, key: ++counter.current, at: new Date() };
        setEvents((list) => [received, ...list].slice(0, MAX_EVENTS));
      },
      onState: (next, why) => {
        setState(next);
        setDetail(why);
        if (next === 'open') setOpens((n) => n + 1);
        setLog((l) => [{ key: ++counter.current, at: new Date(), state: next, detail: why }, ...l].slice(0, 50));
      },
    });
  };

  const unsubscribe = () => {
    subscription.current?.close();
    subscription.current = null;
  };

  const publish = async (e: FormEvent) => {
    e.preventDefault();
    setPublishing(true);
    setPubResult(null);
    const form = new URLSearchParams();
    for (const topic of lines(pubTopics)) form.append('topic', topic);
    form.set('data', pubData);
    if (pubType.trim()) form.set('type', pubType.trim());
    if (pubId.trim()) form.set('id', pubId.trim());
    if (pubPrivate) form.set('private', 'on');
    const headers: Record<string, string> = { 'Content-Type': 'application/x-www-form-urlencoded' };
    if (pubToken.trim()) headers.Authorization = `Bearer ${pubToken.trim()}`;
    try {
      const response = await fetch(HUB, { method: 'POST', headers, body: form });
      const text = await response.text();
      if (response.ok) {
        setPubResult({ ok: true, text: `Published with id ${text}` });
      } else {
        let message = text;
        try {
          message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? text;
        } catch {
          // not JSON
        }
        setPubResult({ ok: false, text: `${response.status} ${response.statusText}: ${message}` });
      }
    } catch (error) {
      setPubResult({ ok: false, text: `The hub could not be reached: ${String(error)}` });
    } finally {
      setPublishing(false);
    }
  };

  const active = state === 'connecting' || state === 'open' || state === 'reconnecting';

  return (
    <div className="console">
      <header className="topbar">
        <span className="brand">Sluice</span>
        <h1>Hub console</h1>
        <span className="spacer" />
        <a href="/">Chat</a>
        <button type="button" className="ghost icon" onClick={theme.toggle} aria-label={theme.dark ? 'Switch to light theme' : 'Switch to dark theme'}>
          {theme.dark ? '☀' : '☾'}
        </button>
      </header>

      {limitedToSixStreams() && (
        <p className="banner warn" role="status" data-testid="http1-notice">
          This page came over HTTP/1.1: a browser keeps at most six connections per site, all tabs together, so a seventh
          live stream waits for one to close. Serve Sluice over HTTPS (<code>--tls-cert</code>, <code>--tls-self-signed</code>)
          for HTTP/2, where every stream shares one connection.
        </p>
      )}

      <div className="panels">
        <section className="panel" aria-labelledby="sub-title">
          <h2 id="sub-title">Subscribe</h2>
          <form onSubmit={subscribe} className="stack">
            <label className="field">
              <span>Protocol</span>
              <select value={matching} onChange={(e) => setMatching(e.target.value as Matching)} data-testid="sub-matching">
                <option value="draft-07">Mercure draft-07: topic=</option>
                <option value="draft-08-exact">Mercure draft-08: match= (exact)</option>
                <option value="draft-08-urlpattern">Mercure draft-08: match_urlpattern=</option>
              </select>
            </label>
            <label className="field">
              <span>{MATCHER_HELP[matching]}</span>
              <textarea rows={3} value={topics} onChange={(e) => setTopics(e.target.value)} data-testid="sub-topics" />
            </label>
            <label className="field">
              <span>
                Subscriber token (optional: needed for private updates;{' '}
                {matching === 'draft-07' ? 'a JWT with a mercure claim' : 'an access token, sluice token --access'})
              </span>
              <input value={subToken} onChange={(e) => setSubToken(e.target.value)} className="mono" spellCheck={false} autoComplete="off" data-testid="sub-token" />
            </label>
            <label className="field">
              <span>Last-Event-ID (optional: replay what came after it; “earliest” for all)</span>
              <input value={lastEventId} onChange={(e) => setLastEventId(e.target.value)} className="mono" spellCheck={false} />
            </label>
            <div className="row">
              <button type="submit" className="primary" data-testid="subscribe">
                {active ? 'Resubscribe' : 'Subscribe'}
              </button>
              <button type="button" onClick={unsubscribe} disabled={!active}>
                Unsubscribe
              </button>
            </div>
          </form>

          <div className="connection" aria-live="polite">
            <span className="badge" data-testid="connection-state" data-state={state}>
              <span className={`dot ${STATE_DOT[state]}`} />
              {state}
            </span>
            <span className="muted">
              {opens} connection{opens === 1 ? '' : 's'}, {Math.max(0, opens - 1)} reconnect{opens === 2 ? '' : 's'}
            </span>
            {detail && <span className="muted small">{detail}</span>}
          </div>
          {log.length > 0 && (
            <details className="log">
              <summary>Connection log</summary>
              <ul>
                {log.map((l) => (
                  <li key={l.key}>
                    <span className="mono muted">{time(l.at)}</span> {l.state} {l.detail && <span className="muted">— {l.detail}</span>}
                  </li>
                ))}
              </ul>
            </details>
          )}
        </section>

        <section className="panel" aria-labelledby="pub-title">
          <h2 id="pub-title">Publish</h2>
          <form onSubmit={publish} className="stack">
            <label className="field">
              <span>Topics (one per line; the first is canonical)</span>
              <textarea rows={2} value={pubTopics} onChange={(e) => setPubTopics(e.target.value)} data-testid="pub-topics" />
            </label>
            <label className="field">
              <span>Data</span>
              <textarea rows={3} value={pubData} onChange={(e) => setPubData(e.target.value)} className="mono" data-testid="pub-data" />
            </label>
            <div className="row wrap">
              <label className="field">
                <span>Type (optional)</span>
                <input value={pubType} onChange={(e) => setPubType(e.target.value)} data-testid="pub-type" />
              </label>
              <label className="field">
                <span>Id (optional)</span>
                <input value={pubId} onChange={(e) => setPubId(e.target.value)} className="mono" data-testid="pub-id" />
              </label>
            </div>
            <label className="field">
              <span>Publisher token (a draft-07 JWT or a draft-08 access token)</span>
              <input value={pubToken} onChange={(e) => setPubToken(e.target.value)} className="mono" spellCheck={false} autoComplete="off" data-testid="pub-token" />
              {devToken && <small data-testid="dev-token">Filled in by development mode (sluice serve --dev)</small>}
            </label>
            <div className="row">
              <label className="check">
                <input type="checkbox" checked={pubPrivate} onChange={(e) => setPubPrivate(e.target.checked)} /> Private
              </label>
              <span className="spacer" />
              <button type="submit" className="primary" disabled={publishing || lines(pubTopics).length === 0} data-testid="publish">
                Publish
              </button>
            </div>
            {pubResult && (
              <p className={`banner ${pubResult.ok ? 'ok' : 'danger'}`} role="status" data-testid="pub-result">
                {pubResult.text}
              </p>
            )}
          </form>
        </section>
      </div>

      <section className="panel events-panel" aria-labelledby="events-title">
        <div className="row">
          <h2 id="events-title">
            Events <span className="muted">({events.length})</span>
          </h2>
          <span className="spacer" />
          <button type="button" onClick={() => setEvents([])} disabled={events.length === 0}>
            Clear
          </button>
        </div>
        {events.length === 0 ? (
          <p className="muted">{active ? 'Waiting for updates…' : 'Subscribe to see updates as they arrive.'}</p>
        ) : (
          <div className="table-wrap">
            <table className="events" data-testid="events">
              <thead>
                <tr>
                  <th scope="col">Arrived</th>
                  <th scope="col">Id</th>
                  <th scope="col">Type</th>
                  <th scope="col">Data</th>
                </tr>
              </thead>
              <tbody>
                {events.map((e) => (
                  <tr key={e.key} data-testid="event">
                    <td className="mono nowrap">{time(e.at)}</td>
                    <td className="mono id" data-testid="event-id">{e.id}</td>
                    <td data-testid="event-type">{e.type}</td>
                    <td>
                      <pre className="data" data-testid="event-data">{e.data}</pre>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </div>
  );
}
