# Two commands on a fresh machine: `make run` and `make test`. Everything they need is
# installed by scripts/setup.sh, which is idempotent and quick when all is in place.

CARGO ?= cargo
SLUICE := target/release/sluice

.PHONY: run screenshot-local-model test test-build test-js test-python test-web test-aisdk test-durable web setup build lint bench bench-peers bench-durable bench-callers fuzz soak conformance clean

## Build and start the main job: `sluice serve --dev` on http://127.0.0.1:8080 (history and a
## development secret in ./sluice-data; it prints a publisher token, and the console has it).
## Pass more flags with ARGS, e.g. make run ARGS="--provider scripted"; DEV=0 leaves out --dev.
run: setup build
	$(SLUICE) serve $(if $(filter 0,$(DEV)),,--dev) $(ARGS)

## Every test: formatting, lints, unit, integration, conformance and doc tests.
## The local model runs on one candle thread in tests: two threads spin-wait on each other and
## collapse when the machine is busy with anything else (see BENCHMARKS.md).
test test-js test-python test-web: export CANDLE_NUM_THREADS := 1
test: setup web lint test-js test-python test-web test-aisdk test-durable test-example
	$(CARGO) test --workspace --locked

## One build for every test and the test binary of `sluice`: `cargo test --workspace` unifies
## features across the workspace and its dev-dependencies, so building `-p sluice` on its own
## would compile candle and the rest a second time with other features. The suites that drive a
## real `sluice serve` (js, python, web) use the binary this build leaves in target/debug.
SLUICE_TEST_BIN := $(abspath $(or $(CARGO_TARGET_DIR),target))/debug/sluice
test-build: setup
	$(CARGO) test --workspace --locked --no-run

## The hub through a third-party EventSource client (npm `eventsource`) and a real browser
## (Debian's chromium, driven by playwright-core), and the gateway through the official OpenAI
## SDK (npm `openai`): tests/js, run with node --test.
test-js: test-build
	cd tests/js && SLUICE_BIN=$(SLUICE_TEST_BIN) npm test

## The gateway through the official OpenAI SDK for Python (tests/python, pytest in .venv/).
## pytest's exit status 5 (no test collected) fails this target like any other failure.
test-python: test-build
	SLUICE_BIN=$(SLUICE_TEST_BIN) .venv/bin/python -m pytest -q tests/python

## The chat page and the hub console: unit tests of web/src/lib (vitest), then both pages in
## Debian's chromium (playwright-core) against a real `sluice serve` (web/tests, node --test).
## Screenshots go to artifacts/.
test-web: web test-build
	cd web && npm test
	cd web && SLUICE_BIN=$(SLUICE_TEST_BIN) npm run test:browser

## The AI SDK's useChat (npm `ai` + `@ai-sdk/react`, DefaultChatTransport with resume) on a small
## React page (tests/aisdk, built with vite by the test) in Debian's chromium (playwright-core)
## against a real `sluice serve` on another origin: the text grows, a reload mid-answer resumes
## it to the exact text once, Stop cancels the upstream. Its npm packages are installed by setup.
## The screenshot goes to artifacts/aisdk-usechat.png.
test-aisdk: test-build
	cd tests/aisdk && SLUICE_BIN=$(SLUICE_TEST_BIN) npm test

## Durable Streams (tests/durable, vitest): the protocol's own server conformance suite
## (npm @durable-streams/server-conformance-tests, unchanged) on SQLite and on Redis, the official
## TypeScript client across a restart, two nodes and a kill -9, and the hub's tokens on streams.
test-durable: test-build
	cd tests/durable && SLUICE_BIN=$(SLUICE_TEST_BIN) npm test

## The Next.js example (examples/nextjs-chat): its test runs `next build`, then `next start`
## against a real `sluice serve` and drives it in Debian's chromium (playwright-core); the
## screenshot goes to artifacts/nextjs-chat.png. Not part of `make test`. Its npm packages
## (Next.js and its compiler, some 380 MB) are installed here rather than by setup, since
## nothing else needs them.
EXAMPLE := examples/nextjs-chat
test-example: test-build $(EXAMPLE)/node_modules/.package-lock.json
	cd $(EXAMPLE) && NEXT_TELEMETRY_DISABLED=1 SLUICE_BIN=$(SLUICE_TEST_BIN) npm test
$(EXAMPLE)/node_modules/.package-lock.json: $(EXAMPLE)/package-lock.json
	cd $(EXAMPLE) && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

## The chat page on the server `make run` started (another terminal), answering one question
## with the built-in model: its time to first token and tokens/s, and docs/chat-local-model.png.
screenshot-local-model: setup
	cd web && node tests/screenshot-local-model.mjs

## The web UI (web/, Vite + TypeScript + React) built into web/dist, which the binary embeds.
## Rebuilt only when its sources change (web/dist/.built is the stamp).
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/console.html \
	web/vite.config.ts web/tsconfig.json web/package.json web/package-lock.json
web: web/dist/.built
web/dist/.built: $(WEB_SOURCES) web/node_modules/.package-lock.json
	cd web && npm run build
	touch $@
web/node_modules/.package-lock.json: web/package-lock.json
	@bash scripts/setup.sh

setup:
	@bash scripts/setup.sh

build: setup web
	$(CARGO) build --release --locked -p sluice

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## Criterion benchmarks, side by side with the peer crates (see BENCHMARKS.md).
bench: setup
	$(CARGO) bench --locked -p sluice-sse --bench decode

## Sluice side by side with the peers users would pick, in one run: the hub against Nchan, the
## gateway against LiteLLM, the local model against llama.cpp. bench/peers.sh installs them
## first (about 10 minutes the first time), then runs for about 25 minutes; results in
## bench/results/peers/, plotted in bench/peers.svg. PRIORITY=-15 on a busy machine.
bench-peers: setup build
	NO_BUILD=1 SLUICE=$(SLUICE) bench/peers.sh

## Sluice's Durable Streams beside the protocol's Node reference server, in one run: appends/s,
## append → receipt with 1,000 SSE readers of one stream, memory per idle reader
## (bench/durable.sh; about 7 minutes; tables in bench/results/durable/summary.md).
bench-durable: setup build
	NO_BUILD=1 SLUICE=$(SLUICE) bench/durable.sh

## What checking callers (an API key, an end-user token) adds to the gateway's first token,
## beside an open gateway, on the memory and SQLite stores (bench/callers.sh; about 4 minutes;
## table in bench/results/callers/summary.md).
bench-callers: setup build
	NO_BUILD=1 SLUICE=$(SLUICE) bench/callers.sh

## Coverage-guided fuzzing of every parser of untrusted input (FUZZ_SECONDS per target, default
## 60): the SSE decoder, topic selectors, the publish form, token extraction, chat requests,
## GGUF headers. Not part of `make test`; the committed corpora are replayed by ordinary tests.
fuzz: setup test-build
	bash scripts/fuzz.sh
	SLUICE_BIN=$(SLUICE_TEST_BIN) SLUICE_API_FUZZ_EXAMPLES=$(or $(API_FUZZ_EXAMPLES),500) \
		.venv/bin/python -m pytest -q tests/python/test_api_schema.py

## A soak, not part of `make test`: SOAK_SECONDS (default 600) of churning subscribers,
## publishing, chat streams and cancelled answers against a release `sluice serve`, its RSS and
## open files sampled every 10 s (bench/results/soak.json, plotted in bench/soak.svg).
soak: build
	mkdir -p bench/results
	$(SLUICE) bench soak --duration $(or $(SOAK_SECONDS),600) --json bench/results/soak.json
	python3 bench/plot_soak.py

## The Mercure project's own conformance suite (draft-08), run unchanged against Sluice in
## Debian's chromium. It lives in dunglas/mercure, not here: MERCURE_CONFORMANCE_DIR must point
## at a checkout of its conformance-tests/ folder (see tests/conformance/run.sh).
conformance: test-build
	SLUICE_BIN=$(SLUICE_TEST_BIN) bash tests/conformance/run.sh

clean:
	$(CARGO) clean
