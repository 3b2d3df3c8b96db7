// The answer every tab shows, kept in localStorage: a tab that starts an answer writes it here,
// and the other tabs hear of it through the `storage` event and follow the same answer.
// React reads it with useSyncExternalStore (see useCurrentAnswer in chat.tsx).

/** An answer running (or done) in Sluice, as the page knows it. */
export interface Answer {
  id: string;
  prompt: string;
  /** This app's URL of the answer's event stream (an EventSource reads it). */
  eventsUrl: string;
  /** This app's URL that stops the answer (POST). */
  cancelUrl: string;
}

const KEY = 'sluice-chat:answer';
const CHANGED = 'sluice-chat:answer-changed';

export function subscribe(onChange: () => void): () => void {
  // `storage` fires for writes made by the other tabs; CHANGED for those made by this one.
  const onStorage = (event: StorageEvent) => {
    if (event.key === KEY || event.key === null) onChange();
  };
  window.addEventListener('storage', onStorage);
  window.addEventListener(CHANGED, onChange);
  return () => {
    window.removeEventListener('storage', onStorage);
    window.removeEventListener(CHANGED, onChange);
  };
}

/** The stored answer as a string: equal strings mean no change, so React re-renders only on a new one. */
export function getSnapshot(): string | null {
  return localStorage.getItem(KEY);
}

/** On the server (and while hydrating) there is no answer yet. */
export function getServerSnapshot(): string | null {
  return null;
}

export function showEverywhere(answer: Answer): void {
  localStorage.setItem(KEY, JSON.stringify(answer));
  window.dispatchEvent(new Event(CHANGED));
}
