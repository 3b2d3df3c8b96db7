import { describe, expect, it } from 'vitest';

import type { GenerationSnapshot } from '../lib/generation';
import { type Conversation, applySnapshot, mergeConversations, newer, titleFrom } from './store';

function snap(n: number, extra: Partial<GenerationSnapshot> = {}): GenerationSnapshot {
  return {
    id: 'g', eventsUrl: '/e', cancelUrl: '/c', text: 'x'.repeat(n), lastEventId: n === 0 ? null : `g.${n - 1}`,
    status: 'streaming', connection: 'open', finishReason: null, usage: null, error: null,
    startedAt: 0, firstTokenAt: null, endedAt: null, deltas: n, ...extra,
  };
}

function conversation(gen: GenerationSnapshot): Conversation[] {
  return [{ id: 'c', title: 't', createdAt: 0, updatedAt: 0, messages: [{ id: 'a', role: 'assistant', content: gen.text, gen }] }];
}

describe('the chat store', () => {
  it('orders snapshots of one answer by their last event', () => {
    expect(newer(snap(3), snap(2))).toBe(true);
    expect(newer(snap(2), snap(3))).toBe(false);
    expect(newer(snap(2, { status: 'done' }), snap(5))).toBe(true);
    expect(newer(snap(5), snap(2, { status: 'done' }))).toBe(false);
  });

  it('applies a newer snapshot and ignores an older one', () => {
    const list = conversation(snap(2));
    const next = applySnapshot(list, snap(4));
    expect(next[0].messages[0].content).toBe('xxxx');
    expect(applySnapshot(next, snap(3))).toBe(next);
    expect(applySnapshot(next, snap(4, { connection: 'reconnecting' }))[0].messages[0].gen?.connection).toBe('reconnecting');
  });

  it('takes another tab’s list but keeps an answer seen further along here', () => {
    const local = conversation(snap(6));
    const remote = [...conversation(snap(4)), { id: 'd', title: 'new', createdAt: 1, updatedAt: 1, messages: [] }];
    const merged = mergeConversations(local, remote);
    expect(merged).toHaveLength(2);
    expect(merged[0].messages[0].gen?.text).toBe('xxxxxx');
    expect(mergeConversations(conversation(snap(2)), remote)[0]).toBe(remote[0]);
  });

  it('titles a conversation by its first line', () => {
    expect(titleFrom('  hello\nworld ')).toBe('hello');
    expect(titleFrom('a'.repeat(60))).toHaveLength(48);
  });
});
