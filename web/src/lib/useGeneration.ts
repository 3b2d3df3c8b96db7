/**
 * A React hook over {@link Generation}: one answer at a time, its snapshot as state.
 *
 * ```tsx
 * const { snapshot, error, start, cancel } = useGeneration();
 * <button onClick={() => start({ model, messages })}>Send</button>
 * <p>{snapshot?.text}</p>
 * ```
 */
import { useCallback, useEffect, useRef, useState } from 'react';

import {
  type Generation,
  type GenerationHttpError,
  type GenerationOptions,
  type GenerationRequest,
  type GenerationSnapshot,
  resumeGeneration,
  startGeneration,
} from './generation';

/** What {@link useGeneration} returns. */
export interface UseGeneration {
  /** The answer being followed (or the last one), null before any. */
  snapshot: GenerationSnapshot | null;
  /** Why the last start failed (a {@link GenerationHttpError} from the server, usually). */
  error: Error | null;
  /** Whether a request is on its way or an answer is streaming here. */
  busy: boolean;
  /**
   * Starts an answer (closing any followed one); resolves with its first snapshot. Rejects
   * with the server's refusal (a {@link GenerationHttpError}), which also goes to `error`.
   */
  start: (request: GenerationRequest) => Promise<GenerationSnapshot>;
  /** Continues following a stored answer. */
  resume: (snapshot: GenerationSnapshot) => void;
  /** Stops the answer on the server (even one still being requested). */
  cancel: () => Promise<void>;
  /** Stops following without stopping the answer, and forgets it. */
  reset: () => void;
}

/** One answer at a time, as React state. `options` are read when an answer starts. */
export function useGeneration(options: Omit<GenerationOptions, 'onUpdate'> = {}): UseGeneration {
  const [snapshot, setSnapshot] = useState<GenerationSnapshot | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const [starting, setStarting] = useState(false);
  const current = useRef<Generation | null>(null);
  const cancelWanted = useRef(false);
  const epoch = useRef(0);
  const optionsRef = useRef(options);
  optionsRef.current = options;

  const follow = useCallback((make: (o: GenerationOptions) => Generation | Promise<Generation>) => {
    current.current?.close();
    current.current = null;
    const mine = ++epoch.current;
    const o: GenerationOptions = {
      ...optionsRef.current,
      // Only the answer followed now may set the state, not one closed before it.
      onUpdate: (s) => {
        if (epoch.current === mine) setSnapshot(s);
      },
    };
    return make(o);
  }, []);

  const start = useCallback(
    async (request: GenerationRequest) => {
      setError(null);
      setStarting(true);
      cancelWanted.current = false;
      try {
        const generation = await follow((o) => startGeneration(request, o));
        current.current = generation;
        setSnapshot(generation.snapshot);
        if (cancelWanted.current) await generation.cancel().catch(() => undefined);
        return generation.snapshot;
      } catch (e) {
        const error = e instanceof Error ? e : new Error(String(e));
        setError(error);
        throw error;
      } finally {
        setStarting(false);
      }
    },
    [follow],
  );

  const resume = useCallback(
    (stored: GenerationSnapshot) => {
      setError(null);
      const generation = follow((o) => resumeGeneration(stored, o)) as Generation;
      current.current = generation;
      setSnapshot(generation.snapshot);
    },
    [follow],
  );

  const cancel = useCallback(async () => {
    if (current.current === null || !current.current.active) {
      cancelWanted.current = true;
      return;
    }
    await current.current.cancel();
  }, []);

  const reset = useCallback(() => {
    epoch.current += 1;
    current.current?.close();
    current.current = null;
    setSnapshot(null);
    setError(null);
  }, []);

  useEffect(() => () => current.current?.close(), []);

  return {
    snapshot,
    error,
    busy: starting || snapshot?.status === 'streaming',
    start,
    resume,
    cancel,
    reset,
  };
}
