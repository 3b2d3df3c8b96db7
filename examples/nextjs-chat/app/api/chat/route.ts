// POST /api/chat {prompt}: starts an answer in Sluice and tells the page where to follow it
// and how to stop it. The answer then runs in Sluice, not in this request: it goes on while
// the page reloads, and any tab that knows its URLs can follow it.

import { apiKeyHeaders, errorMessage, sluiceUrl, type Started } from '@/lib/sluice';

export async function POST(request: Request) {
  const { prompt } = await request.json().catch(() => ({}));
  if (typeof prompt !== 'string' || !prompt.trim()) {
    return Response.json({ error: 'Type a prompt first.' }, { status: 400 });
  }

  // The same body as OpenAI's chat completions. With no model, Sluice uses its first one.
  const model = process.env.SLUICE_MODEL;
  const body = { ...(model && { model }), messages: [{ role: 'user', content: prompt }] };

  let response: Response;
  try {
    response = await fetch(sluiceUrl('/api/generations'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...apiKeyHeaders() },
      body: JSON.stringify(body),
    });
  } catch {
    return Response.json({ error: `Sluice cannot be reached at ${sluiceUrl('')}.` }, { status: 502 });
  }
  if (response.status !== 201) {
    return Response.json({ error: await errorMessage(response) }, { status: response.status });
  }

  // Sluice's URLs carry the answer's capability token in their query. The page gets the same
  // URLs on this origin (the route handlers next to this one pass them on), so it needs no
  // CORS and never learns where Sluice is.
  const started: Started = await response.json();
  const id = encodeURIComponent(started.id);
  const query = (url: string) => new URL(url, sluiceUrl('/')).search;
  return Response.json(
    {
      id: started.id,
      prompt,
      eventsUrl: `/api/chat/${id}/events${query(started.events_url)}`,
      cancelUrl: `/api/chat/${id}/cancel${query(started.cancel_url)}`,
    },
    { status: 201 },
  );
}
