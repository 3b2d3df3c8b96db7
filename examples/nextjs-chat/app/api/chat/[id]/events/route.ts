// GET /api/chat/{id}/events?token=…: the answer's event stream, passed through from Sluice as
// it comes (delta, usage, end). Resuming is Sluice's job: this passes on the browser's
// Last-Event-ID header (sent on its own reconnects) and the lastEventID query parameter (set by
// the page after a reload), and Sluice sends exactly the events after that id.

import type { NextRequest } from 'next/server';

import { sluiceUrl } from '@/lib/sluice';

export async function GET(request: NextRequest, { params }: { params: Promise<{ id: string }> }) {
  const { id } = await params;
  const headers: Record<string, string> = { Accept: 'text/event-stream' };
  const lastEventId = request.headers.get('last-event-id');
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;

  let upstream: Response;
  try {
    upstream = await fetch(
      sluiceUrl(`/api/generations/${encodeURIComponent(id)}/events${request.nextUrl.search}`),
      // When the browser goes away, so does this request to Sluice, which then knows the
      // answer has one reader fewer.
      { headers, signal: request.signal },
    );
  } catch {
    return tryAgainLater();
  }

  if (upstream.status === 200 && upstream.body) {
    return new Response(upstream.body, {
      headers: {
        'Content-Type': 'text/event-stream',
        // no-transform: no compression, which would hold events back in a buffer.
        'Cache-Control': 'no-cache, no-transform',
        'X-Accel-Buffering': 'no',
      },
    });
  }
  await upstream.body?.cancel();
  if (upstream.status >= 500) return tryAgainLater();
  // 204: the answer has ended, so the EventSource stops for good. 403, 404: no such answer
  // (or a wrong token); the EventSource stops too, and the page says the answer is gone.
  return new Response(null, { status: upstream.status === 204 ? 204 : upstream.status });
}

/**
 * Sluice is down or restarting: an empty stream that asks the browser to reconnect in two
 * seconds. (An error status would make the EventSource give up; an empty 200 makes it
 * reconnect by itself, with its Last-Event-ID.)
 */
function tryAgainLater() {
  return new Response('retry: 2000\n\n', {
    headers: { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache, no-transform' },
  });
}
