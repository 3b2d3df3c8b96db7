import { type KeyboardEvent, memo, useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';

import {
  type ChatMessage,
  type GenerationSnapshot,
  GenerationHttpError,
  cancelGeneration,
  generationSpeed,
} from '../lib/generation';
import { handleCopyClick, renderMarkdown } from '../lib/markdown';
import { useGeneration } from '../lib/useGeneration';
import { useTheme } from '../shared/theme';
import { LiveChannel, awaitAnswer, holdAnswer } from './live';
import {
  CONVERSATIONS_KEY,
  type ChatEntry,
  type Conversation,
  type Settings,
  type StartFailure,
  applySnapshot,
  loadActive,
  loadConversations,
  loadSettings,
  mergeConversations,
  newConversation,
  newId,
  saveActive,
  saveConversations,
  saveSettings,
  titleFrom,
} from './store';

interface Model {
  id: string;
  owned_by?: string;
}

/** Where the list sits relative to its bottom, within this many pixels counts as "at it". */
const STICK_PX = 48;

function failureOf(error: unknown): StartFailure {
  if (error instanceof GenerationHttpError) {
    if (error.status === 0) return { kind: 'network', message: error.message, status: 0, retryAt: null };
    const retryAt = error.rateLimited ? Date.now() + (error.retryAfter ?? 1) * 1000 : null;
    return { kind: error.rateLimited ? 'rate_limit' : 'http', message: error.message, status: error.status, retryAt };
  }
  return { kind: 'network', message: String(error), status: 0, retryAt: null };
}

/** A message as a sentence: capitalized, with a full stop. */
function sentence(text: string): string {
  const t = text.trim();
  if (!t) return t;
  const capital = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

function useNow(active: boolean, every = 500): number {
  const [now, setNow] = useState(Date.now);
  useEffect(() => {
    if (!active) return undefined;
    const timer = setInterval(() => setNow(Date.now()), every);
    return () => clearInterval(timer);
  }, [active, every]);
  return now;
}

export function App() {
  const theme = useTheme();
  const [conversations, setConversations] = useState<Conversation[]>(() =>
    // A request cut short by a reload never got its answer id: say so rather than wait forever.
    loadConversations().map((c) => ({
      ...c,
      messages: c.messages.map((m) =>
        m.pending && !m.gen
          ? { ...m, pending: false, failure: { kind: 'network', message: 'The page was left before the answer started.', status: 0, retryAt: null } }
          : m,
      ),
    })),
  );
  const [activeId, setActiveId] = useState<string | null>(() => {
    const stored = loadActive();
    const list = loadConversations();
    return list.some((c) => c.id === stored) ? stored : (list[0]?.id ?? null);
  });
  const [settings, setSettings] = useState<Settings>(loadSettings);
  const [models, setModels] = useState<Model[] | null>(null);
  const [modelsError, setModelsError] = useState<string | null>(null);
  const [draft, setDraft] = useState('');
  const [editing, setEditing] = useState<{ id: string; text: string } | null>(null);
  const [showSettings, setShowSettings] = useState(false);
  const [showSidebar, setShowSidebar] = useState(false);
  const auth = useMemo<Record<string, string>>(
    (): Record<string, string> => {
      const key = settings.apiKey.trim();
      return key ? { Authorization: `Bearer ${key}` } : {};
    },
    [settings.apiKey],
  );
  const gen = useGeneration({ headers: auth });

  const listRef = useRef(conversations);
  listRef.current = conversations;
  /** The answer message waiting for its id (between the click and the server's 201). */
  const pendingAnswer = useRef<string | null>(null);
  /** Resolvers of the answers this tab holds the lock of, called when they end. */
  const finishers = useRef(new Map<string, () => void>());
  /** Answers another tab follows, that this tab waits to take over. */
  const waiting = useRef(new Map<string, AbortController>());
  const takeovers = useRef<string[]>([]);
  const [takeoverTick, setTakeoverTick] = useState(0);
  const channel = useRef<LiveChannel | null>(null);
  const composer = useRef<HTMLTextAreaElement>(null);

  const active = conversations.find((c) => c.id === activeId) ?? null;

  // Persist.
  useEffect(() => saveConversations(conversations), [conversations]);
  useEffect(() => saveSettings(settings), [settings]);
  useEffect(() => {
    if (activeId) saveActive(activeId);
  }, [activeId]);

  // Models for the picker.
  useEffect(() => {
    let live = true;
    setModelsError(null);
    fetch('/v1/models', { headers: auth })
      .then(async (r) => {
        if (r.status === 401) throw new Error('the server wants an API key: set one in Settings');
        if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
        return (await r.json()) as { data: Model[] };
      })
      .then((body) => {
        if (!live) return;
        setModels(body.data);
        setSettings((s) => (body.data.some((m) => m.id === s.model) ? s : { ...s, model: body.data[0]?.id ?? '' }));
      })
      .catch((e: unknown) => live && setModelsError(e instanceof Error ? e.message : String(e)));
    return () => {
      live = false;
    };
  }, [auth]);

  /** Takes over an answer once no other tab follows it (at once when none does). */
  const waitFor = useCallback((answerId: string) => {
    if (waiting.current.has(answerId) || finishers.current.has(answerId)) return;
    const abort = new AbortController();
    waiting.current.set(answerId, abort);
    awaitAnswer(answerId, abort.signal, () => {
      waiting.current.delete(answerId);
      return new Promise<void>((resolve) => {
        finishers.current.set(answerId, resolve);
        takeovers.current.push(answerId);
        setTakeoverTick((t) => t + 1);
      });
    });
  }, []);

  const finished = useCallback((answerId: string) => {
    waiting.current.get(answerId)?.abort();
    waiting.current.delete(answerId);
    const finish = finishers.current.get(answerId);
    finishers.current.delete(answerId);
    finish?.();
  }, []);

  // Other tabs' writes: their list, and answers to take over if their tab goes away.
  useEffect(() => {
    const onStorage = (e: StorageEvent) => {
      if (e.key !== CONVERSATIONS_KEY || e.newValue === null) return;
      try {
        const remote = JSON.parse(e.newValue) as Conversation[];
        setConversations((local) => mergeConversations(local, remote));
        for (const c of remote) for (const m of c.messages) if (m.gen?.status === 'streaming') waitFor(m.gen.id);
      } catch {
        // a broken value: keep ours
      }
    };
    addEventListener('storage', onStorage);
    return () => removeEventListener('storage', onStorage);
  }, [waitFor]);

  // Tabs: snapshots from the tab that follows an answer.
  useEffect(() => {
    channel.current = new LiveChannel((snapshot) => {
      setConversations((list) => applySnapshot(list, snapshot));
      if (snapshot.status === 'done') finished(snapshot.id);
      else waitFor(snapshot.id);
    });
    // Answers left running by a reload (or another tab): follow them, once each.
    for (const c of listRef.current) {
      for (const m of c.messages) if (m.gen?.status === 'streaming') waitFor(m.gen.id);
    }
    return () => channel.current?.close();
  }, [finished, waitFor]);

  // Resume the answers this tab has taken over, one at a time.
  useEffect(() => {
    if (gen.busy) return;
    while (takeovers.current.length > 0) {
      const answerId = takeovers.current.shift()!;
      const entry = listRef.current.flatMap((c) => c.messages).find((m) => m.gen?.id === answerId);
      if (entry?.gen && entry.gen.status === 'streaming') {
        gen.resume(entry.gen);
        return;
      }
      finished(answerId);
    }
  }, [gen.busy, gen.resume, takeoverTick, finished]);

  // The answer this tab follows: into the conversation, to the other tabs.
  const snapshot = gen.snapshot;
  useEffect(() => {
    if (!snapshot) return;
    setConversations((list) => {
      let next = applySnapshot(list, snapshot);
      const pending = pendingAnswer.current;
      if (next === list && pending !== null) {
        next = list.map((c) => ({
          ...c,
          messages: c.messages.map((m) => (m.id === pending && !m.gen ? { ...m, gen: snapshot, content: snapshot.text, pending: false } : m)),
        }));
      }
      return next;
    });
    channel.current?.post(snapshot);
    if (snapshot.status === 'done') finished(snapshot.id);
  }, [snapshot, finished]);

  const updateConversation = useCallback((id: string, change: (c: Conversation) => Conversation) => {
    setConversations((list) => list.map((c) => (c.id === id ? change(c) : c)));
  }, []);

  const running = useMemo(() => {
    for (const c of conversations) {
      for (const m of c.messages) if (m.pending || m.gen?.status === 'streaming') return { conversation: c, entry: m };
    }
    return null;
  }, [conversations]);
  const activeRunning = running !== null && running.conversation.id === activeId;

  /** Sends `prompt` in the active conversation after its first `keep` messages. */
  const send = useCallback(
    async (prompt: string, keep?: number) => {
      const text = prompt.trim();
      if (!text || gen.busy || running !== null || !settings.model) return;
      let conversation = listRef.current.find((c) => c.id === activeId);
      if (!conversation) {
        conversation = newConversation();
        const created = conversation;
        setConversations((list) => [created, ...list]);
        setActiveId(created.id);
      }
      const history = conversation.messages.slice(0, keep ?? conversation.messages.length);
      const user: ChatEntry = { id: newId(), role: 'user', content: text };
      const answer: ChatEntry = { id: newId(), role: 'assistant', content: '', model: settings.model, pending: true };
      const conversationId = conversation.id;
      updateConversation(conversationId, (c) => ({
        ...c,
        title: history.length === 0 ? titleFrom(text) : c.title,
        updatedAt: Date.now(),
        messages: [...history, user, answer],
      }));
      const messages: ChatMessage[] = [];
      if (settings.system.trim()) messages.push({ role: 'system', content: settings.system.trim() });
      for (const m of history) {
        if (m.role === 'assistant' && (m.failure || !m.content)) continue;
        messages.push({ role: m.role, content: m.content });
      }
      messages.push({ role: 'user', content: text });
      pendingAnswer.current = answer.id;
      try {
        const started = await gen.start({ model: settings.model, temperature: settings.temperature, messages });
        const done = new Promise<void>((resolve) => finishers.current.set(started.id, resolve));
        holdAnswer(started.id, done);
        updateConversation(conversationId, (c) => ({
          ...c,
          messages: c.messages.map((m) => (m.id === answer.id && !m.gen ? { ...m, gen: started, pending: false } : m)),
        }));
      } catch (error) {
        const failure = failureOf(error);
        updateConversation(conversationId, (c) => ({
          ...c,
          messages: c.messages.map((m) => (m.id === answer.id ? { ...m, pending: false, failure } : m)),
        }));
      } finally {
        pendingAnswer.current = null;
      }
    },
    [gen, running, settings, activeId, updateConversation],
  );

  const stop = useCallback(() => {
    if (!running) return;
    if (gen.busy && (running.entry.pending || gen.snapshot?.id === running.entry.gen?.id)) {
      void gen.cancel().catch(() => undefined);
    } else if (running.entry.gen) {
      // Another tab follows it: stop it on the server all the same.
      void cancelGeneration(running.entry.gen.cancelUrl, { headers: auth }).catch(() => undefined);
    }
    composer.current?.focus();
  }, [gen, running, auth]);

  // Escape stops the answer, wherever the focus is (except while editing a message).
  useEffect(() => {
    const onKey = (e: globalThis.KeyboardEvent) => {
      if (e.key === 'Escape' && !editing && running) {
        e.preventDefault();
        stop();
      }
    };
    addEventListener('keydown', onKey);
    return () => removeEventListener('keydown', onKey);
  }, [editing, running, stop]);

  const submit = () => {
    if (!draft.trim() || running) return;
    const text = draft;
    setDraft('');
    composer.current?.focus();
    void send(text);
  };

  const onComposerKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      submit();
    }
  };

  const newChat = () => {
    setShowSidebar(false);
    if (active && active.messages.length === 0) {
      composer.current?.focus();
      return;
    }
    const c = newConversation();
    setConversations((list) => [c, ...list]);
    setActiveId(c.id);
    setEditing(null);
    requestAnimationFrame(() => composer.current?.focus());
  };

  const deleteChat = (id: string) => {
    const c = conversations.find((x) => x.id === id);
    if (!c || !confirm(`Delete “${c.title}”?`)) return;
    for (const m of c.messages) {
      if (m.gen?.status === 'streaming') void cancelGeneration(m.gen.cancelUrl, { headers: auth }).catch(() => undefined);
    }
    const rest = conversations.filter((x) => x.id !== id);
    setConversations(rest);
    if (activeId === id) setActiveId(rest[0]?.id ?? null);
  };

  // The last user message and the answer after it: for regenerate and edit.
  const messages = active?.messages ?? [];
  const lastUserIndex = messages.map((m) => m.role).lastIndexOf('user');

  const regenerate = () => {
    if (lastUserIndex < 0) return;
    void send(messages[lastUserIndex].content, lastUserIndex);
  };

  const saveEdit = () => {
    if (!editing || lastUserIndex < 0) return;
    const text = editing.text;
    setEditing(null);
    void send(text, lastUserIndex);
  };

  const sorted = useMemo(() => [...conversations].sort((a, b) => b.updatedAt - a.updatedAt), [conversations]);

  return (
    <div className={`chat-app${showSidebar ? ' sidebar-open' : ''}`}>
      <aside className="sidebar" aria-label="Conversations">
        <div className="sidebar-head">
          <span className="brand">Sluice</span>
          <button type="button" className="primary" onClick={newChat} data-testid="new-chat">
            + New chat
          </button>
        </div>
        <nav className="conversation-list">
          {sorted.length === 0 && <p className="muted empty-list">No conversations yet.</p>}
          {sorted.map((c) => (
            <div key={c.id} className={`conversation${c.id === activeId ? ' active' : ''}`}>
              <button
                type="button"
                className="conversation-open ghost"
                aria-current={c.id === activeId ? 'page' : undefined}
                onClick={() => {
                  setActiveId(c.id);
                  setEditing(null);
                  setShowSidebar(false);
                }}
              >
                {c.messages.some((m) => m.pending || m.gen?.status === 'streaming') && <span className="dot ok" aria-label="answering" />}
                <span className="conversation-title">{c.title}</span>
              </button>
              <button type="button" className="ghost icon" aria-label={`Delete ${c.title}`} title="Delete chat" onClick={() => deleteChat(c.id)}>
                ×
              </button>
            </div>
          ))}
        </nav>
        <div className="sidebar-foot">
          <a href="/console">Hub console</a>
        </div>
      </aside>
      {showSidebar && <div className="scrim" onClick={() => setShowSidebar(false)} aria-hidden="true" />}

      <main className="main">
        <header className="topbar">
          <button type="button" className="ghost icon menu" aria-label="Conversations" onClick={() => setShowSidebar((v) => !v)}>
            ☰
          </button>
          <label className="model-picker">
            <span className="visually-hidden">Model</span>
            <select
              value={settings.model}
              onChange={(e) => setSettings((s) => ({ ...s, model: e.target.value }))}
              disabled={!models || models.length === 0}
              data-testid="model"
            >
              {!models && !modelsError && <option value="">Loading models…</option>}
              {modelsError && <option value="">Models unavailable</option>}
              {models?.length === 0 && <option value="">No models</option>}
              {models?.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.id}
                  {m.owned_by && m.owned_by !== m.id ? ` · ${m.owned_by}` : ''}
                </option>
              ))}
            </select>
          </label>
          <span className="spacer" />
          <button type="button" className="ghost" aria-expanded={showSettings} onClick={() => setShowSettings((v) => !v)}>
            Settings
          </button>
          <button
            type="button"
            className="ghost icon"
            onClick={theme.toggle}
            aria-label={theme.dark ? 'Switch to light theme' : 'Switch to dark theme'}
            title={theme.dark ? 'Light theme' : 'Dark theme'}
            data-testid="theme"
          >
            {theme.dark ? '☀' : '☾'}
          </button>
        </header>

        {showSettings && (
          <section className="settings" aria-label="Settings">
            <label className="field">
              <span>System prompt</span>
              <textarea
                rows={3}
                value={settings.system}
                placeholder="You are a helpful assistant."
                onChange={(e) => setSettings((s) => ({ ...s, system: e.target.value }))}
              />
            </label>
            <label className="field inline">
              <span>Temperature</span>
              <input
                type="range"
                min={0}
                max={2}
                step={0.1}
                value={settings.temperature}
                onChange={(e) => setSettings((s) => ({ ...s, temperature: Number(e.target.value) }))}
              />
              <output className="mono">{settings.temperature.toFixed(1)}</output>
            </label>
            <label className="field inline">
              <span>API key</span>
              <input
                type="password"
                autoComplete="off"
                value={settings.apiKey}
                placeholder="if the server wants one"
                onChange={(e) => setSettings((s) => ({ ...s, apiKey: e.target.value }))}
              />
            </label>
          </section>
        )}

        {modelsError && (
          <div className="banner danger" role="alert">
            The model list could not be loaded: {modelsError}.
          </div>
        )}

        <MessageList
          messages={messages}
          lastUserIndex={lastUserIndex}
          editing={editing}
          busy={running !== null}
          onEdit={(id, text) => setEditing({ id, text })}
          onEditChange={(text) => setEditing((e) => (e ? { ...e, text } : e))}
          onEditCancel={() => setEditing(null)}
          onEditSave={saveEdit}
          onRegenerate={regenerate}
        />

        <form
          className="composer"
          onSubmit={(e) => {
            e.preventDefault();
            submit();
          }}
        >
          <label className="visually-hidden" htmlFor="prompt">
            Message
          </label>
          <textarea
            id="prompt"
            ref={composer}
            data-testid="prompt"
            rows={Math.min(8, Math.max(1, draft.split('\n').length))}
            placeholder={settings.model ? `Message ${settings.model}…` : 'No model available'}
            aria-describedby="composer-keys"
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={onComposerKey}
            autoFocus
          />
          <span id="composer-keys" className="visually-hidden">
            Enter sends, Shift+Enter adds a line, Escape stops the answer.
          </span>
          {running && (activeRunning || !active) ? (
            <button type="button" className="danger" onClick={stop} data-testid="stop" title="Stop (Escape)">
              ■ Stop
            </button>
          ) : (
            <button type="submit" className="primary" disabled={!draft.trim() || !settings.model || running !== null} data-testid="send">
              Send
            </button>
          )}
        </form>
        {running && !activeRunning && active && (
          <p className="composer-note">
            An answer is streaming in “{running.conversation.title}”.{' '}
            <button type="button" className="ghost link" onClick={() => setActiveId(running.conversation.id)}>
              Show it
            </button>{' '}
            <button type="button" className="ghost link" onClick={stop}>
              Stop it
            </button>
          </p>
        )}
      </main>
    </div>
  );
}

interface MessageListProps {
  messages: ChatEntry[];
  lastUserIndex: number;
  editing: { id: string; text: string } | null;
  busy: boolean;
  onEdit: (id: string, text: string) => void;
  onEditChange: (text: string) => void;
  onEditCancel: () => void;
  onEditSave: () => void;
  onRegenerate: () => void;
}

function MessageList(props: MessageListProps) {
  const { messages, lastUserIndex, editing, busy } = props;
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const [atBottom, setAtBottom] = useState(true);
  const last = messages[messages.length - 1];

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    const near = el.scrollHeight - el.scrollTop - el.clientHeight < STICK_PX;
    stick.current = near;
    setAtBottom(near);
  };

  // Keep the newest text in view, unless the reader scrolled up to read.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  });

  // A new message (one the user just sent) brings the view back down.
  useEffect(() => {
    stick.current = true;
    setAtBottom(true);
  }, [messages.length]);

  const jump = () => {
    const el = scroller.current;
    if (!el) return;
    stick.current = true;
    setAtBottom(true);
    el.scrollTop = el.scrollHeight;
  };

  return (
    <div className="messages-wrap">
      <div className="messages" ref={scroller} onScroll={onScroll} data-testid="messages">
        <div className="messages-inner">
          {messages.length === 0 && (
            <div className="welcome">
              <h1>What can I help with?</h1>
              <p className="muted">
                Answers stream token by token and survive a reload. Enter sends, Shift+Enter adds a line, Escape stops.
              </p>
            </div>
          )}
          {messages.map((m, i) => {
            const isLastUser = m.role === 'user' && i === lastUserIndex;
            const isLast = i === messages.length - 1;
            if (m.role === 'user') {
              if (editing && editing.id === m.id && isLastUser) {
                return (
                  <div key={m.id} className="message user editing">
                    <textarea
                      aria-label="Edit your message"
                      value={editing.text}
                      autoFocus
                      rows={Math.min(10, Math.max(2, editing.text.split('\n').length))}
                      onChange={(e) => props.onEditChange(e.target.value)}
                      onKeyDown={(e) => {
                        if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
                          e.preventDefault();
                          props.onEditSave();
                        } else if (e.key === 'Escape') {
                          e.preventDefault();
                          props.onEditCancel();
                        }
                      }}
                    />
                    <div className="message-actions">
                      <button type="button" onClick={props.onEditCancel}>
                        Cancel
                      </button>
                      <button type="button" className="primary" onClick={props.onEditSave} disabled={!editing.text.trim() || busy}>
                        Send
                      </button>
                    </div>
                  </div>
                );
              }
              return (
                <div key={m.id} className="message user">
                  <div className="bubble">{m.content}</div>
                  {isLastUser && !busy && (
                    <div className="message-actions">
                      <button type="button" className="ghost small" onClick={() => props.onEdit(m.id, m.content)} data-testid="edit">
                        Edit
                      </button>
                    </div>
                  )}
                </div>
              );
            }
            return (
              <Answer
                key={m.id}
                entry={m}
                last={isLast}
                canRegenerate={isLast && !busy && lastUserIndex >= 0}
                onRegenerate={props.onRegenerate}
              />
            );
          })}
        </div>
      </div>
      {!atBottom && (last?.pending || last?.gen?.status === 'streaming') && (
        <button type="button" className="jump" onClick={jump}>
          ↓ Latest
        </button>
      )}
    </div>
  );
}

const Markdown = memo(function Markdown({ text, streaming }: { text: string; streaming: boolean }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  return (
    <div
      className={`md${streaming ? ' streaming' : ''}`}
      data-testid="answer"
      onClick={(e) => handleCopyClick(e)}
      dangerouslySetInnerHTML={{ __html: html }}
    />
  );
});

function Answer({ entry, last, canRegenerate, onRegenerate }: { entry: ChatEntry; last: boolean; canRegenerate: boolean; onRegenerate: () => void }) {
  const g: GenerationSnapshot | undefined = entry.gen;
  const streaming = entry.pending === true || g?.status === 'streaming';
  const failure = entry.failure;
  const now = useNow(streaming || failure?.retryAt != null, failure?.retryAt != null ? 250 : 500);
  const speed = g ? generationSpeed(g, now) : null;
  const waitLeft = failure?.retryAt != null ? Math.max(0, Math.ceil((failure.retryAt - now) / 1000)) : 0;

  return (
    <div className="message assistant" data-testid="assistant" data-status={g?.status ?? (entry.pending ? 'pending' : 'failed')}>
      {(entry.pending || (streaming && g?.text === '')) && (
        <div className="typing" aria-label="Waiting for the first token">
          <span />
          <span />
          <span />
        </div>
      )}
      {g && g.text !== '' && <Markdown text={g.text} streaming={streaming} />}

      {g?.status === 'streaming' && g.connection === 'reconnecting' && (
        <div className="banner warn" role="status" data-testid="reconnecting">
          Connection lost — reconnecting… The answer will continue where it stopped.
        </div>
      )}
      {g?.error && (
        <div className="banner danger" role="alert" data-testid="upstream-error">
          <strong>The model failed{g.text ? ' mid-answer' : ''}.</strong> {sentence(g.error.message)}
        </div>
      )}
      {failure && (
        <div className={`banner ${failure.kind === 'rate_limit' ? 'warn' : 'danger'}`} role="alert" data-testid="start-failure">
          {failure.kind === 'rate_limit' && (
            <>
              <strong>Rate limited.</strong> {sentence(failure.message)}
              {waitLeft > 0 ? ` You can retry in ${waitLeft} s.` : ' You can retry now.'}
            </>
          )}
          {failure.kind === 'network' && (
            <>
              <strong>The server could not be reached.</strong> Check that it is running, then retry.
            </>
          )}
          {failure.kind === 'http' && (
            <>
              <strong>{failure.status >= 500 ? 'The upstream failed' : 'The request was refused'} ({failure.status}).</strong>{' '}
              {sentence(failure.message)}
            </>
          )}
        </div>
      )}

      {(g || failure) && (
        <div className="answer-foot">
          {speed && (
            <span className="metrics mono" data-testid="metrics">
              {speed.ttftMs !== null && <>TTFT {Math.round(speed.ttftMs)} ms</>}
              {speed.tokensPerSecond !== null && <> · {speed.tokensPerSecond.toFixed(1)} tokens/s</>}
              {speed.tokens > 0 && <> · {speed.tokens} tokens</>}
            </span>
          )}
          {g?.finishReason === 'cancelled' && <span className="note">Stopped</span>}
          {g?.finishReason === 'length' && <span className="note">Cut off at the token limit</span>}
          {entry.model && <span className="note">{entry.model}</span>}
          <span className="spacer" />
          {last && g?.status === 'done' && g.text && (
            <button type="button" className="ghost small" onClick={() => void navigator.clipboard?.writeText(g.text)}>
              Copy
            </button>
          )}
          {canRegenerate && (
            <button
              type="button"
              className="ghost small"
              onClick={onRegenerate}
              disabled={waitLeft > 0}
              data-testid="regenerate"
            >
              {failure ? 'Retry' : 'Regenerate'}
            </button>
          )}
        </div>
      )}
    </div>
  );
}
