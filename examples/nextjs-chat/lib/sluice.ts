// Where Sluice is and how to call it. Only the route handlers under app/api import this, so
// SLUICE_URL and SLUICE_API_KEY are read on the server at request time and never reach the
// browser (neither is prefixed with NEXT_PUBLIC_).

const base = (process.env.SLUICE_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');

/** A Sluice URL from a path such as `/api/generations` (kept under any path in SLUICE_URL). */
export function sluiceUrl(path: string): string {
  return base + path;
}

/** The API key for starting answers, when Sluice requires one (`api_keys` in sluice.toml). */
export function apiKeyHeaders(): Record<string, string> {
  const key = process.env.SLUICE_API_KEY;
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** What `POST /api/generations` answers with 201. */
export interface Started {
  id: string;
  events_url: string;
  cancel_url: string;
}

/** The message of Sluice's JSON error body (`{"error": {"message", …}}`), if there is one. */
export async function errorMessage(response: Response): Promise<string> {
  const body = await response.json().catch(() => null);
  return body?.error?.message ?? `Sluice answered ${response.status}`;
}
