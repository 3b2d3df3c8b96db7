import { describe, expect, it } from 'vitest';

import { limitedToSixStreams } from './transport';

describe('limitedToSixStreams', () => {
  it('is true over HTTP/1.x only', () => {
    expect(limitedToSixStreams('http/1.1')).toBe(true);
    expect(limitedToSixStreams('http/1.0')).toBe(true);
    expect(limitedToSixStreams('h2')).toBe(false);
    expect(limitedToSixStreams('h3')).toBe(false);
    expect(limitedToSixStreams(null)).toBe(false);
  });
});
