import { describe, expect, it } from 'vitest';

import { closeOpenFence, escapeHtml } from './markdown';

describe('closeOpenFence', () => {
  it('closes a fence left open mid-stream', () => {
    expect(closeOpenFence('Try:\n```rust\nfn main() {')).toBe('Try:\n```rust\nfn main() {\n```');
    expect(closeOpenFence('~~~~\ncode\n')).toBe('~~~~\ncode\n~~~~');
  });

  it('leaves closed fences and prose alone', () => {
    const done = 'a\n```js\nx()\n```\nb';
    expect(closeOpenFence(done)).toBe(done);
    expect(closeOpenFence('no code, some `inline` code')).toBe('no code, some `inline` code');
  });

  it('needs a closing fence at least as long, of the same character', () => {
    expect(closeOpenFence('````\n```\nstill code')).toBe('````\n```\nstill code\n````');
    expect(closeOpenFence('```\n~~~\n')).toBe('```\n~~~\n```');
  });
});

describe('escapeHtml', () => {
  it('escapes markup', () => {
    expect(escapeHtml('<img src=x onerror="a()">')).toBe('&#60;img src=x onerror=&#34;a()&#34;&#62;');
  });
});
