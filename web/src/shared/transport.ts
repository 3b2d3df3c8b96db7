/**
 * Which HTTP version brought this page. Over HTTP/1.1 a browser keeps at most six connections
 * per site, across all its tabs: a seventh live event stream waits until one of the six
 * closes. Over HTTP/2 every stream shares one connection. The console warns when it runs
 * over HTTP/1.1, since it holds a stream open for as long as it is subscribed.
 */

/** The navigation's protocol as the browser reports it (`h2`, `http/1.1`, …), if known. */
export function pageProtocol(): string | null {
  if (typeof performance === 'undefined' || typeof performance.getEntriesByType !== 'function') return null;
  const [navigation] = performance.getEntriesByType('navigation') as PerformanceNavigationTiming[];
  return navigation?.nextHopProtocol || null;
}

/** Whether the page came over HTTP/1.x, where the six-connection limit applies. */
export function limitedToSixStreams(protocol: string | null = pageProtocol()): boolean {
  return protocol !== null && /^http\/1/i.test(protocol);
}
