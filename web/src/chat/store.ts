/**
 * Conversations and settings, kept in localStorage so they survive a reload, and merged
 * when another tab writes them. A running answer's snapshot is stored with its message: its
 * text and the id of its last event go together, so a reload resumes it exactly.
 */
import { type GenerationSnapshot, eventNumber } from '../lib/generation';

/** Why an answer could not be started. */
export interface StartFailure {
  /** `rate_limit` (429), `network` (no server), or `http` (any other refusal). */
  kind: 'rate_limit' | 'network' | 'http';
  /** What the server said. */
  message: string;
  /** The HTTP status (0 for network). */
  status: number;
  /** When a rate-limited request may be retried (ms since the epoch). */
  retryAt: number | null;
}

/** One message in a conversation. */
export interface ChatEntry {
  id: string;
  role: 'user' | 'assistant';
  /** The text (for an answer: its text so far). */
  content: string;
  /** The model that answered. */
  model?: string;
  /** The answer's stream, once started. */
  gen?: GenerationSnapshot;
  /** The request is on its way (no answer id yet). */
  pending?: boolean;
  /** Why the answer could not start. */
  failure?: StartFailure;
}

/** A conversation. */
export interface Conversation {
  id: string;
  title: string;
  createdAt: number;
  updatedAt: number;
  messages: ChatEntry[];
}

/** The chat settings. */
export interface Settings {
  model: string;
  system: string;
  temperature: number;
  /** The gateway's API key, when the server asks for one (sent as a Bearer token). */
  apiKey: string;
}

export const CONVERSATIONS_KEY = 'sluice.chat.conversations.v1';
const SETTINGS_KEY = 'sluice.chat.settings.v1';
const ACTIVE_KEY = 'sluice.chat.active';

export const DEFAULT_SETTINGS: Settings = { model: '', system: '', temperature: 0.7, apiKey: '' };

/** A random id. */
export function newId(): string {
  if (typeof crypto !== 'undefined' && 'randomUUID' in crypto) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/** A new, empty conversation. */
export function newConversation(): Conversation {
  const now = Date.now();
  return { id: newId(), title: 'New chat', createdAt: now, updatedAt: now, messages: [] };
}

/** A title from the first prompt. */
export function titleFrom(prompt: string): string {
  const line = prompt.trim().split('\n')[0].replace(/\s+/g, ' ');
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || 'New chat';
}

function read<T>(key: string, fallback: T): T {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : (JSON.parse(raw) as T);
  } catch {
    return fallback;
  }
}

/** The stored conversations, newest first. */
export function loadConversations(): Conversation[] {
  const list = read<Conversation[]>(CONVERSATIONS_KEY, []);
  return Array.isArray(list) ? list : [];
}

/** Stores the conversations, unless the stored text is the same (so tabs do not echo). */
export function saveConversations(list: Conversation[]): void {
  try {
    const text = JSON.stringify(list);
    if (localStorage.getItem(CONVERSATIONS_KEY) !== text) localStorage.setItem(CONVERSATIONS_KEY, text);
  } catch {
    // storage full or unavailable: the page goes on, unsaved
  }
}

/** The stored settings. */
export function loadSettings(): Settings {
  return { ...DEFAULT_SETTINGS, ...read<Partial<Settings>>(SETTINGS_KEY, {}) };
}

/** Stores the settings. */
export function saveSettings(settings: Settings): void {
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  } catch {
    // ignore
  }
}

/** The conversation this tab shows (per tab, kept across its reloads). */
export function loadActive(): string | null {
  try {
    return sessionStorage.getItem(ACTIVE_KEY) ?? localStorage.getItem(ACTIVE_KEY);
  } catch {
    return null;
  }
}

/** Remembers the conversation this tab shows. */
export function saveActive(id: string): void {
  try {
    sessionStorage.setItem(ACTIVE_KEY, id);
    localStorage.setItem(ACTIVE_KEY, id);
  } catch {
    // ignore
  }
}

/** Whether snapshot `a` is further along than `b` (same answer). */
export function newer(a: GenerationSnapshot | undefined, b: GenerationSnapshot | undefined): boolean {
  if (!a) return false;
  if (!b || a.id !== b.id) return true;
  if (a.status === 'done' && b.status !== 'done') return true;
  if (b.status === 'done' && a.status !== 'done') return false;
  return (eventNumber(a.lastEventId) ?? -1) > (eventNumber(b.lastEventId) ?? -1);
}

/**
 * Another tab's list, taken as it is, except that an answer this tab has seen further along
 * keeps this tab's snapshot (the other tab may have written a moment ago).
 */
export function mergeConversations(local: Conversation[], remote: Conversation[]): Conversation[] {
  const answers = new Map<string, ChatEntry>();
  for (const c of local) for (const m of c.messages) if (m.gen) answers.set(m.id, m);
  return remote.map((c) => {
    let changed = false;
    const messages = c.messages.map((m) => {
      const mine = answers.get(m.id);
      if (mine?.gen && m.gen && mine.gen.id === m.gen.id && newer(mine.gen, m.gen)) {
        changed = true;
        return mine;
      }
      return m;
    });
    return changed ? { ...c, messages } : c;
  });
}

/** Applies a snapshot to the message holding its answer; the same list when nothing changes. */
export function applySnapshot(list: Conversation[], snapshot: GenerationSnapshot): Conversation[] {
  let found = false;
  const next = list.map((c) => {
    const index = c.messages.findIndex((m) => m.gen?.id === snapshot.id);
    if (index < 0) return c;
    const current = c.messages[index].gen;
    if (current && current.id === snapshot.id) {
      if (newer(current, snapshot)) return c;
      if (!newer(snapshot, current) && current.connection === snapshot.connection) return c;
    }
    found = true;
    const messages = c.messages.slice();
    messages[index] = { ...messages[index], gen: snapshot, content: snapshot.text, pending: false };
    return { ...c, messages, updatedAt: Date.now() };
  });
  return found ? next : list;
}
