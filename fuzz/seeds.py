#!/usr/bin/env python3
"""Writes the hand-picked seed inputs of the decoder fuzz target into corpus/decoder/.

Each seed is a small stream that exercises one rule of the WHATWG text/event-stream parser
(or a combination of them), so the fuzzer starts from every interesting branch. Run it from
anywhere; it only adds or overwrites files named seed-*.
"""

import os

SEEDS = {
    "plain": b"data: hello\n\n",
    "no-space": b"data:hello\n\n",
    "two-spaces": b"data:  hello\n\n",
    "multiline": b"data: a\ndata: b\ndata\ndata:\n\n",
    "event-type": b"event: ping\ndata: x\n\nevent:\ndata: y\n\n",
    "event-no-data": b"event: ping\n\ndata: y\n\n",
    "comment": b": keep-alive\n:\ndata: x\n: note\n\n",
    "unknown-field": b"foo: bar\nData: x\ndata : y\n data: z\ndataa\n\n",
    "field-no-colon": b"data\nevent\nid\nretry\n\n",
    "bom": b"\xef\xbb\xbfdata: x\n\n",
    "bom-twice": b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n",
    "bom-partial": b"\xef\xbbdata: x\n\ndata: y\n\n",
    "bom-partial-then-lf": b"\xef\n\ndata: y\n\n",
    "bom-in-data": b"data: \xef\xbb\xbfx\n\n",
    "bom-only": b"\xef\xbb\xbf",
    "crlf": b"data: a\r\ndata: b\r\n\r\n",
    "lone-cr": b"data: a\rdata: b\r\r",
    "mixed-ends": b"data: a\r\ndata: b\rdata: c\n\n\r\n\r",
    "lf-cr": b"data: a\n\r",
    "cr-crlf": b"data: a\r\r\n",
    "cr-at-end": b"data: a\r",
    "cr-lf-cr-lf": b"id: 1\r\ndata: x\r\n\r\ndata: y\r\n\r\n",
    "empty-lines": b"\n\n\r\n\r\rdata: x\n\n\n\n",
    "utf8": "data: 你好🎉 naïve\n\n".encode(),
    "invalid-byte": b"data: a\xffb\n\n",
    "truncated-char": b"data: \xe4\xbd\n\n",
    "truncated-before-colon": b"\xe4:x\ndata: y\n\n",
    "overlong": b"data: \xc0\xaf\xe0\x80\xaf\n\n",
    "surrogate": b"data: \xed\xa0\x80\xed\xbf\xbf\n\n",
    "split-char-across-cr": b"data: \xf0\x9f\rdata: \x8e\x89\n\n",
    "invalid-in-event": b"event: \xff\xfe\ndata: x\n\n",
    "id": b"id: 1\ndata: x\n\ndata: y\n\n",
    "id-nul": b"id: 1\ndata: x\n\nid: a\x00b\ndata: y\n\n",
    "id-nul-only": b"id: \x00\ndata: x\n\n",
    "id-empty": b"id: 1\ndata: x\n\nid\ndata: y\n\nid:\ndata: z\n\n",
    "id-no-data": b"id: 5\n\ndata: x\n\n",
    "id-invalid-utf8": b"id: \xff\xfe1\ndata: x\n\n",
    "id-space": b"id:  1 \ndata: x\n\n",
    "id-unterminated": b"data: x\n\nid: 9\ndata: y\n",
    "retry": b"retry: 1000\n\n",
    "retry-letter": b"retry: 10a\n\nretry: 1 \n\n",
    "retry-space": b"retry:  100\n\nretry:\n\n",
    "retry-overflow": b"retry: 18446744073709551615\nretry: 18446744073709551616\n\n",
    "retry-huge": b"retry: 99999999999999999999999\n\n",
    "retry-keep": b"retry: 5\nretry: x\nretry: -1\nretry: +2\n\n",
    "retry-cr": b"retry: 7\rdata: x\r\r",
    "unterminated": b"data: x\n\ndata: y\n",
    "no-line-end": b"data: x",
    "nul-in-data": b"data: a\x00b\n\n",
    "colons": b"data: a:b: c\n::\n\n",
    "long-line": b"data: " + b"abcdefghijklmnopqrstuvwxyz" * 80 + b"\n\n",
    "long-id": b"id: " + b"0123456789" * 100 + b"\ndata: x\n\n",
    "long-comment": b":" + b"-" * 2000 + b"\r\ndata: x\r\n\r\n",
    "all-fields": b"\xef\xbb\xbfretry: 250\r\nid: 42\r\nevent: delta\r\n: c\r\ndata: {\"t\":\"\xe2\x82\xac\"}\r\n\r\n",
    "llm-chunks": b"".join(
        b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % w
        for w in [b"Hello", b" world", b" \xf0\x9f\x8c\x8d", b"!"]
    )
    + b"data: [DONE]\n\n",
}


def main() -> None:
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "decoder")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, f"seed-{name}"), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
