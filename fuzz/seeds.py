#!/usr/bin/env python3
"""Writes the hand-picked seed inputs of every fuzz target into corpus/<target>/.

Each seed exercises one rule of what its target parses (a rule of the WHATWG
text/event-stream parser, an RFC 6570 template form, a form-encoding corner, a place a
token hides, a chat request field, a GGUF header shape), so the fuzzer starts from every
interesting branch. Run it from anywhere; it only adds or overwrites files named seed-*.
"""

import json
import os
import struct

DECODER = {
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


# Selector, newline, topic.
SELECTOR = {
    "exact": b"https://example.com/books/1\nhttps://example.com/books/1",
    "any": b"*\n/anything",
    "simple": b"/books/{id}\n/books/42",
    "reserved": b"/{+path}\n/a/b/c?x=1#f",
    "fragment": b"/page{#section}\n/page#intro",
    "label": b"/file{.ext}\n/file.tar.gz",
    "path": b"{/segments*}\n/a/b/c",
    "matrix": b"/m{;x,y}\n/m;x=1;y",
    "query": b"/q{?a,b}\n/q?a=1&b=2",
    "continuation": b"/q?x=1{&y*}\n/q?x=1&y=2&y=3",
    "prefix": b"/p/{name:3}\n/p/%C3%A9ab",
    "explode-map": b"/m{;params*}\n/m;a=1;b=2",
    "many-vars": b"/{a}{b}{c}{d}{e}{f}{g}{h}\n/abcdefgh",
    "backtrack": b"/{+a}{+a}{+a}{+a}{+a}{+a}x\n/" + b"a/" * 200,
    "unicode": "/livres/{titre}\n/livres/été-中文".encode(),
    "bad-unclosed": b"/books/{id\n/books/1",
    "bad-operator": b"/{=x}\n/x",
    "bad-prefix": b"/{x:0}\n/x",
    "brace-literal": b"/a}b\n/a}b",
}

FORM = {
    "publish": b"topic=%2Fbooks%2F1&data=hello+world&private=on&id=urn%3Auuid%3A1&type=t&retry=10",
    "alternates": b"topic=/a&topic=/b&topic=https%3A%2F%2Fx.example%2Fc&data=",
    "utf8": b"topic=/%C3%A9t%C3%A9&data=%E4%B8%AD%E6%96%87",
    "bad-utf8": b"topic=/a&data=%FF%FE%80",
    "bare-percent": b"topic=/a&data=100%&x=%2",
    "plus-and-space": b"data=a+b%20c%2Bd",
    "no-equals": b"private&topic&&=&==",
    "crlf-id": b"topic=/a&id=a%0D%0Aevent%3A+x&type=%00",
    "retry-bad": b"topic=/a&retry=-1",
    "long-data": b"topic=/a&data=" + b"x" * 100,
}

# Authorization header, newline, query parameter, newline, Cookie header.
TOKEN = {
    "bearer": b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJtZXJjdXJlIjp7fX0.c2lnbmF0dXJl\n\n",
    "lowercase": b"bearer abc.def.ghi\n\n",
    "query": b"\neyJhbGciOiJub25lIn0.eyJtZXJjdXJlIjp7fX0.\n",
    "cookie": b"\n\nfoo=bar; mercureAuthorization=eyJhbGciOiJIUzI1NiJ9.e30.x; other=1",
    "cookie-quoted": b'\n\nmercureAuthorization="a.b.c"; x',
    "none-alg": b"Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdfX0.\n\n",
    "garbage": b"Basic dXNlcjpwYXNz\nnot-a-jwt\n=;=;;",
    "empty": b"Bearer \n\n",
}

CHAT = {
    "minimal": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "stream": {"model": "m", "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hi"}]},
    "parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                         {"type": "image_url", "image_url": {}}]}]},
    "tools": {"model": "m", "messages": [{"role": "assistant", "content": None,
              "tool_calls": [{"id": "c", "type": "function",
                              "function": {"name": "f", "arguments": "{}"}}]},
              {"role": "tool", "tool_call_id": "c", "content": "42"}],
              "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
    "sampling": {"model": "m", "messages": [{"role": "developer", "content": "x"}],
                 "temperature": 0.7, "top_p": 0.9, "max_tokens": 16, "seed": 1,
                 "stop": ["\n", "END"], "n": 1},
    "out-of-range": {"model": "m", "messages": [{"role": "user", "content": "x"}],
                     "temperature": 9, "top_p": -1, "max_tokens": 0, "n": 2},
    "empty": {"model": "m", "messages": []},
}


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def gguf_kv(key: str, kind: int, value: bytes) -> bytes:
    return gguf_string(key.encode()) + struct.pack("<I", kind) + value


def gguf_array(kind: int, items: list) -> bytes:
    return struct.pack("<IQ", kind, len(items)) + b"".join(items)


def gguf(pairs: list, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, 0, len(pairs)) + b"".join(pairs)


STRING, ARRAY, UINT32, INT32, BOOL = 8, 9, 4, 5, 7
TOKENS = [b"<|im_start|>", b"<|im_end|>", b"h", b"i", b"hi", b"\xc4\xa0", b"!"]
LLAMA = [
    gguf_kv("general.architecture", STRING, gguf_string(b"llama")),
    gguf_kv("llama.context_length", UINT32, struct.pack("<I", 2048)),
    gguf_kv("tokenizer.ggml.model", STRING, gguf_string(b"gpt2")),
    gguf_kv("tokenizer.ggml.tokens", ARRAY, gguf_array(STRING, [gguf_string(t) for t in TOKENS])),
    gguf_kv("tokenizer.ggml.token_type", ARRAY,
            gguf_array(INT32, [struct.pack("<i", t) for t in [3, 3, 1, 1, 1, 1, 1]])),
    gguf_kv("tokenizer.ggml.merges", ARRAY, gguf_array(STRING, [gguf_string(b"h i")])),
    gguf_kv("tokenizer.ggml.bos_token_id", UINT32, struct.pack("<I", 0)),
    gguf_kv("tokenizer.ggml.eos_token_id", UINT32, struct.pack("<I", 1)),
    gguf_kv("tokenizer.ggml.add_bos_token", BOOL, b"\x00"),
]
TEMPLATE = gguf_kv("tokenizer.chat_template", STRING, gguf_string(
    b"{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    b"{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"))
GGUF_HEADER = {
    "llama": gguf(LLAMA),
    "llama-template": gguf(LLAMA + [TEMPLATE]),
    "llama-v2": gguf(LLAMA, version=2),
    "not-llama": gguf([gguf_kv("general.architecture", STRING, gguf_string(b"bert"))]),
    "bad-template": gguf(LLAMA + [gguf_kv("tokenizer.chat_template", STRING, gguf_string(b"{% for"))]),
    "huge-array": gguf(LLAMA[:3] + [gguf_kv("tokenizer.ggml.tokens", ARRAY,
                                            struct.pack("<IQ", STRING, 1 << 40))]),
    "huge-string": gguf([gguf_kv("general.architecture", STRING, struct.pack("<Q", 1 << 50))]),
    "truncated": gguf(LLAMA)[:57],
    "magic-only": b"GGUF",
}

TARGETS = {
    "decoder": DECODER,
    "selector": SELECTOR,
    "form": FORM,
    "token": TOKEN,
    "chat_request": {name: json.dumps(body).encode() for name, body in CHAT.items()},
    "gguf_header": GGUF_HEADER,
}


def main() -> None:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    for target, seeds in TARGETS.items():
        out = os.path.join(root, target)
        os.makedirs(out, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(out, f"seed-{name}"), "wb") as f:
                f.write(data)
        print(f"wrote {len(seeds)} seeds to {out}")


if __name__ == "__main__":
    main()
