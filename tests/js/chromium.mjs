// How every browser test starts Debian's chromium (tests/js, web/tests and the Next.js example):
// its path and the flags that keep a headless run quiet and on HTTP over TCP. Node built-ins
// only, so any of the three npm projects can import it.

/** The browser: $CHROMIUM_BIN, else Debian's package. */
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

/** No sandbox (tests run as root in CI), no GPU, no background traffic of its own, no QUIC
 * (the tests speak HTTP/1.1 and HTTP/2 over TCP and must see those). */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
