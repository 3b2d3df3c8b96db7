// POST /api/chat/{id}/cancel?token=…: stops the answer. Sluice cancels the upstream model
// request at once and ends the stream with `end` {"finish_reason": "cancelled"}, which every
// tab following the answer receives.

import type { NextRequest } from 'next/server';

import { errorMessage, sluiceUrl } from '@/lib/sluice';

export async function POST(request: NextRequest, { params }: { params: Promise<{ id: string }> }) {
  const { id } = await params;
  let response: Response;
  try {
    response = await fetch(
      sluiceUrl(`/api/generations/${encodeURIComponent(id)}/cancel${request.nextUrl.search}`),
      { method: 'POST' },
    );
  } catch {
    return Response.json({ error: `Sluice cannot be reached at ${sluiceUrl('')}.` }, { status: 502 });
  }
  // 202: stopping. 409: it had already ended, which is just as good.
  if (response.status === 202 || response.status === 409) {
    await response.body?.cancel();
    return new Response(null, { status: 204 });
  }
  return Response.json({ error: await errorMessage(response) }, { status: response.status });
}
